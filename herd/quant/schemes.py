"""Weight quantization schemes: symmetric integer codes with one fp32 scale per group of inputs (spec §7).

- `int8`: groups of 32 along the input dimension (as llama.cpp's Q8_0), scale = max|w| / 127,
  q = round(w / scale) in [-127, 127]. `int8-g128`: the same in groups of 128, 1.03 bytes a weight against
  1.125: decode reads 8% fewer bytes (the common GPTQ/AWQ group size; the issue's per-row int8 is coarser).
- `int4`: groups of 32, Meta's `int4_row_quantize` rule: scale = max(max|w|, 1e-6) / 8,
  q = clamp(round(w / scale), -8, 7). `int4-g128` is Meta's `int4_mixed` group of 128.
- `int4-a8`, `int8-a8`: `int4`'s and `int8`'s codes and scales (the same checkpoint tensors), with the
  activations quantized too before each product, as llama.cpp's quantized types do (`quantize_activations`:
  blocks of 32, Q8_0's rule). The products are then integer dot products (AVX512-VNNI), a half (int4) and a
  third (int8) of the instructions of bf16 ones: the formats for decode where memory reads faster than the
  bf16 products (~50 GB/s on 2 cores). Every path of a module in these schemes (the native step, the eager
  kernels, prefill) quantizes its input the same way.
- Two int4 codes per byte: the even input index in the low nibble, the odd one in the high nibble, each
  in two's complement (Meta's `pack_int4`), so a byte read as int8 holds the odd code in its top four bits.
- A weight [N, K] (N outputs, K inputs) is stored as codes [N, K] int8 (int4: [N, K/2] packed) and scales
  [N, ceil(K/group)] fp32, one row per output: a matrix-vector product streams both in order. The last
  group of a row may be shorter (K not a multiple of the group). Stacked experts [E, N, K] quantize row by
  row the same way.
- Dequantized, w = q · scale in fp32. Quantizing rows of a fused matrix (q|k|v, gate|up) gives the same
  codes as quantizing each part, since no group crosses rows.

Shapes: N output rows, K inputs, G groups per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class QuantError(ValueError):
    """A bad scheme name, or codes and scales that do not describe a weight of the expected shape."""


@dataclass(frozen=True)
class Scheme:
    name: str
    bits: int  # 8 or 4
    group: int  # inputs per scale; a multiple of 32
    act_bits: int = 0  # 8: activations quantized before each product (quantize_activations); 0: as they come

    def groups(self, K: int) -> int:
        return -(-K // self.group)

    def code_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        *lead, K = shape
        if self.bits == 4 and K % 2:
            raise QuantError(f"int4 packs two inputs per byte: the input dimension {K} must be even")
        return (*lead, K if self.bits == 8 else K // 2)

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        *lead, K = shape
        return (*lead, self.groups(K))

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a weight of `shape` stored in this scheme: int8 codes and fp32 scales."""
        return math.prod(self.code_shape(shape)) + 4 * math.prod(self.scale_shape(shape))


SCHEMES = {s.name: s for s in (Scheme("int8", 8, 32), Scheme("int8-g128", 8, 128), Scheme("int4", 4, 32),
                                Scheme("int4-g128", 4, 128), Scheme("int4-a8", 4, 32, act_bits=8),
                                Scheme("int8-a8", 8, 32, act_bits=8))}


def scheme(name: str | Scheme) -> Scheme:
    """The scheme called `name`, or QuantError listing the known ones."""
    if isinstance(name, Scheme):
        return name
    if name not in SCHEMES:
        raise QuantError(f"unknown quantization scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return SCHEMES[name]


def _grouped(w: torch.Tensor, group: int) -> tuple[torch.Tensor, int]:
    """w [..., K] as fp32 [..., G, group], zero-padded at the end; and K."""
    K = w.shape[-1]
    pad = (-K) % group
    w = w.float()
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(*w.shape[:-1], -1, group), K


CHUNK_ELEMENTS = 1 << 22  # rows quantized together: bounds the fp32 temporaries (~5 copies) to ~80 MB


def quantize(w: torch.Tensor, s: Scheme | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (int8; int4 packed two per byte) and fp32 scales of a weight [..., N, K]; see the module doc.
    Large weights go through in chunks of rows, so that the transient fp32 copies stay small."""
    s = scheme(s)
    s.code_shape(tuple(w.shape))  # checks int4's even K
    rows = w.reshape(-1, w.shape[-1]) if w.dim() > 1 else w.reshape(1, -1)
    step = max(1, CHUNK_ELEMENTS // max(1, w.shape[-1]))
    if rows.shape[0] <= step:
        return _quantize(w, s)
    codes = torch.empty((rows.shape[0], *s.code_shape(tuple(w.shape))[-1:]), dtype=torch.int8, device=w.device)
    scales = torch.empty((rows.shape[0], s.groups(w.shape[-1])), dtype=torch.float32, device=w.device)
    for start in range(0, rows.shape[0], step):
        codes[start : start + step], scales[start : start + step] = _quantize(rows[start : start + step], s)
    return codes.view(s.code_shape(tuple(w.shape))), scales.view(s.scale_shape(tuple(w.shape)))


def _quantize(w: torch.Tensor, s: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    g, K = _grouped(w, s.group)
    amax = g.abs().amax(dim=-1, keepdim=True)
    if s.bits == 8:
        scale = amax / 127
        q = torch.where(scale > 0, g / torch.where(scale > 0, scale, 1), 0).round().clamp(-127, 127)
    else:
        scale = amax.clamp(min=1e-6) / 8
        q = (g / scale).round().clamp(-8, 7)
    q = q.to(torch.int8).flatten(-2)[..., :K]
    if s.bits == 4:
        q = pack_int4(q)
    return q.contiguous(), scale.squeeze(-1).contiguous()


ACT_BLOCK = 32  # inputs per activation scale (act_bits 8)


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] as the -a8 schemes' products see it, in fp32: each block of 32 inputs (the last one shorter)
    as q · d with d = max|x| / 127 and q = round(x · (1 / d)) to nearest even (0 where d is 0), llama.cpp's
    Q8_0 rule; the native kernels (quant.h's a8_quantize) compute the same q and d."""
    x_BG, K = _grouped(x, ACT_BLOCK)
    d_BG1 = x_BG.abs().amax(-1, keepdim=True) / 127
    inverse_BG1 = torch.where(d_BG1 > 0, 1 / d_BG1, torch.zeros_like(d_BG1))
    q_BG = torch.round(x_BG * inverse_BG1).clamp_(-128, 127)
    return (q_BG * d_BG1).flatten(-2)[..., :K]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-8, 7], [..., K] → bytes [..., K/2]: even index in the low nibble, odd in the high."""
    low, high = q[..., 0::2], q[..., 1::2]
    return torch.bitwise_or(torch.bitwise_and(low, 0xF), torch.bitwise_left_shift(high, 4)).to(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4`: [..., K/2] bytes → int8 codes [..., K] (sign-extended nibbles)."""
    low = torch.bitwise_right_shift(torch.bitwise_left_shift(packed, 4), 4)  # arithmetic shifts on int8
    high = torch.bitwise_right_shift(packed, 4)
    return torch.stack((low, high), dim=-1).flatten(-2)


def codes_of(codes: torch.Tensor, s: Scheme | str) -> torch.Tensor:
    """The integer codes [..., K] as int8, unpacked for int4."""
    return unpack_int4(codes) if scheme(s).bits == 4 else codes


def dequantize(codes: torch.Tensor, scales: torch.Tensor, s: Scheme | str,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w = q · scale (computed in fp32, then cast to `dtype`): [..., N, K]."""
    s = scheme(s)
    q = codes_of(codes, s).float()
    K = q.shape[-1]
    scale = scales.float().repeat_interleave(s.group, dim=-1)[..., :K]
    return (q * scale).to(dtype)

