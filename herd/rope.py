"""Rotary position embedding in the interleaved complex-pair convention (spec §1.5–1.6).

- Head dims (2i, 2i+1) form one complex number rotated by p·θ_i; work in fp32, cast back.
- θ_i = theta^(-2i/K), optionally rescaled by the llama3 rule; positions are absolute.

Shapes: B batch, S sequence, K head dim, H heads; `x_BSHK`, angle tables `cos_BSK2`/`sin_BSK2` (K/2 pairs).
"""

from __future__ import annotations

import math

import torch

from herd.config import RopeScaling


def inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """The K/2 rotation frequencies θ_i in fp32, llama3-scaled when `scaling` is given."""
    freq_K2 = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if scaling is None:
        return freq_K2
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen_K2 = 2 * math.pi / freq_K2
    scaled_K2 = freq_K2 / scaling.factor
    if scaling.high_freq_factor != scaling.low_freq_factor:
        smooth_K2 = (scaling.original_max_position_embeddings / wavelen_K2 - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        middle_K2 = (1 - smooth_K2) * scaled_K2 + smooth_K2 * freq_K2
    else:  # a hard step (Scout): nothing lies strictly between the two wavelengths
        middle_K2 = freq_K2
    return torch.where(wavelen_K2 < high_wavelen, freq_K2, torch.where(wavelen_K2 > low_wavelen, scaled_K2, middle_K2))


def angles(positions_BS: torch.Tensor, freq_K2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of p·θ_i for each position, fp32, shaped [B, S, K/2]."""
    angle_BSK2 = positions_BS.to(torch.float32)[..., None] * freq_K2.to(positions_BS.device)
    return torch.cos(angle_BSK2), torch.sin(angle_BSK2)


def apply_rope(x_BSHK: torch.Tensor, cos_BSK2: torch.Tensor, sin_BSK2: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the last dim by the given angles; fp32 math, input dtype out."""
    x = x_BSHK.float().unflatten(-1, (-1, 2))
    even, odd = x[..., 0], x[..., 1]
    cos, sin = cos_BSK2[..., None, :], sin_BSK2[..., None, :]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(x_BSHK.dtype)
