"""Inference fast paths, applied to a built model from outside: the model itself stays plain.

- Matrix-vector products (decode, and the last-position logits of a prefill: a few tokens against a
  large weight) run as a compiled multiply-and-reduce over the weight's rows. Inductor turns it into
  one streaming pass over the weight with fp32 accumulation, close to memory bandwidth; MKL's GEMV
  reaches about a third of that on the machines measured (see docs/BENCHMARKS.md). In bf16 on a CPU
  with AVX512-BF16, native kernels take its place: `herd.cpu_kernels.matvec_bf16` (inductor's bf16
  row-dot is compute-bound near 40 GB/s) and `linear_f32` in fp32 (level with the row-dot at one
  row, 10-20% ahead at 4-8, and it compiles nothing per row count). Inputs with more than
  `max_tokens` rows (8; 2 in 16-bit without the native kernel) keep `F.linear`.
  The LM head, 77% of the bytes a decode step reads in the benchmark model, gains the most.
- `fuse_projections(model)` gives each attention one q|k|v matmul and each SwiGLU one gate|up
  matmul. The fused weight owns the storage and the original weights become gradient-free views
  of it (tied again after `.to()`), so memory does not grow and `herd.save` still writes the
  original names. These are inference paths: train the plain model.
- Routed experts are stored output-major (`GatherExperts`): the grouped dispatch takes them as
  transposed GEMM operands, and a compiled graph gathers a token's expert rows by index. In fp32 and
  bf16 on a CPU with the native kernels, each projection of all experts is one call to
  `herd.cpu_kernels.grouped`: ~32 rows per expert in a 512-token prefill is where a GEMM library,
  which packs each weight before use, reaches about half its peak.
- `optimize(model)` does all of this, swapping classes in place (weights are shared, not copied);
  `restore(model)` undoes it. The decode steps that run such a model whole (a compiled graph, the
  native call) are in `herd.infer.steps`. `torch.compile` needs a C++ compiler on CPU; without one
  every path falls back to eager.

Shapes: M rows (tokens), I in features, O out features.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from herd import cpu_kernels
from herd.moe import Experts

log = logging.getLogger("herd")


def _rowdot(x_MI: torch.Tensor, w_OI: torch.Tensor) -> torch.Tensor:
    # Output [O, M] with the rows of x innermost: each weight row is read from memory once and reused
    # from cache for every x row (the [M, O] order streams the weight M times).
    return (x_MI[None, :, :].float() * w_OI[:, None, :].float()).sum(-1).T.to(x_MI.dtype)


_compiled = None
# dynamo's per-function graph limit ("cache_size_limit" before torch 2.7)
RECOMPILE_LIMIT = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


def _native(x_MI: torch.Tensor, w_OI: torch.Tensor) -> bool:
    """Whether a native kernel takes this product: `matvec_bf16` in bf16, `linear_f32` in fp32 (on CPU, with
    a contiguous weight)."""
    return (x_MI.dtype == w_OI.dtype and x_MI.dtype in (torch.bfloat16, torch.float32)
            and w_OI.device.type == "cpu" and w_OI.is_contiguous() and cpu_kernels.available())


def matvec(x_MI: torch.Tensor, w_OI: torch.Tensor) -> torch.Tensor:
    """x @ wᵀ for a few rows of x in one pass over w: a native kernel where one runs (no compile, so no
    graph per row count), else a compiled row-dot; `F.linear` when compiling is impossible (no C++
    compiler, too many shapes). Never the eager broadcast, which would materialise [M, O, I]."""
    global _compiled
    if x_MI.shape[-1] != w_OI.shape[-1]:
        return F.linear(x_MI, w_OI)  # raises the usual shape error (a compile error would disable the path)
    if torch.compiler.is_compiling():  # inside a larger compiled graph (the decode step): inline it
        return _rowdot(x_MI, w_OI)
    if _native(x_MI, w_OI):
        return (cpu_kernels.matvec_bf16 if x_MI.dtype == torch.bfloat16 else cpu_kernels.linear_f32)(x_MI, w_OI)
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
    # In 16-bit the compiled row-dot converts every weight to fp32 in software: past a couple of rows it is
    # compute-bound, and the GEMM (hardware bf16 dot products) wins. The native bf16 kernel beats the GEMM
    # up to 8 rows (LM head: 8.9 vs 15.2 ms at 8 rows). Measured on the benchmark LM head.
    max_tokens_16bit = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if torch.compiler.is_compiling():
            # Inside a larger graph, inductor parallelises a several-row row-dot over its reduction
            # (a barrier per weight row): 4x slower than MKL at 8 rows. One row fuses well.
            limit = 1
        elif x.dtype == torch.float32 or _native(x, self.weight):
            limit = self.max_tokens
        else:
            limit = min(self.max_tokens, self.max_tokens_16bit)
        if rows > limit or torch.is_grad_enabled() or self.bias is not None:
            return F.linear(x, self.weight, self.bias)
        return matvec(x.reshape(rows, x.shape[-1]), self.weight).view(*x.shape[:-1], self.out_features)


_FUSED = {"wqkv": ("wq", "wk", "wv"), "w13": ("w1", "w3")}


def _tie(module: nn.Module) -> None:
    """Make the parts' weights views of the fused weight (inference aliases, no gradient). A fused layer
    that is not an `nn.Linear` (a quantized one, `herd.quant`) hands out its own views with `rows()`."""
    for fused_name, part_names in _FUSED.items():
        fused = getattr(module, fused_name, None)
        if fused is None:
            continue
        start = 0
        for name in part_names:
            part = getattr(module, name)
            n = part.out_features
            if hasattr(fused, "rows"):
                setattr(module, name, fused.rows(start, n))
            else:
                part.weight = nn.Parameter(fused.weight.detach()[start : start + n], requires_grad=False)
            start += n


class _Tied:
    """Mixed into a fused module's class: after `.to()`/`.cuda()` the views are tied again."""

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        _tie(self)
        return self


class _FusedAttention(_Tied):
    """One matmul for q | k | v."""

    def project(self, x_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kv = self.n_kv_heads * self.head_dim
        return self.wqkv(x_BSD).split([self.n_heads * self.head_dim, kv, kv], dim=-1)


class _FusedFeedForward(_Tied):
    """One matmul for gate | up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


_fused_classes: dict[type, type] = {}


def _fuse(module: nn.Module, fused_name: str, mixin: type) -> None:
    parts = [getattr(module, name) for name in _FUSED[fused_name]]
    if hasattr(type(parts[0]), "concat"):  # a layer type that fuses itself (quantized: codes and scales)
        fused = type(parts[0]).concat(parts)
    else:
        with torch.no_grad():
            weight = torch.cat([p.weight for p in parts], dim=0)
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        fused.weight = nn.Parameter(weight, requires_grad=parts[0].weight.requires_grad)
    setattr(module, fused_name, fused)
    _tie(module)
    base = type(module)
    if base not in _fused_classes:
        _fused_classes[base] = type(f"Fused{base.__name__}", (mixin, base), {"_plain_class": base})
    module.__class__ = _fused_classes[base]


def fuse_projections(model: nn.Module) -> nn.Module:
    """Fuse q|k|v and gate|up projections (in place; returns the model). For inference: the
    original weights become gradient-free views of the fused ones, which own the storage."""
    from herd.ffn import FeedForward
    from herd.model import Attention

    # Only the owners are listed: a list of every module would keep the replaced parts of a quantized layer
    # (and their codes) alive until the loop ends, doubling its weights' memory for the duration.
    for module in [m for m in model.modules() if isinstance(m, (Attention, FeedForward))]:
        if isinstance(module, Attention) and not isinstance(module, _Tied):
            _fuse(module, "wqkv", _FusedAttention)
        elif isinstance(module, FeedForward) and not isinstance(module, _Tied):
            _fuse(module, "w13", _FusedFeedForward)
    return model


def _gathered(x_TD: torch.Tensor, experts_TK: torch.Tensor, scores_TK: torch.Tensor, w13_EOD: torch.Tensor,
              w2_EDF: torch.Tensor) -> torch.Tensor:
    """Each token-expert pair through its expert, the expert's weights gathered by index: a few tokens
    read only their experts, with no data-dependent shapes. Weights are output-major, so compiled,
    each product is one streaming pass over the gathered rows (fp32 accumulation)."""
    T, k = experts_TK.shape
    e_A = experts_TK.reshape(-1)
    x_AD = (x_TD.repeat_interleave(k, dim=0) if k > 1 else x_TD) * scores_TK.reshape(-1, 1)
    h_AO = (x_AD[:, None, :].float() * w13_EOD[e_A].float()).sum(-1).to(x_TD.dtype)
    gate_AF, up_AF = h_AO.chunk(2, dim=-1)
    a_AF = F.silu(gate_AF) * up_AF
    out_AD = (a_AF[:, None, :].float() * w2_EDF[e_A].float()).sum(-1).to(x_TD.dtype)
    return out_AD.view(T, k, -1).sum(1) if k > 1 else out_AD


class GatherExperts(Experts):
    """Routed experts for inference. Weights live output-major (w13 is a view of [E, 2F, D] storage,
    w2 of [E, D, F]), which the matmuls of the grouped dispatch take as transposed operands. Inside a
    compiled graph (the decode step) the dispatch is `_gathered`; eager calls keep the grouped one."""

    max_tokens = 8

    def sparse(self, x_TD: torch.Tensor, experts_TK: torch.Tensor, scores_TK: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and experts_TK.numel() <= self.max_tokens:
            return _gathered(x_TD, experts_TK, scores_TK, self.w13.transpose(1, 2), self.w2.transpose(1, 2))
        return super().sparse(x_TD, experts_TK, scores_TK)

    def grouped(self, xs_AD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """Each projection of all experts in one call: on a CPU with the native kernels (fp32 or bf16),
        `cpu_kernels.grouped`, which streams each expert's weight once without a GEMM's packing pass; on
        a GPU in bf16, `torch._grouped_mm` (grouped GEMM), with the counts kept on the device (no sync)."""
        w13_EOD, w2_EDF = self.w13.transpose(1, 2), self.w2.transpose(1, 2)
        if torch.is_grad_enabled() or xs_AD.dtype != w13_EOD.dtype:
            return super().grouped(xs_AD, counts_E)
        if (xs_AD.is_cuda and xs_AD.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
                and torch.cuda.get_device_capability(xs_AD.device) >= (9, 0)):  # its GPU kernel needs sm90+
            return grouped_mm(xs_AD, counts_E, self.w13, self.w2)
        if (xs_AD.dtype not in (torch.float32, torch.bfloat16) or xs_AD.device.type != "cpu"
                or not (w13_EOD.is_contiguous() and w2_EDF.is_contiguous()) or not cpu_kernels.available()):
            return super().grouped(xs_AD, counts_E)
        offsets_E1 = F.pad(counts_E.cumsum(0), (1, 0))
        gate_AF, up_AF = cpu_kernels.grouped(xs_AD, w13_EOD, offsets_E1).chunk(2, dim=-1)
        return cpu_kernels.grouped(F.silu(gate_AF).mul_(up_AF), w2_EDF, offsets_E1)


def grouped_mm(xs_AD: torch.Tensor, counts_E: torch.Tensor, w13_EDO: torch.Tensor,
               w2_EFD: torch.Tensor) -> torch.Tensor:
    """Rows sorted by expert through their SwiGLU experts as two grouped GEMMs (`torch._grouped_mm`, whose
    offsets are the groups' cumulative end rows, on the device). The weights are the input-major views of
    output-major storage, the column-major operand the GPU kernel takes. Runs on CPU too (PyTorch's
    fallback), which is how it is tested here."""
    offsets_E = counts_E.cumsum(0).to(torch.int32)
    gate_AF, up_AF = torch._grouped_mm(xs_AD, w13_EDO, offs=offsets_E).chunk(2, dim=-1)
    return torch._grouped_mm(F.silu(gate_AF) * up_AF, w2_EFD, offs=offsets_E)


def _relayout(param: nn.Parameter, output_major: bool) -> nn.Parameter:
    """The same values with the last two dims stored swapped (output-major) or plainly (input-major)."""
    t = param.detach()
    t = t.transpose(1, 2).contiguous().transpose(1, 2) if output_major else t.contiguous()
    return nn.Parameter(t, requires_grad=param.requires_grad)


def optimize(model: nn.Module, max_tokens: int = 8) -> nn.Module:
    """Turn on the inference fast paths of a built model (in place; returns it). The decode step that runs
    it fastest is `herd.infer.steps.FastDecode(model)`, handed to the engine."""
    fuse_projections(model)
    GatherExperts.max_tokens = max_tokens
    for module in model.modules():
        if type(module) is Experts:
            module.w13, module.w2 = _relayout(module.w13, True), _relayout(module.w2, True)
            module.__class__ = GatherExperts
    # One compiled kernel per weight shape, row count and dtype: allow enough of them.
    setattr(torch._dynamo.config, RECOMPILE_LIMIT, max(getattr(torch._dynamo.config, RECOMPILE_LIMIT), 256))
    MatvecLinear.max_tokens = max_tokens
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = MatvecLinear
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo `optimize`: plain `nn.Linear`s, unfused modules (the parts keep their weights),
    and input-major experts."""
    for module in model.modules():
        if type(module) is MatvecLinear:
            module.__class__ = nn.Linear
        if type(module) is GatherExperts:
            module.w13, module.w2 = _relayout(module.w13, False), _relayout(module.w2, False)
            module.__class__ = Experts
        if isinstance(module, _Tied):
            for fused_name, part_names in _FUSED.items():
                if getattr(module, fused_name, None) is not None:
                    delattr(module, fused_name)
                    for name in part_names:
                        part = getattr(module, name)
                        if hasattr(part, "own"):
                            part.own()
                        else:
                            part.weight = nn.Parameter(part.weight.detach().clone())
            module.__class__ = module._plain_class
    return model
