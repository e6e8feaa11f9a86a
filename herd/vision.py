"""The Llama 4 vision tower: encoder, pixel-shuffle adapter and projector (spec §3.2–3.7).

- Patch embedding: non-overlapping p×p patches flattened in (channel, row, col) order, a linear
  layer without bias (an unfold followed by a matmul, as both references do).
- The class token is appended *last*; a learned positional embedding covers all P+1 tokens.
- 2D RoPE in the interleaved-pair convention: pairs 0…K/4-1 rotate by (x+1)·φ, the rest by
  (y+1)·φ, with φ_k = theta^(-2k/(K/2)); the class token is not rotated.
- Pre-norm encoder layers with biased LayerNorm, biased q/k/v/o, exact GELU MLP; full
  bidirectional attention within a tile.
- After `ln_post` the class token is dropped, a 0.5 pixel shuffle merges 2×2 neighbours
  (channel blocks r0c0, r0c1, r1c0, r1c1), the adapter applies GELU after both linears, and the
  projector maps into the text width.

Shapes: T tiles, C channels, P patches per tile, N tokens per tile (P+1), D vision width,
K head dim, A adapter width, E text width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from herd.config import VisionConfig


def rope_2d(config: VisionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [N, K/2] for the P patch tokens (row-major grid) and the class token (angle 0)."""
    side = config.image_size // config.patch_size
    head_dim = config.dim // config.n_heads
    quarter = head_dim // 4
    freq_Q = 1.0 / (config.rope_theta ** (torch.arange(0, 2 * quarter, 2, dtype=torch.float32) / (head_dim // 2)))
    index_P = torch.arange(side * side)
    x_P, y_P = (index_P % side + 1).float(), (index_P // side + 1).float()
    angle_PK2 = torch.cat((x_P[:, None] * freq_Q, y_P[:, None] * freq_Q), dim=1)
    angle_NK2 = torch.cat((angle_PK2, torch.zeros(1, angle_PK2.shape[1])), dim=0)
    return torch.cos(angle_NK2), torch.sin(angle_NK2)


def _rotate(x_TNHK: torch.Tensor, cos_NK2: torch.Tensor, sin_NK2: torch.Tensor) -> torch.Tensor:
    x = x_TNHK.float().unflatten(-1, (-1, 2))
    even, odd = x[..., 0], x[..., 1]
    cos, sin = cos_NK2[:, None, :], sin_NK2[:, None, :]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).to(x_TNHK.dtype)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=True) for _ in range(4))

    def forward(self, x_TND: torch.Tensor, cos_NK2: torch.Tensor, sin_NK2: torch.Tensor) -> torch.Tensor:
        T, N, D = x_TND.shape
        q, k, v = (w(x_TND).view(T, N, self.n_heads, -1) for w in (self.wq, self.wk, self.wv))
        q, k = _rotate(q, cos_NK2, sin_NK2), _rotate(k, cos_NK2, sin_NK2)
        out_THNK = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.wo(out_THNK.transpose(1, 2).reshape(T, N, D))


class VisionMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden, bias=True)
        self.c_proj = nn.Linear(hidden, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = VisionAttention(config.dim, config.n_heads)
        self.ln_2 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = VisionMLP(config.dim, config.mlp_dim)

    def forward(self, x_TND: torch.Tensor, cos_NK2: torch.Tensor, sin_NK2: torch.Tensor) -> torch.Tensor:
        x_TND = x_TND + self.attn(self.ln_1(x_TND), cos_NK2, sin_NK2)
        return x_TND + self.mlp(self.ln_2(x_TND))


def pixel_shuffle(x_TPD: torch.Tensor, ratio: float) -> torch.Tensor:
    """Merge each (1/ratio)² block of neighbouring patches into one token: [T, P, D] -> [T, P·r², D/r²]."""
    T, P, D = x_TPD.shape
    side, k = int(P**0.5), round(1 / ratio)
    grid = x_TPD.view(T, side // k, k, side // k, k, D)  # (tile, i, r, j, c, D)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(T, (side // k) ** 2, k * k * D)


class VisionModel(nn.Module):
    """Pixel tiles [T, 3, H, W] in, projected features [T, N', E] out (N' tokens per tile after shuffle)."""

    def __init__(self, config: VisionConfig, text_dim: int) -> None:
        super().__init__()
        self.config = config
        c = config
        patches = (c.image_size // c.patch_size) ** 2
        shuffled = int(c.dim / c.pixel_shuffle_ratio**2)
        self.patch_embedding = nn.Linear(3 * c.patch_size**2, c.dim, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(c.dim))
        self.positional_embedding = nn.Parameter(torch.empty(patches + 1, c.dim))
        self.ln_pre = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.layers = nn.ModuleList(VisionBlock(c) for _ in range(c.n_layers))
        self.ln_post = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.adapter_fc = nn.Linear(shuffled, c.adapter_dim, bias=False)
        self.adapter_proj = nn.Linear(c.adapter_dim, c.output_dim, bias=False)
        self.projection = nn.Linear(c.output_dim, text_dim, bias=False)
        self.register_buffer("rope_cos_NK2", torch.empty(patches + 1, c.dim // c.n_heads // 2), persistent=False)
        self.register_buffer("rope_sin_NK2", torch.empty(patches + 1, c.dim // c.n_heads // 2), persistent=False)

    @property
    def tokens_per_tile(self) -> int:
        return self.config.tokens_per_tile

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # keep the 2D RoPE tables fp32 whatever the cast
        self.init_buffers()
        return self

    @torch.no_grad()
    def init_buffers(self) -> None:
        cos, sin = rope_2d(self.config)
        device = self.ln_pre.weight.device
        self.rope_cos_NK2, self.rope_sin_NK2 = cos.to(device), sin.to(device)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        for name, param in self.named_parameters():
            if ".ln_" in f".{name}" and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, std, generator=generator)
        self.init_buffers()

    def encode(self, pixels_TCHW: torch.Tensor) -> torch.Tensor:
        """The encoder output per patch, class token dropped: [T, P, D]."""
        p = self.config.patch_size
        pixels_TCHW = pixels_TCHW.to(self.patch_embedding.weight.dtype)
        patches_TPF = F.unfold(pixels_TCHW, kernel_size=p, stride=p).transpose(1, 2)
        x_TPD = self.patch_embedding(patches_TPF)
        cls_T1D = self.class_embedding.expand(x_TPD.shape[0], 1, -1)
        x_TND = self.ln_pre(torch.cat((x_TPD, cls_T1D), dim=1) + self.positional_embedding)
        for block in self.layers:
            x_TND = block(x_TND, self.rope_cos_NK2, self.rope_sin_NK2)
        return self.ln_post(x_TND)[:, :-1]

    def forward(self, pixels_TCHW: torch.Tensor) -> torch.Tensor:
        shuffled = pixel_shuffle(self.encode(pixels_TCHW), self.config.pixel_shuffle_ratio)
        adapted = F.gelu(self.adapter_proj(F.gelu(self.adapter_fc(shuffled))))
        return self.projection(adapted)
