"""MetaP: per-group initialisation, learning rates and weight decay that let hyperparameters tuned on
a small proxy model transfer to wider and deeper ones (herd's parametrization; Meta published none).

The rules are those of muP for Adam (Tensor Programs V) for width and of CompleteP (α = 1) for depth,
written purely as init scales and per-group learning rates, so the model keeps Llama 4's exact
architecture and checkpoints stay standard. Two equivalences make that possible under Adam:
a multiplier α on a layer's output, with init σ and LR η, trains exactly like no multiplier with
init ασ and LR αη (Adam normalises the gradient scale away, up to ε); and decoupled weight decay
acts through lr·wd, which each group keeps equal to the base value.

Notation: w = fan_in / base fan_in of a matrix, d = dim / base dim, r = n_layers / base n_layers;
σ, η, λ the base init std, LR and weight decay (tuned on the proxy). Per group:

| group | init std | Adam LR | muP / CompleteP meaning |
|---|---|---|---|
| embedding | σ | η | input layer: Θ(1) coordinates, Θ(1) updates |
| q, k, v; w1, w3 (dense, shared, routed) | σ / √w | η / w | hidden matrices |
| wo; w2 (dense, shared, routed) | σ / √(2·L_base) / √w / r | η / (w·r) | hidden, × the 1/r branch multiplier |
| router | σ / d | η / d | a readout to E logits: output multiplier 1/d |
| LM head | σ / d | η / d | readout: output-logit multiplier 1/d |
| norm gains | 1 | η | Θ(1) vectors, no weight decay |

At the base shape every factor is 1 and metap equals herd's standard parametrization (`standard`):
init σ, branch outputs σ/√(2L), one LR for every group. Width is scaled by the number of heads at a
fixed head dim (Llama 4 uses 128 at every size), which keeps the 1/√head_dim attention scale right.

Shapes: no tensors here beyond parameters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from herd.config import PRESETS, ConfigError, TextConfig
from herd.model import OUTPUT_PROJECTIONS

log = logging.getLogger("herd")
PARAMETRIZATIONS = ("metap", "standard")
GROUPS = ("embedding", "hidden_in", "hidden_out", "router", "lm_head", "norm")


@dataclass(frozen=True)
class Rule:
    """How one parameter is initialised and trained, relative to the base hyperparameters."""

    group: str
    init_std: float  # absolute std (0 for norm gains, which start at 1)
    lr_scale: float  # multiplies the base LR
    fan_in: int


def group_of(name: str) -> str:
    """The MetaP group of a parameter of `herd.model.Transformer`, by its name."""
    if name == "tok_embeddings.weight":
        return "embedding"
    if name == "output.weight":
        return "lm_head"
    if name.endswith("norm.weight"):
        return "norm"
    if name.endswith("router.weight"):
        return "router"
    if name.endswith(OUTPUT_PROJECTIONS):
        return "hidden_out"
    if name.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight", "experts.w13")):
        return "hidden_in"
    raise ValueError(f"no MetaP group for parameter {name!r}")


def _fan_in(name: str, param: torch.Tensor) -> int:
    # nn.Linear weights are [out, in]; experts are stored input-major: w13 [E, D, 2F], w2 [E, F, D].
    return param.shape[1] if name.endswith(("experts.w13", "experts.w2")) or param.ndim == 2 else param.shape[0]


def scaled(base: str | TextConfig, width: int, depth: int) -> TextConfig:
    """The base shape at another width (more heads of the same head dim; kv heads and FFN widths in
    proportion) and depth: how the MetaP experiments and the ladder grow a model."""
    b = base_config(base)
    if width % b.head_dim:
        raise ConfigError(f"width {width} must be a multiple of the head dim {b.head_dim}")
    heads = width // b.head_dim
    kv = max(1, heads * b.n_kv_heads // b.n_heads)
    while heads % kv:
        kv -= 1
    def grow(hidden: int) -> int:
        return max(8, round(hidden * width / b.dim / 8) * 8)
    return b.replace(dim=width, n_heads=heads, n_kv_heads=kv, n_layers=depth, expert_dim=grow(b.expert_dim),
                     ffn_dim=grow(b.ffn_dim))


def base_config(base: str | TextConfig) -> TextConfig:
    if isinstance(base, TextConfig):
        return base
    if base not in PRESETS:
        raise ConfigError(f"metap base {base!r} is not a preset ({', '.join(PRESETS)})")
    return PRESETS[base].text


def _base_fan_in(name: str, base: TextConfig, layer_is_moe: bool) -> int:
    if name.endswith(("experts.w2",)):
        return base.expert_dim
    if name.endswith("w2.weight"):
        return base.expert_dim if ".shared_expert." in name or layer_is_moe else base.ffn_dim
    if name.endswith("wo.weight"):
        return base.n_heads * base.head_dim
    return base.dim


def rules(model: nn.Module, parametrization: str, std: float, base: str | TextConfig) -> dict[str, Rule]:
    """The Rule of every parameter of `model` (a `Transformer`, unsharded) by name."""
    if parametrization not in PARAMETRIZATIONS:
        raise ConfigError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}, got {parametrization!r}")
    config: TextConfig = model.config
    b = base_config(base)
    if parametrization == "metap" and config.head_dim != b.head_dim:
        log.warning("metap transfers width at a fixed head dim: this model's head_dim %d differs from the base's %d, "
                    "so tuned hyperparameters may not transfer", config.head_dim, b.head_dim)
    d, r = config.dim / b.dim, config.n_layers / b.n_layers
    out: dict[str, Rule] = {}
    for name, param in model.named_parameters():
        if name.startswith("vision."):
            continue
        group, fan_in = group_of(name), _fan_in(name, param)
        if parametrization == "standard":
            out[name] = Rule(group, model.init_std(name, std), 1.0, fan_in)
            continue
        layer_is_moe = ".feed_forward.experts." in name or ".shared_expert." in name
        w = fan_in / _base_fan_in(name, b, layer_is_moe)
        if group == "embedding":
            out[name] = Rule(group, std, 1.0, fan_in)
        elif group == "hidden_in":
            out[name] = Rule(group, std / math.sqrt(w), 1.0 / w, fan_in)
        elif group == "hidden_out":
            out[name] = Rule(group, std / math.sqrt(2 * b.n_layers) / math.sqrt(w) / r, 1.0 / (w * r), fan_in)
        elif group in ("router", "lm_head"):
            out[name] = Rule(group, std / d, 1.0 / d, fan_in)
        else:
            out[name] = Rule(group, 0.0, 1.0, fan_in)
    return out


def init_weights(model: nn.Module, plan: dict[str, Rule], generator: torch.Generator | None = None) -> None:
    """Initialise `model` (a text `Transformer`) by its rules, through the model's one initialiser."""
    model.init_weights(generator=generator, stds={name: rule.init_std for name, rule in plan.items()})


def param_groups(model: nn.Module, plan: dict[str, Rule], lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups, one per distinct (LR scale, decay) pair; `peak_lr` is what the schedule scales.
    Weight decay is decoupled (applied as lr·wd·θ), so each group keeps lr·wd at its base value."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    names: dict[tuple[float, bool], list[str]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:  # frozen (a vision tower in fine-tuning): not optimized
            continue
        rule = plan.get(name)
        if rule is None:
            raise ValueError(f"parameter {name!r} has no MetaP rule")
        key = (rule.lr_scale, rule.group != "norm")
        groups.setdefault(key, []).append(param)
        names.setdefault(key, []).append(rule.group)
    return [
        {"params": params, "peak_lr": lr * scale, "weight_decay": weight_decay / scale if decays else 0.0,
         "metap_groups": sorted(set(names[(scale, decays)]))}
        for (scale, decays), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))
    ]


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (the plots of coord-check and sweep)."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the MetaP plots need matplotlib: pip install 'herd-llama4[metap]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
