"""The quantization pass: swap a built model's weights for quantized modules (`herd.quant.modules`).

Module groups, chosen per call: `experts` (routed experts), `shared` (the MoE layers' shared expert),
`attention` (q, k, v, o), `ffn` (dense layers' SwiGLU) and `lm_head`. The default quantizes all but the LM
head, which stays in the model's dtype as llama.cpp and vLLM keep it unless asked. The router, norms,
embedding and vision tower are never quantized.

The pass runs on a plain or a fused (`herd.fast.optimize`) model: a fused q|k|v or gate|up is quantized
once and its parts become views of it. `herd.checkpoint.load(..., quantize=...)` builds the same
structure empty (`quantize_structure`) and fills it tensor by tensor while reading (`quantized_stream`),
so the full-precision model never exists in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from herd.fast import _tie
from herd.quant.modules import QuantExperts, QuantLinear, quantize_experts
from herd.quant.schemes import QuantError, Scheme, quantize, scheme

GROUPS = ("experts", "shared", "attention", "ffn", "lm_head")
DEFAULT_GROUPS = ("experts", "shared", "attention", "ffn")
_FUSED = {"wqkv": ("wq", "wk", "wv"), "w13": ("w1", "w3")}


def check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    groups = tuple(groups)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise QuantError(f"unknown module group(s) {unknown}; choose from {', '.join(GROUPS)}")
    return groups


def _targets(model: nn.Module, groups: tuple[str, ...]) -> Iterator[tuple[nn.Module, str, str]]:
    """(owner, attribute, group) for every module the pass replaces: linears and routed experts."""
    from herd.moe import MoE

    for block in model.layers:
        ffn = block.feed_forward
        owners = []
        if "attention" in groups:
            owners.append(block.attention)
        if isinstance(ffn, MoE):
            if "shared" in groups:
                owners.append(ffn.shared_expert)
            if "experts" in groups:
                yield ffn, "experts", "experts"
        elif "ffn" in groups:
            owners.append(ffn)
        for owner in owners:
            names = [n for n in ("wq", "wk", "wv", "wo", "w1", "w3", "w2") if hasattr(owner, n)]
            for fused, parts in _FUSED.items():
                if getattr(owner, fused, None) is not None:  # fused: the fused layer, then its parts as views
                    names = [fused, *(n for n in names if n not in parts)]
            for name in names:
                yield owner, name, "linear"
    if "lm_head" in groups:
        yield model, "output", "linear"


def quantize_model(model: nn.Module, s: Scheme | str = "int8", groups: Iterable[str] = DEFAULT_GROUPS) -> nn.Module:
    """Quantize `model`'s weights in place (returns it); see the module doc. Inference only."""
    s, groups = scheme(s), check_groups(groups)
    for owner, name, kind in list(_targets(model, groups)):
        module = getattr(owner, name)
        if isinstance(module, (QuantLinear, QuantExperts)):
            continue
        with torch.no_grad():
            if kind == "experts":
                setattr(owner, name, QuantExperts.from_weights(module.w13.detach(), module.w2.detach(), s)
                        .to(module.w13.device))
            else:
                if module.bias is not None:
                    raise QuantError(f"{name}: a linear layer with a bias is not quantized")
                setattr(owner, name, QuantLinear.from_weight(module.weight, s).to(module.weight.device))
        if name in _FUSED:
            _tie(owner)  # the parts become views of the quantized fused layer
    model.quantization = {"scheme": s.name, "groups": list(groups)}
    return model


def quantize_structure(model: nn.Module, s: Scheme | str, groups: Iterable[str]) -> set[str]:
    """Replace the target modules of a plain model (on the meta device) by empty quantized ones; returns the
    plain parameter names they stand for (`layers.0.attention.wq.weight`, `layers.0.feed_forward.experts.w13`)."""
    s, groups = scheme(s), check_groups(groups)
    prefix = {module: name for name, module in model.named_modules()}
    replaced = set()
    for owner, name, kind in list(_targets(model, groups)):
        module = getattr(owner, name)
        path = f"{prefix[owner]}.{name}" if prefix[owner] else name
        if kind == "experts":
            E, D, F2 = module.w13.shape
            setattr(owner, name, QuantExperts(E, D, F2 // 2, s, device="meta"))
            replaced |= {f"{path}.w13", f"{path}.w2"}
        else:
            setattr(owner, name, QuantLinear(module.in_features, module.out_features, s, device="meta"))
            replaced.add(f"{path}.weight")
    model.quantization = {"scheme": s.name, "groups": list(groups)}
    return replaced


def stored_names(name: str) -> tuple[str, str]:
    """The codes and scales names that stand for plain parameter `name` in a quantized model."""
    if name.endswith(".weight"):
        base = name.removesuffix(".weight")
        return f"{base}.codes", f"{base}.scales"
    return f"{name}_codes", f"{name}_scales"


def quantized_stream(tensors: Iterable[tuple[str, torch.Tensor]], replaced: set[str],
                     s: Scheme | str) -> Iterator[tuple[str, torch.Tensor]]:
    """Plain (name, tensor) pairs with the `replaced` ones quantized as they pass: one tensor in full
    precision at a time."""
    s = scheme(s)
    for name, tensor in tensors:
        if name not in replaced:
            yield name, tensor
            continue
        codes, scales = quantize_experts(tensor, s) if not name.endswith(".weight") else quantize(tensor, s)
        codes_name, scales_name = stored_names(name)
        yield codes_name, codes
        yield scales_name, scales
