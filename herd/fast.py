"""Inference fast paths, applied to a built model from outside: the model itself stays plain.

- Matrix-vector products (decode, and the last-position logits of a prefill: a few tokens against a
  large weight) run as a compiled multiply-and-reduce over the weight's rows. Inductor turns it into
  one streaming pass over the weight with fp32 accumulation, close to memory bandwidth; MKL's GEMV
  reaches about a third of that on the machines measured (see docs/BENCHMARKS.md). Inputs with more
  than `max_tokens` rows keep `F.linear`. The LM head, 77% of the bytes a decode step reads in the
  benchmark model, gains the most.
- `fuse_projections(model)` gives each attention one q|k|v matmul and each SwiGLU one gate|up
  matmul. The fused weight owns the storage and the original weights become gradient-free views
  of it (tied again after `.to()`), so memory does not grow and `herd.save` still writes the
  original names. These are inference paths: train the plain model.
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
    """x @ wᵀ for a few rows of x, compiled into one pass over w; `F.linear` when compiling is
    impossible (no C++ compiler, too many shapes). Never the eager broadcast, which would
    materialise [M, O, I]."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_rowdot, dynamic=False, fullgraph=True)
    if _compiled is not F.linear:
        try:
            return _compiled(x_MI, w_OI)
        except Exception as err:  # compile failure, or dynamo's recompile limit (fullgraph raises)
            log.warning("herd.fast: compiled matrix-vector product unavailable for %s x %s (%s); using F.linear",
                        tuple(x_MI.shape), tuple(w_OI.shape), type(err).__name__)
            if "Limit" not in type(err).__name__:
                _compiled = F.linear
    return F.linear(x_MI, w_OI)


class MatvecLinear(nn.Linear):
    """An `nn.Linear` whose forward takes the compiled matrix-vector path for small inputs."""

    max_tokens = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > self.max_tokens or torch.is_grad_enabled() or self.bias is not None:
            return F.linear(x, self.weight, self.bias)
        return matvec(x.reshape(rows, x.shape[-1]), self.weight).view(*x.shape[:-1], self.out_features)


_FUSED = {"wqkv": ("wq", "wk", "wv"), "w13": ("w1", "w3")}


def _tie(module: nn.Module) -> None:
    """Make the parts' weights views of the fused weight (inference aliases, no gradient)."""
    for fused_name, part_names in _FUSED.items():
        fused = getattr(module, fused_name, None)
        if fused is None:
            continue
        start = 0
        for name in part_names:
            part = getattr(module, name)
            n = part.out_features
            part.weight = nn.Parameter(fused.weight.detach()[start : start + n], requires_grad=False)
            start += n


class _Tied:
    """Mixed into a fused module's class: after `.to()`/`.cuda()` the views are tied again."""

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        _tie(self)
        return self


_tied_classes: dict[type, type] = {}


def _fuse(module: nn.Module, fused_name: str) -> None:
    parts = [getattr(module, name) for name in _FUSED[fused_name]]
    with torch.no_grad():
        weight = torch.cat([p.weight for p in parts], dim=0)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=parts[0].weight.requires_grad)
    setattr(module, fused_name, fused)
    _tie(module)
    base = type(module)
    module.__class__ = _tied_classes.setdefault(base, type(f"Fused{base.__name__}", (_Tied, base), {}))


def fuse_projections(model: nn.Module) -> nn.Module:
    """Fuse q|k|v and gate|up projections (in place; returns the model). For inference: the
    original weights become gradient-free views of the fused ones, which own the storage."""
    from herd.ffn import FeedForward
    from herd.model import Attention

    for module in list(model.modules()):
        if isinstance(module, Attention) and getattr(module, "wqkv", None) is None:
            _fuse(module, "wqkv")
        elif isinstance(module, FeedForward) and getattr(module, "w13", None) is None:
            _fuse(module, "w13")
    return model


def optimize(model: nn.Module, max_tokens: int = 8) -> nn.Module:
    """Turn on the inference fast paths of a built model (in place; returns it)."""
    fuse_projections(model)
    # One compiled kernel per weight shape, row count and dtype: allow enough of them.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    MatvecLinear.max_tokens = max_tokens
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = MatvecLinear
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo `optimize`: plain `nn.Linear`s and unfused modules (the parts keep their weights)."""
    for module in model.modules():
        if type(module) is MatvecLinear:
            module.__class__ = nn.Linear
        if isinstance(module, _Tied):
            for fused_name, part_names in _FUSED.items():
                if getattr(module, fused_name, None) is not None:
                    delattr(module, fused_name)
                    for name in part_names:
                        part = getattr(module, name)
                        part.weight = nn.Parameter(part.weight.detach().clone())
            module.__class__ = type(module).__mro__[2]
    return model
