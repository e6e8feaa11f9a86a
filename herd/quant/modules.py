"""Quantized modules: each owns its codes and scales (`herd.quant.schemes`) and computes with them.

- `QuantLinear` replaces a bias-free `nn.Linear` [out, in]. A few rows (decode, the last position of a
  prefill) go through `herd.cpu_kernels.qmatvec`, which streams the codes once with fp32 accumulation;
  more rows (a prefill), a GPU, or a compiled graph dequantize the weight to the activation dtype and
  run the usual matmul.
- `QuantExperts` replaces the routed experts: codes stored output-major per expert (w13 [E, 2F, D],
  w2 [E, D, F], groups along the reduction), the same dispatch as `herd.moe.Experts`; a prefill's bf16 rows
  go through `herd.cpu_kernels.qgrouped`, which dequantizes a few weight rows at a time in cache.
- Scales stay fp32 through `.to(dtype)`: only a device move touches codes and scales.

Shapes: M rows, N outputs, K inputs, E experts, D model dim, F expert hidden, T tokens.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from herd import cpu_kernels
from herd.moe import Experts
from herd.quant.schemes import Scheme, dequantize, quantize, quantize_activations, scheme

MAX_KERNEL_ROWS = 8  # rows of x past which dequantizing once and running the GEMM is cheaper


def _kernel_takes(x: torch.Tensor, rows: int) -> bool:
    return (rows <= MAX_KERNEL_ROWS and x.device.type == "cpu" and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and cpu_kernels.available())


def _native_reads(x: torch.Tensor) -> bool:
    """Whether a native kernel takes x whole (bf16 or fp32 on the CPU, outside a compiled graph)."""
    return (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32) and not torch.compiler.is_compiling()
            and cpu_kernels.available())


def _product(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, s: Scheme) -> torch.Tensor:
    """x [..., K] @ dequant(codes, scales)ᵀ → [..., N], in x's dtype; a scheme with act_bits quantizes x first
    (`quantize_activations`)."""
    K, N = x.shape[-1], codes.shape[0]
    rows = x.numel() // K
    if _kernel_takes(x, rows):
        y = cpu_kernels.qmatvec(x.reshape(rows, K), codes, scales, s.bits, s.group, s.act_bits)
        return y.view(*x.shape[:-1], N)
    x = _activations(x, s)
    if _native_reads(x) and codes.is_contiguous():
        w_NK = cpu_kernels.dequantize(codes, scales, s.bits, s.group, K, x.dtype, out=_scratch(N * K, x.dtype))
        return F.linear(x, w_NK)
    return F.linear(x, dequantize(codes, scales, s, x.dtype))


def _activations(x: torch.Tensor, s: Scheme) -> torch.Tensor:
    """x as a product in scheme `s` reads it: quantized (`quantize_activations`, back in x's dtype, which for
    bf16 rounds q · d) where the scheme has act_bits, else x itself. On the CPU in one native pass (the same
    values; torch's ~10 passes cost a bf16 prefill ~20%)."""
    if not s.act_bits:
        return x
    if _native_reads(x):
        return cpu_kernels.quantize_activations(x)
    return quantize_activations(x).to(x.dtype)


_local = threading.local()


def _scratch(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """This thread's buffer for a dequantized weight, grown as needed and reused: F.linear consumes the weight
    before the next product asks for the buffer. A fresh buffer per product would page-fault its whole size
    in again (the allocator returns large blocks to the system), which costs more than the dequantization."""
    buffers = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get(dtype)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buffer


def _move(module: nn.Module, fn) -> None:
    """Apply `fn` (from `nn.Module._apply`) to the module's quantized buffers as a device move only."""
    device = fn(torch.empty(0)).device
    for name, t in list(module._buffers.items()):
        if t is not None:
            module._buffers[name] = t.to(device)


class QuantLinear(nn.Module):
    """A quantized bias-free linear layer; see the module doc."""

    def __init__(self, in_features: int, out_features: int, s: Scheme | str, device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme(s)
        shape = (out_features, in_features)
        self.register_buffer("codes", torch.zeros(self.scheme.code_shape(shape), dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.zeros(self.scheme.scale_shape(shape), device=device))

    @classmethod
    def from_weight(cls, w_NK: torch.Tensor, s: Scheme | str) -> QuantLinear:
        module = cls(w_NK.shape[1], w_NK.shape[0], s, device="meta")
        module.codes, module.scales = quantize(w_NK.detach(), module.scheme)
        return module

    @classmethod
    def concat(cls, parts: list[QuantLinear]) -> QuantLinear:
        """One layer whose outputs are the parts' outputs in order (fusing q|k|v or gate|up): codes and scales
        stacked by rows, exactly what quantizing the fused weight gives."""
        module = cls(parts[0].in_features, sum(p.out_features for p in parts), parts[0].scheme, device="meta")
        module.codes = torch.cat([p.codes for p in parts])
        module.scales = torch.cat([p.scales for p in parts])
        return module

    def rows(self, start: int, n: int) -> QuantLinear:
        """A layer computing outputs start … start+n-1, sharing this one's codes and scales (views)."""
        module = type(self)(self.in_features, n, self.scheme, device="meta")
        module.codes, module.scales = self.codes[start : start + n], self.scales[start : start + n]
        return module

    def own(self) -> None:
        """Copy shared codes and scales into storage of its own (undoing `rows`)."""
        self.codes, self.scales = self.codes.clone(), self.scales.clone()

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.codes, self.scales, self.scheme, dtype)

    def _apply(self, fn, recurse=True):
        _move(self, fn)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _product(x, self.codes, self.scales, self.scheme)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme.name}"


class QuantExperts(Experts):
    """Quantized routed experts with `herd.moe.Experts`' dispatch; see the module doc."""

    def __init__(self, n_experts: int, dim: int, hidden: int, s: Scheme | str,
                 device: torch.device | str | None = None) -> None:
        nn.Module.__init__(self)
        self.scheme, self.dim, self.hidden = scheme(s), dim, hidden
        for name, shape in (("w13", (n_experts, 2 * hidden, dim)), ("w2", (n_experts, dim, hidden))):
            self.register_buffer(f"{name}_codes", torch.zeros(self.scheme.code_shape(shape), dtype=torch.int8,
                                                              device=device))
            self.register_buffer(f"{name}_scales", torch.zeros(self.scheme.scale_shape(shape), device=device))

    @classmethod
    def from_weights(cls, w13_EDO: torch.Tensor, w2_EFD: torch.Tensor, s: Scheme | str) -> QuantExperts:
        """From input-major weights as `Experts` holds them: w13 [E, D, 2F], w2 [E, F, D]."""
        E, D, F2 = w13_EDO.shape
        module = cls(E, D, F2 // 2, s, device="meta")
        module.w13_codes, module.w13_scales = quantize_experts(w13_EDO, module.scheme)
        module.w2_codes, module.w2_scales = quantize_experts(w2_EFD, module.scheme)
        return module

    @property
    def n_experts(self) -> int:
        return self.w13_codes.shape[0]

    def _apply(self, fn, recurse=True):
        _move(self, fn)
        return self

    def grouped(self, xs_AD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """Rows sorted by expert through their experts. bf16 rows on a CPU with the native kernels go through
        `cpu_kernels.qgrouped` (each projection of all experts in one call, weight blocks dequantized in cache:
        the results of `GatherExperts` on the dequantized weights); anything else expert by expert."""
        stored = (self.w13_codes, self.w13_scales, self.w2_codes, self.w2_scales)
        if (xs_AD.device.type != "cpu" or xs_AD.dtype != torch.bfloat16 or torch.is_grad_enabled()
                or torch.compiler.is_compiling() or not all(t.is_contiguous() for t in stored)
                or not cpu_kernels.available()):
            return super().grouped(xs_AD, counts_E)
        bits, group = self.scheme.bits, self.scheme.group
        offsets_E1 = F.pad(counts_E.cumsum(0), (1, 0))
        gate_AF, up_AF = cpu_kernels.qgrouped(_activations(xs_AD, self.scheme), self.w13_codes, self.w13_scales, bits,
                                              group, offsets_E1).chunk(2, dim=-1)
        hidden_AF = _activations(F.silu(gate_AF).mul_(up_AF), self.scheme)
        return cpu_kernels.qgrouped(hidden_AF, self.w2_codes, self.w2_scales, bits, group, offsets_E1)

    def expert(self, e: int, x_TD: torch.Tensor) -> torch.Tensor:
        gate_TF, up_TF = _product(x_TD, self.w13_codes[e], self.w13_scales[e], self.scheme).chunk(2, dim=-1)
        return _product(F.silu(gate_TF) * up_TF, self.w2_codes[e], self.w2_scales[e], self.scheme)

    def dense(self, x_TD: torch.Tensor, experts_TK: torch.Tensor, scores_TK: torch.Tensor) -> torch.Tensor:
        """Reference path: every token through every expert, scaled by a zero score where not routed."""
        scores_TE = torch.zeros(x_TD.shape[0], self.n_experts, dtype=x_TD.dtype, device=x_TD.device)
        scores_TE.scatter_(1, experts_TK, scores_TK)
        return sum(self.expert(e, x_TD * scores_TE[:, e : e + 1]) for e in range(self.n_experts))

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, dim={self.dim}, hidden={self.hidden}, scheme={self.scheme.name}"


def quantize_experts(w_EKN: torch.Tensor, s: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales of input-major expert weights [E, K, N], stored output-major ([E, N, ...]), one
    expert at a time (no fp32 copy of the whole stack)."""
    parts = [quantize(w_EKN[e].T, s) for e in range(w_EKN.shape[0])]
    return torch.stack([c for c, _ in parts]), torch.stack([sc for _, sc in parts])
