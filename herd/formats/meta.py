"""Meta's native format: `params.json` and model-parallel `consolidated.NN.pth` shards (spec §6.1, §6.3).

- Shards are merged tensor by tensor: most concatenate along one dim, but `wqkv` (q | k | v rows)
  and the dense `fc1_weight` (w1 | w3 rows) are split per shard first, then the parts are joined.
- Routed experts are stored 2-D (`moe_w_in_eD_F` = [E·D, F/MP]) with every expert on every rank;
  they are viewed as [E, D, F/MP], joined along F, and w1 | w3 fused into herd's `w13`.
- The router is stored [D, E] (`router_DE`) and transposed to an nn.Linear [E, D].
- Training statistics and TransformerEngine `_extra_state` entries are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from herd.config import ConfigError, ModelConfig, RopeScaling, TextConfig, VisionConfig

VISION_PREFIXES = ("vision_embeddings.", "vision_projection.")
DROPPED_SUFFIXES = (
    "_extra_state", "global_gate_stats_3E", "running_gate_stats_3E", "expert_activation_DE",
    "rope.freqs", "freqs_cis",
)

_PARAMS = {
    "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "multiple_of", "ffn_dim_multiplier",
    "ffn_exp", "norm_eps", "attention_chunk_size", "rope_theta", "use_scaled_rope", "rope_scaling_factor",
    "rope_high_freq_factor", "nope_layer_interval", "use_qk_norm", "attn_temperature_tuning", "floor_scale",
    "attn_scale", "vision_args", "moe_args", "quantization_args", "lora_args", "max_batch_size", "max_seq_len",
}
_MOE_ARGS = {"num_experts", "capacity_factor", "auto_scale_F", "top_k", "interleave_moe_layer_step"}
_VISION_ARGS = {"image_size", "patch_size", "dim", "n_layers", "n_heads", "mlp_ratio", "output_dim",
                "pixel_shuffle_ratio"}


def _round_up(n: int, multiple: int) -> int:
    return multiple * ((n + multiple - 1) // multiple)


def _check_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown or unsupported key(s): {', '.join(unknown)}")


def model_config_from_params(raw: dict[str, Any], where: str = "params.json") -> ModelConfig:
    """Read Meta's `params.json` (the fields of `llama_models.llama4.args.ModelArgs`)."""
    if "model" in raw and isinstance(raw["model"], dict):
        raw = raw["model"]
    _check_keys(raw, _PARAMS, where)
    for key in ("quantization_args", "lora_args"):
        if raw.get(key):
            raise ConfigError(f"{where}: {key} is not supported (herd loads the unquantized base weights)")
    dim, n_heads = int(raw["dim"]), int(raw["n_heads"])
    head_dim = dim // n_heads  # Meta computes this and ignores `head_dim`
    if raw.get("head_dim") not in (None, head_dim):
        raise ConfigError(f"{where}: head_dim={raw['head_dim']} but Meta's model uses dim // n_heads = {head_dim}")
    multiple_of = int(raw.get("multiple_of", 256))
    multiplier = raw.get("ffn_dim_multiplier")

    # Dense hidden size (Meta hard-codes the factor 4 here): 4D -> 2/3 -> multiplier -> round up.
    ffn_dim = int(2 * int(4 * dim) / 3)
    if multiplier is not None:
        ffn_dim = int(multiplier * ffn_dim)
    ffn_dim = _round_up(ffn_dim, multiple_of)

    moe = raw.get("moe_args")
    n_experts, top_k, step, expert_dim = 0, 1, 1, 0
    if moe:
        _check_keys(moe, _MOE_ARGS, f"{where}: moe_args")
        n_experts, top_k = int(moe.get("num_experts", -1)), int(moe.get("top_k", 1))
        step = int(moe.get("interleave_moe_layer_step", 1))
        # Expert hidden size: ffn_exp·D -> 2/3 -> multiplier -> /(capacity+1) if auto_scale_F -> round up.
        expert_dim = int(2 * int(float(raw["ffn_exp"]) * dim) / 3)
        expert_dim = int(float(multiplier) * expert_dim)
        if moe.get("auto_scale_F", True):
            expert_dim = int(expert_dim / (float(moe.get("capacity_factor", 1.0)) + 1))
        expert_dim = _round_up(expert_dim, multiple_of)

    scaling = None
    if raw.get("use_scaled_rope"):
        # Meta's rule hard-codes low_freq_factor 1 and an original context of 8192.
        scaling = RopeScaling(
            factor=float(raw.get("rope_scaling_factor") or 16),
            low_freq_factor=1.0,
            high_freq_factor=float(raw.get("rope_high_freq_factor") or 1),
            original_max_position_embeddings=8192,
        )
    vocab = int(raw.get("vocab_size", -1))
    text = TextConfig(
        vocab_size=vocab if vocab > 0 else 202048,  # -1 means "the tokenizer's n_words", as Meta's loader does
        dim=dim,
        n_layers=int(raw["n_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(raw.get("n_kv_heads") or n_heads),
        head_dim=head_dim,
        norm_eps=float(raw.get("norm_eps", 1e-5)),
        rope_theta=float(raw.get("rope_theta", 500000)),
        rope_scaling=scaling,
        nope_layer_interval=raw.get("nope_layer_interval"),
        attention_chunk_size=raw.get("attention_chunk_size"),
        use_qk_norm=bool(raw.get("use_qk_norm", False)),
        attn_temperature_tuning=bool(raw.get("attn_temperature_tuning", False)),
        floor_scale=float(raw.get("floor_scale", 8192.0)),
        attn_scale=float(raw.get("attn_scale", 0.1)),
        ffn_dim=ffn_dim,
        n_experts=n_experts,
        top_k=top_k,
        moe_layer_step=step,
        expert_dim=expert_dim,
        # params.json carries no context length (Meta passes it at run time).
        max_seq_len=int(raw.get("max_seq_len", 131072)),
    )
    vision = None
    if raw.get("vision_args"):
        v = raw["vision_args"]
        _check_keys(v, _VISION_ARGS, f"{where}: vision_args")
        size, patch = v["image_size"], v["patch_size"]
        vdim = int(v["dim"])
        shuffled = int(vdim / float(v["pixel_shuffle_ratio"]) ** 2)
        vision = VisionConfig(
            image_size=int(size["height"] if isinstance(size, dict) else size),
            patch_size=int(patch["height"] if isinstance(patch, dict) else patch),
            dim=vdim, n_layers=int(v["n_layers"]), n_heads=int(v["n_heads"]),
            mlp_dim=int(vdim * float(v["mlp_ratio"])), pixel_shuffle_ratio=float(v["pixel_shuffle_ratio"]),
            adapter_dim=int(v["output_dim"]), output_dim=int(v["output_dim"]),
        )
        if vision.mlp_dim != shuffled:
            raise ConfigError(
                f"{where}: vision mlp size {vision.mlp_dim} must equal the pixel-shuffled width {shuffled}"
            )
    return ModelConfig(text=text, vision=vision)


Merge = Callable[[list[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """How one herd tensor is made from the shards of one or two Meta tensors."""

    sources: tuple[str, ...]
    merge: Merge


def _cat(dim: int) -> Merge:
    return lambda parts: parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _replicated(parts: list[torch.Tensor]) -> torch.Tensor:
    """A tensor every shard holds a copy of: the copies must agree."""
    for i, part in enumerate(parts[1:], start=1):
        if part.shape != parts[0].shape or not torch.equal(part, parts[0]):
            raise RuntimeError(f"shard {i} holds a different copy of a replicated tensor than shard 0")
    return parts[0]


def _rows(start: Callable[[int], int], stop: Callable[[int], int]) -> Merge:
    """Take rows [start(n), stop(n)) of each shard (n = its row count), then concatenate."""
    return lambda parts: torch.cat([p[start(p.shape[0]) : stop(p.shape[0])] for p in parts], dim=0)


def text_rules(text: TextConfig) -> dict[str, Rule]:
    """herd parameter name -> the Meta tensor(s) and merge that produce it."""
    H, G = text.n_heads, text.n_kv_heads
    q_frac = H / (H + 2 * G)  # each shard's wqkv rows are [q_r; k_r; v_r] in the ratio H : G : G
    kv_frac = G / (H + 2 * G)
    E, D = text.n_experts, text.dim

    def experts_in(parts: list[torch.Tensor]) -> torch.Tensor:  # w1 shards then w3 shards, [E·D, F/MP] each
        half = len(parts) // 2
        w1 = torch.cat([p.view(E, D, -1) for p in parts[:half]], dim=-1)
        w3 = torch.cat([p.view(E, D, -1) for p in parts[half:]], dim=-1)
        return torch.cat((w1, w3), dim=-1)

    rules = {
        "tok_embeddings.weight": Rule(("tok_embeddings.weight",), _cat(0)),
        "output.weight": Rule(("output.weight",), _cat(0)),
        "norm.weight": Rule(("norm.weight",), _replicated),
    }
    for i in range(text.n_layers):
        m, h = f"layers.{i}.", f"layers.{i}."
        wqkv = (m + "attention.wqkv.weight",)
        rules[h + "attention.wq.weight"] = Rule(wqkv, _rows(lambda n: 0, lambda n: round(n * q_frac)))
        rules[h + "attention.wk.weight"] = Rule(
            wqkv, _rows(lambda n: round(n * q_frac), lambda n: round(n * (q_frac + kv_frac)))
        )
        rules[h + "attention.wv.weight"] = Rule(wqkv, _rows(lambda n: round(n * (q_frac + kv_frac)), lambda n: n))
        rules[h + "attention.wo.weight"] = Rule((m + "attention.wo.weight",), _cat(1))
        rules[h + "attention_norm.weight"] = Rule((m + "attention.wqkv.layer_norm_weight",), _replicated)
        ffn = m + "feed_forward."
        if text.is_moe_layer(i):
            rules[h + "ffn_norm.weight"] = Rule((ffn + "norm.weight",), _replicated)
            rules[h + "feed_forward.router.weight"] = Rule(
                (ffn + "router_DE",), lambda p: _replicated(p).T.contiguous()
            )
            rules[h + "feed_forward.experts.w13"] = Rule(
                (ffn + "experts.moe_w_in_eD_F", ffn + "experts.moe_w_swiglu_eD_F"), experts_in
            )
            rules[h + "feed_forward.experts.w2"] = Rule(
                (ffn + "experts.moe_w_out_eF_D",), lambda p: torch.cat([t.view(E, -1, D) for t in p], dim=1)
            )
            shared = h + "feed_forward.shared_expert."
            rules[shared + "w1.weight"] = Rule((ffn + "w_in_shared_FD.weight",), _cat(0))
            rules[shared + "w3.weight"] = Rule((ffn + "w_swiglu_FD.weight",), _cat(0))
            rules[shared + "w2.weight"] = Rule((ffn + "w_out_shared_DF.weight",), _cat(1))
        else:
            rules[h + "ffn_norm.weight"] = Rule((ffn + "mlp.layer_norm_weight",), _replicated)
            fc1 = (ffn + "mlp.fc1_weight",)  # each shard is [w1_r; w3_r]
            rules[h + "feed_forward.w1.weight"] = Rule(fc1, _rows(lambda n: 0, lambda n: n // 2))
            rules[h + "feed_forward.w3.weight"] = Rule(fc1, _rows(lambda n: n // 2, lambda n: n))
            rules[h + "feed_forward.w2.weight"] = Rule((ffn + "mlp.fc2_weight",), _cat(1))
    return rules


def vision_rules(vision: VisionConfig) -> dict[str, Rule]:
    """herd vision parameter name -> Meta tensor and merge (column-parallel on dim 0, row-parallel on 1)."""
    enc, adapter = "vision_embeddings.vision_encoder.", "vision_embeddings.vision_adapter.mlp."
    rules = {
        "vision.patch_embedding.weight": Rule((enc + "conv1._linear.weight",), _cat(0)),
        "vision.class_embedding": Rule((enc + "class_embedding",), _replicated),
        "vision.positional_embedding": Rule((enc + "positional_embedding_vlm",), _replicated),
        "vision.adapter_fc.weight": Rule((adapter + "c_fc.weight",), _cat(0)),
        "vision.adapter_proj.weight": Rule((adapter + "c_proj.weight",), _cat(1)),
        "vision.projection.weight": Rule(("vision_projection.weight",), _cat(0)),
    }
    for p in ("weight", "bias"):
        # Row-parallel layers (wo, c_proj) split weights on the input dim and replicate biases.
        row_merge = _cat(1) if p == "weight" else _replicated
        rules[f"vision.ln_pre.{p}"] = Rule((f"{enc}ln_pre.{p}",), _replicated)
        rules[f"vision.ln_post.{p}"] = Rule((f"{enc}ln_post.{p}",), _replicated)
        for j in range(vision.n_layers):
            ours, theirs = f"vision.layers.{j}.", f"{enc}transformer.resblocks.{j}."
            for w in ("wq", "wk", "wv"):
                rules[f"{ours}attn.{w}.{p}"] = Rule((f"{theirs}attn.{w}.{p}",), _cat(0))
            rules[f"{ours}attn.wo.{p}"] = Rule((f"{theirs}attn.wo.{p}",), row_merge)
            rules[f"{ours}mlp.c_fc.{p}"] = Rule((f"{theirs}mlp.c_fc.{p}",), _cat(0))
            rules[f"{ours}mlp.c_proj.{p}"] = Rule((f"{theirs}mlp.c_proj.{p}",), row_merge)
            rules[f"{ours}ln_1.{p}"] = Rule((f"{theirs}ln_1.{p}",), _replicated)
            rules[f"{ours}ln_2.{p}"] = Rule((f"{theirs}ln_2.{p}",), _replicated)
    return rules


def is_dropped(key: str) -> bool:
    return key.endswith(DROPPED_SUFFIXES)


# ---- fp8_mixed (spec §7.1): routed experts in fp8 e4m3 with per-output-row fp32 scales beside the shards ----

_FP8_EXPERTS = {"w1": "moe_w_in_eD_F", "w3": "moe_w_swiglu_eD_F", "w2": "moe_w_out_eF_D"}


class DequantizedShard(dict):
    """A shard whose fp8 expert tensors are dequantized (to fp32) when read: `scales` maps Meta's scale keys
    (`layers.{l}.feed_forward.experts.{w1,w3,w2}`, [E, F/MP] for w1/w3 and [E, D] for w2) to this rank's
    scales. W1/W3 are stored [E·D, F/MP] (scaled per output column), W2 [E·F/MP, D] (per output D)."""

    def __init__(self, shard: dict, scales: dict[str, torch.Tensor], n_experts: int) -> None:
        super().__init__(shard)
        self.n_experts, self.pending = n_experts, {}
        for key, scale in scales.items():
            prefix, which = key.rsplit(".", 1)
            if which not in _FP8_EXPERTS or f"{prefix}.{_FP8_EXPERTS[which]}" not in shard:
                raise ValueError(f"fp8 scale {key!r} names no expert tensor of the shard")
            self.pending[f"{prefix}.{_FP8_EXPERTS[which]}"] = scale

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = super().__getitem__(name)
        if name not in self.pending:
            return tensor
        scale = self.pending[name]
        # both layouts keep the output last: [E·D, F_r] × [E, F_r] (W1, W3) and [E·F_r, D] × [E, D] (W2)
        w = tensor.float().view(self.n_experts, -1, tensor.shape[-1]) * scale.float().view(self.n_experts, 1, -1)
        return w.view(tensor.shape)
