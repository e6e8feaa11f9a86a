"""The HF transformers format: `config.json` read and written strictly, and the weight-name map.

- Text-only checkpoints (`Llama4ForCausalLM`) keep the text weights under `model.` and `lm_head.`;
  multimodal ones (`Llama4ForConditionalGeneration`) under `language_model.` and the vision tower
  under `vision_model.` / `multi_modal_projector.` (spec §6.2).
- Names map one to one: no permutation, transpose or fusion is needed, since herd keeps the
  experts in HF's input-major layout (`gate_up_proj` [E, D, 2F] = herd `w13`).
- Every config key is either read, checked against the one value herd supports, or listed as a
  known no-op for inference; anything else is an error that names it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from herd.config import ConfigError, ModelConfig, RopeScaling, TextConfig, VisionConfig

TEXT_ONLY_PREFIX = ""
MULTIMODAL_PREFIX = "language_model."
VISION_PREFIXES = ("vision_model.", "multi_modal_projector.")

# Generic PreTrainedConfig fields and training-only knobs with no effect on herd's inference.
_IGNORED = {
    "architectures", "transformers_version", "torch_dtype", "dtype", "use_cache", "initializer_range",
    "attention_dropout", "router_aux_loss_coef", "router_jitter_noise", "output_router_logits",
    "output_hidden_states", "output_attentions", "return_dict", "chunk_size_feed_forward",
    "is_encoder_decoder", "id2label", "label2id", "problem_type", "_name_or_path", "for_llm_compressor",
    "cache_implementation", "tokenizer_class", "_attn_implementation_autoset", "projector_dropout",
    "vision_feature_layer", "vision_feature_select_strategy", "intermediate_layers_indices", "num_channels",
}


class _Keys:
    """Reads a config dict strictly: every key must be taken, checked or known to be ignorable."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw, self.where, self.seen = raw, where, set(_IGNORED)

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return self.raw.get(key, default)

    def require(self, key: str) -> Any:
        self.seen.add(key)
        if key not in self.raw:
            raise ConfigError(f"{self.where}: missing required key {key!r}")
        return self.raw[key]

    def check(self, key: str, supported: Any) -> None:
        """A key herd accepts only at one value (e.g. `hidden_act` must be "silu")."""
        self.seen.add(key)
        if key in self.raw and self.raw[key] != supported and self.raw[key] is not None:
            raise ConfigError(
                f"{self.where}: unsupported value {key}={self.raw[key]!r} (herd supports {supported!r})"
            )

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(f"{self.where}: unknown or unsupported config key(s): {', '.join(unknown)}")


def _rope(keys: _Keys) -> tuple[float, RopeScaling | None]:
    """RoPE theta and scaling from `rope_parameters` (transformers 5) or `rope_theta`/`rope_scaling`."""
    params = keys.get("rope_parameters") or keys.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", keys.get("rope_theta", 500000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ConfigError(f"{keys.where}: unsupported rope_type {rope_type!r} (herd supports 'default', 'llama3')")
    extra = set(params) - {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
                           "original_max_position_embeddings"}
    if extra:
        raise ConfigError(f"{keys.where}: unknown rope parameter(s): {', '.join(sorted(extra))}")
    return theta, RopeScaling(
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]),
    )


def _interval(pattern: list[int], n_layers: int, where: str, name: str) -> int | None:
    """Recover a layer interval from an explicit per-layer list; herd stores patterns as intervals."""
    for step in range(1, n_layers + 1):
        if pattern == [int((i + 1) % step == 0) for i in range(n_layers)]:
            return step
    if not any(pattern):
        return None
    raise ConfigError(f"{where}: {name}={pattern} is not a regular every-n-th-layer pattern, which herd requires")


def text_config_from_hf(raw: dict[str, Any], where: str = "config.json") -> TextConfig:
    keys = _Keys(raw, where)
    keys.check("model_type", "llama4_text")
    keys.check("hidden_act", "silu")
    keys.check("tie_word_embeddings", False)
    keys.check("attention_bias", False)
    n_layers = int(keys.require("num_hidden_layers"))
    n_heads = int(keys.require("num_attention_heads"))
    dim = int(keys.require("hidden_size"))
    theta, scaling = _rope(keys)

    interval = keys.get("no_rope_layer_interval", 4)
    uses_rope = keys.get("no_rope_layers")
    nope_interval = interval if not uses_rope else _interval([1 - r for r in uses_rope], n_layers, where,
                                                           "no_rope_layers (inverted)")
    if nope_interval is not None and nope_interval > n_layers:
        nope_interval = None  # e.g. the dense Llama Guard 4 conversion writes 80 for "never"

    n_experts = int(keys.get("num_local_experts", 16))
    step = int(keys.get("interleave_moe_layer_step", 1))
    moe_layers = keys.get("moe_layers")
    if moe_layers is not None:
        found = _interval([int(i in moe_layers) for i in range(n_layers)], n_layers, where, "moe_layers")
        step, n_experts = (step, 0) if found is None else (found, n_experts)
    if step == 0:
        n_experts = 0

    chunk = keys.get("attention_chunk_size", 8192)
    layer_types = keys.get("layer_types")
    text = TextConfig(
        vocab_size=int(keys.require("vocab_size")),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(keys.get("num_key_value_heads") or n_heads),
        head_dim=int(keys.get("head_dim") or dim // n_heads),
        norm_eps=float(keys.get("rms_norm_eps", 1e-5)),
        rope_theta=theta,
        rope_scaling=scaling,
        nope_layer_interval=nope_interval,
        attention_chunk_size=None if chunk is None else int(chunk),
        use_qk_norm=bool(keys.get("use_qk_norm", True)),
        attn_temperature_tuning=bool(keys.get("attn_temperature_tuning", True)),
        floor_scale=float(keys.get("floor_scale", 8192)),
        attn_scale=float(keys.get("attn_scale", 0.1)),
        ffn_dim=int(keys.get("intermediate_size_mlp", 16384)),
        n_experts=n_experts,
        top_k=int(keys.get("num_experts_per_tok", 1)),
        moe_layer_step=max(step, 1),
        expert_dim=int(keys.get("intermediate_size", 8192)),
        max_seq_len=int(keys.get("max_position_embeddings", 131072)),
        bos_id=_first_id(keys.get("bos_token_id"), 200000),
        eos_ids=_ids(keys.get("eos_token_id"), (200001, 200007, 200008)),
        pad_id=_first_id(keys.get("pad_token_id"), 200018),
        router_bias=bool(keys.get("herd_router_selection_bias", False)),
    )
    if layer_types is not None:
        expected = ["chunked_attention" if text.chunk_size(i) else "full_attention" for i in range(n_layers)]
        if list(layer_types) != expected:
            raise ConfigError(f"{where}: layer_types={layer_types} disagrees with the NoPE/chunk settings")
    keys.finish()
    return text


def _first_id(value: Any, default: int) -> int:
    if value is None:
        return default
    return int(value[0] if isinstance(value, list) else value)


def _ids(value: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    if value is None:
        return default
    return tuple(int(v) for v in (value if isinstance(value, list) else [value]))


def vision_config_from_hf(raw: dict[str, Any], where: str = "config.json: vision_config") -> VisionConfig:
    keys = _Keys(raw, where)
    keys.check("model_type", "llama4_vision_model")
    keys.check("hidden_act", "gelu")
    keys.check("multi_modal_projector_bias", False)
    rope = keys.get("rope_parameters") or {}
    vision = VisionConfig(
        image_size=int(keys.require("image_size")),
        patch_size=int(keys.require("patch_size")),
        dim=int(keys.require("hidden_size")),
        n_layers=int(keys.require("num_hidden_layers")),
        n_heads=int(keys.require("num_attention_heads")),
        mlp_dim=int(keys.require("intermediate_size")),
        norm_eps=float(keys.get("norm_eps", 1e-5)),
        rope_theta=float(rope.get("rope_theta", keys.get("rope_theta", 10000.0))),
        pixel_shuffle_ratio=float(keys.get("pixel_shuffle_ratio", 0.5)),
        adapter_dim=int(keys.require("projector_input_dim")),
        output_dim=int(keys.require("projector_output_dim")),
    )
    if vision.adapter_dim != vision.output_dim:  # HF's adapter feeds fc1's output into an output_dim-wide fc2
        raise ConfigError(f"{where}: projector_input_dim={vision.adapter_dim} must equal "
                          f"projector_output_dim={vision.output_dim}")
    out_dim = keys.get("vision_output_dim")
    if out_dim is not None and int(out_dim) != vision.output_dim:
        raise ConfigError(f"{where}: vision_output_dim={out_dim} differs from projector_output_dim={vision.output_dim}")
    keys.finish()
    return vision


def model_config_from_hf(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Read `Llama4ForConditionalGeneration` (model_type llama4) or `Llama4ForCausalLM` (llama4_text)."""
    if "quantization_config" in raw:
        quant = raw["quantization_config"]
        if not isinstance(quant, dict):
            raise ConfigError(f"{where}: quantization_config must be an object, found {quant!r}")
        method = quant.get("quant_method", "?")
        if method not in ("herd", *FP8_METHODS):  # herd's own: herd.checkpoint.read_quantization; fp8: dequantized
            raise ConfigError(f"{where}: quantized checkpoints ({method}) are not supported; herd reads its own "
                              f"(herd quantize) and fp8 ones ({', '.join(FP8_METHODS)})")
        raw = {k: v for k, v in raw.items() if k != "quantization_config"}
    if raw.get("model_type") == "llama4_text" or "text_config" not in raw:
        return ModelConfig(text=text_config_from_hf(raw, where))
    keys = _Keys(raw, where)
    keys.check("model_type", "llama4")
    keys.check("tie_word_embeddings", False)
    keys.get("boi_token_index")  # used by HF's processor only; the model never reads them
    keys.get("eoi_token_index")
    patch_id = int(keys.get("image_token_index", 200092))
    text = text_config_from_hf(keys.require("text_config"), f"{where}: text_config")
    vision_raw = keys.get("vision_config")
    vision = vision_config_from_hf(vision_raw, f"{where}: vision_config") if vision_raw else None
    vision = vision.replace(patch_token_id=patch_id) if vision else None
    keys.finish()
    return ModelConfig(text=text, vision=vision)


def text_config_to_hf(text: TextConfig, dtype: str) -> dict[str, Any]:
    """A `Llama4ForCausalLM` config.json that transformers (4.51+ and 5.x) loads."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": text.rope_theta}
    if text.rope_scaling is not None:
        s = text.rope_scaling
        rope = {
            "rope_type": "llama3", "rope_theta": text.rope_theta, "factor": s.factor,
            "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    n = text.n_layers
    return {
        "architectures": ["Llama4ForCausalLM"],
        "model_type": "llama4_text",
        "dtype": dtype,
        "vocab_size": text.vocab_size,
        "hidden_size": text.dim,
        "num_hidden_layers": n,
        "num_attention_heads": text.n_heads,
        "num_key_value_heads": text.n_kv_heads,
        "head_dim": text.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": text.norm_eps,
        "rope_parameters": rope,
        "no_rope_layers": [int(not text.is_nope_layer(i)) for i in range(n)],
        "no_rope_layer_interval": text.nope_layer_interval or 2 * n,
        "attention_chunk_size": text.attention_chunk_size,
        "layer_types": ["chunked_attention" if text.chunk_size(i) else "full_attention" for i in range(n)],
        "use_qk_norm": text.use_qk_norm,
        "attn_temperature_tuning": text.attn_temperature_tuning,
        "floor_scale": int(text.floor_scale),
        "attn_scale": text.attn_scale,
        "intermediate_size": text.expert_dim,
        "intermediate_size_mlp": text.ffn_dim,
        "num_local_experts": text.n_experts,
        "num_experts_per_tok": text.top_k,
        "interleave_moe_layer_step": text.moe_layer_step if text.n_experts else 0,
        "moe_layers": [i for i in range(n) if text.is_moe_layer(i)],
        "max_position_embeddings": text.max_seq_len,
        # transformers rejects ids outside the vocabulary (e.g. a tiny test vocab): write null then.
        "bos_token_id": _in_vocab(text.bos_id, text),
        "eos_token_id": [i for i in text.eos_ids if _in_vocab(i, text) is not None] or None,
        "pad_token_id": _in_vocab(text.pad_id, text),
        "tie_word_embeddings": False,
        "attention_bias": False,
        # herd's own key, absent from released checkpoints; transformers keeps it as an unused attribute.
        **({"herd_router_selection_bias": True} if text.router_bias else {}),
    }


def _in_vocab(token: int, text: TextConfig) -> int | None:
    return token if 0 <= token < text.vocab_size else None


def text_weight_names(text: TextConfig, prefix: str) -> dict[str, str]:
    """herd parameter name -> HF tensor name, for every text weight."""
    names = {
        "tok_embeddings.weight": f"{prefix}model.embed_tokens.weight",
        "norm.weight": f"{prefix}model.norm.weight",
        "output.weight": f"{prefix}lm_head.weight",
    }
    for i in range(text.n_layers):
        ours, theirs = f"layers.{i}.", f"{prefix}model.layers.{i}."
        names[ours + "attention_norm.weight"] = theirs + "input_layernorm.weight"
        names[ours + "ffn_norm.weight"] = theirs + "post_attention_layernorm.weight"
        for w, proj in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
            names[f"{ours}attention.{w}.weight"] = f"{theirs}self_attn.{proj}.weight"
        ffn, hf_ffn = ours + "feed_forward.", theirs + "feed_forward."
        if text.is_moe_layer(i):
            names[ffn + "router.weight"] = hf_ffn + "router.weight"
            if text.router_bias:
                names[ffn + "router_bias"] = hf_ffn + "router.selection_bias"
            names[ffn + "experts.w13"] = hf_ffn + "experts.gate_up_proj"
            names[ffn + "experts.w2"] = hf_ffn + "experts.down_proj"
            ffn, hf_ffn = ffn + "shared_expert.", hf_ffn + "shared_expert."
        for w, proj in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            names[f"{ffn}{w}.weight"] = f"{hf_ffn}{proj}.weight"
    return names


def vision_weight_names(vision: VisionConfig) -> dict[str, str]:
    """herd parameter name -> HF tensor name, for the vision tower and the projector."""
    names = {
        "vision.patch_embedding.weight": "vision_model.patch_embedding.linear.weight",
        "vision.class_embedding": "vision_model.class_embedding",
        "vision.positional_embedding": "vision_model.positional_embedding_vlm",
        "vision.adapter_fc.weight": "vision_model.vision_adapter.mlp.fc1.weight",
        "vision.adapter_proj.weight": "vision_model.vision_adapter.mlp.fc2.weight",
        "vision.projection.weight": "multi_modal_projector.linear_1.weight",
    }
    for p in ("weight", "bias"):
        names[f"vision.ln_pre.{p}"] = f"vision_model.layernorm_pre.{p}"
        names[f"vision.ln_post.{p}"] = f"vision_model.layernorm_post.{p}"
        for j in range(vision.n_layers):
            ours, theirs = f"vision.layers.{j}.", f"vision_model.model.layers.{j}."
            for w, proj in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
                names[f"{ours}attn.{w}.{p}"] = f"{theirs}self_attn.{proj}.{p}"
            names[f"{ours}mlp.c_fc.{p}"] = f"{theirs}mlp.fc1.{p}"
            names[f"{ours}mlp.c_proj.{p}"] = f"{theirs}mlp.fc2.{p}"
            names[f"{ours}ln_1.{p}"] = f"{theirs}input_layernorm.{p}"
            names[f"{ours}ln_2.{p}"] = f"{theirs}post_attention_layernorm.{p}"
    return names


def model_config_to_hf(config: ModelConfig, dtype: str) -> dict[str, Any]:
    """config.json for `Llama4ForCausalLM` (text only) or `Llama4ForConditionalGeneration`."""
    text = text_config_to_hf(config.text, dtype)
    if config.vision is None:
        return text
    v = config.vision
    vision = {
        "model_type": "llama4_vision_model", "hidden_size": v.dim, "num_hidden_layers": v.n_layers,
        "num_attention_heads": v.n_heads, "intermediate_size": v.mlp_dim, "image_size": v.image_size,
        "patch_size": v.patch_size, "norm_eps": v.norm_eps, "pixel_shuffle_ratio": v.pixel_shuffle_ratio,
        "projector_input_dim": v.adapter_dim, "projector_output_dim": v.output_dim, "vision_output_dim": v.output_dim,
        "rope_parameters": {"rope_type": "default", "rope_theta": v.rope_theta}, "hidden_act": "gelu",
        "multi_modal_projector_bias": False, "num_channels": 3,
    }
    text.pop("architectures")
    return {
        "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "dtype": dtype,
        "text_config": text, "vision_config": vision, "boi_token_index": 200080, "eoi_token_index": 200081,
        "image_token_index": v.patch_token_id, "tie_word_embeddings": False,
    }


# ---- fp8 checkpoints (HF fbgemm_fp8 and compressed-tensors), dequantized while read ----

FP8_METHODS = ("fbgemm_fp8", "compressed-tensors", "fp8")
_PER_EXPERT = re.compile(r"^(?P<prefix>.*\.experts)\.(?P<i>\d+)\.(?P<proj>gate|up|down)_proj\."
                         r"(?P<kind>weight|weight_scale)$")


@dataclass(frozen=True)
class Source:
    """How one tensor the HF name map asks for is made from stored ones: `parts` (names in the files) and
    `kind`: "plain" (stored as is), "linear" (fp8 [out, in] × its per-row `weight_scale`), "experts" (fp8
    input-major [E, in, out] × a per-output scale), "stacked" (per-expert Linears, gate and up or down,
    each dequantized, transposed and stacked into the fused input-major tensor)."""

    kind: str
    parts: tuple[str, ...]


def fp8_sources(stored: Iterable[str]) -> dict[str, Source]:
    """The HF tensor names an fp8 checkpoint stands for, and how each is made (see `Source`). Activation
    scales (`input_scale`, static or not) are dropped: herd keeps activations in bf16/fp32."""
    stored = set(stored)
    out: dict[str, Source] = {}
    experts: dict[str, dict[tuple[str, int], str]] = {}
    for name in sorted(stored):
        if name.endswith(("_scale", ".input_scale")) and not _PER_EXPERT.match(name):
            continue
        m = _PER_EXPERT.match(name)
        if m:
            if m["kind"] == "weight":
                experts.setdefault(m["prefix"], {})[(m["proj"], int(m["i"]))] = name
            continue
        if name.endswith(".weight") and f"{name}_scale" in stored:
            out[name] = Source("linear", (name, f"{name}_scale"))
        elif f"{name}_scale" in stored:
            out[name] = Source("experts", (name, f"{name}_scale"))
        else:
            out[name] = Source("plain", (name,))
    for prefix, parts in experts.items():
        n = 1 + max(i for _, i in parts)
        for fused, projs in (("gate_up_proj", ("gate", "up")), ("down_proj", ("down",))):
            names = []
            for proj in projs:
                for i in range(n):
                    if (proj, i) not in parts:
                        raise ValueError(f"per-expert weights of {prefix} lack {proj}_proj of expert {i}")
                    names.append(parts[(proj, i)])
            scales = [f"{x}_scale" for x in names]
            out[f"{prefix}.{fused}"] = Source("stacked", (*names, *(s if s in stored else "" for s in scales)))
    return out


def _scaled(weight: torch.Tensor, scale: torch.Tensor | None, out_dim: int) -> torch.Tensor:
    """weight (fp8 or float) × its scale along dimension `out_dim` (per output), in fp32."""
    w = weight.float()
    if scale is None:
        return w
    s = scale.float()
    if s.numel() == 1:
        return w * s.reshape(())
    if w.dim() == 3 and s.numel() == w.shape[0]:  # one scale per expert
        return w * s.reshape(-1, 1, 1)
    shape = [1] * w.dim()
    shape[out_dim] = w.shape[out_dim]
    if w.dim() == 3:  # experts [E, in, out]: one scale per expert and output
        shape[0] = w.shape[0]
    return w * s.reshape(shape)


def build_source(source: Source, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The tensor a non-plain `source` describes, reading stored tensors with `get(name)` (plain ones are read
    as they are)."""
    if source.kind == "linear":
        return _scaled(get(source.parts[0]), get(source.parts[1]), 0)
    if source.kind == "experts":
        return _scaled(get(source.parts[0]), get(source.parts[1]), 2)
    half = len(source.parts) // 2
    weights, scales = source.parts[:half], source.parts[half:]
    mats = [_scaled(get(w), get(s) if s else None, 0).T for w, s in zip(weights, scales, strict=True)]
    if "gate_proj" in weights[0]:  # gate_up [E, D, 2F] = cat(gate_e.T, up_e.T): gates first, then ups
        n = len(mats) // 2
        return torch.stack([torch.cat((mats[e], mats[n + e]), dim=-1) for e in range(n)])
    return torch.stack(mats)  # down [E, F, D]
