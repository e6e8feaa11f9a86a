"""Inference fast paths, applied to a built model from outside: the model itself stays plain.

- Matrix-vector products (decode, and the last-position logits of a prefill: a few tokens against a
  large weight) run as a compiled multiply-and-reduce over the weight's rows. Inductor turns it into
  one streaming pass over the weight with fp32 accumulation, close to memory bandwidth; MKL's GEMV
  reaches about a third of that on the machines measured (see docs/BENCHMARKS.md). Inputs with more
  than `max_tokens` rows keep `F.linear`. The LM head, 77% of the bytes a decode step reads in the
  benchmark model, gains the most.
- `fuse_projections(model)` gives each attention one q|k|v matmul and each SwiGLU one gate|up
  matmul. The fused weight takes over the storage and the original weights become views of it,
  so memory does not grow and `herd.save` still writes the original names.
- `optimize(model)` does both, swapping the class of every `nn.Linear` in place (weights are
  shared, not copied); `restore(model)` undoes the class swap. `torch.compile` needs a C++
  compiler on CPU; without one the swap falls back to `F.linear`.

Shapes: M rows (tokens), I in features, O out features.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("herd")


def _rowdot(x_MI: torch.Tensor, w_OI: torch.Tensor) -> torch.Tensor:
    return (x_MI[:, None, :].float() * w_OI[None, :, :].float()).sum(-1).to(x_MI.dtype)


_compiled = None


def matvec(x_MI: torch.Tensor, w_OI: torch.Tensor) -> torch.Tensor:
    """x @ wᵀ for a few rows of x, compiled into one pass over w (F.linear if compiling fails)."""
    global _compiled
    if _compiled is None:
        try:
            _compiled = torch.compile(_rowdot, dynamic=False, fullgraph=True)
            _compiled(x_MI[:1], w_OI[:1])
        except Exception as err:  # no C++ compiler, or an unsupported platform
            log.warning("herd.fast: torch.compile unavailable (%s); matrix-vector products use F.linear", err)
            _compiled = F.linear
    return _compiled(x_MI, w_OI)


class MatvecLinear(nn.Linear):
    """An `nn.Linear` whose forward takes the compiled matrix-vector path for small inputs."""

    max_tokens = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > self.max_tokens or torch.is_grad_enabled() or self.bias is not None:
            return F.linear(x, self.weight, self.bias)
        return matvec(x.reshape(rows, x.shape[-1]), self.weight).view(*x.shape[:-1], self.out_features)


def _fuse(parts: list[nn.Linear]) -> nn.Linear:
    """One Linear whose weight stacks the parts' weights; the parts become views of it."""
    with torch.no_grad():
        weight = torch.cat([p.weight for p in parts], dim=0)
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        fused.weight = nn.Parameter(weight, requires_grad=parts[0].weight.requires_grad)
        start = 0
        for p in parts:
            n = p.weight.shape[0]
            p.weight = nn.Parameter(weight[start : start + n], requires_grad=p.weight.requires_grad)
            start += n
    return fused


def fuse_projections(model: nn.Module) -> nn.Module:
    """Fuse q|k|v and gate|up projections (in place; returns the model)."""
    from herd.ffn import FeedForward
    from herd.model import Attention

    for module in model.modules():
        if isinstance(module, Attention) and getattr(module, "wqkv", None) is None:
            module.wqkv = _fuse([module.wq, module.wk, module.wv])
        elif isinstance(module, FeedForward) and getattr(module, "w13", None) is None:
            module.w13 = _fuse([module.w1, module.w3])
    return model


def optimize(model: nn.Module, max_tokens: int = 8) -> nn.Module:
    """Turn on the inference fast paths of a built model (in place; returns it)."""
    fuse_projections(model)
    # One compiled kernel per weight shape and row count: allow enough of them.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    MatvecLinear.max_tokens = max_tokens
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = MatvecLinear
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo `optimize`."""
    for module in model.modules():
        if type(module) is MatvecLinear:
            module.__class__ = nn.Linear
    return model
