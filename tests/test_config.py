"""Presets, parameter counts and config reading (HF config.json, Meta params.json) against spec §5."""

import dataclasses
import json

import pytest
import torch
from hf_oracle import DENSE_LIKE, MAVERICK_LIKE, SCOUT_LIKE, hf_text_config
from transformers import Llama4Config

import herd
from herd.checkpoint import read_config
from herd.config import PRESETS, ConfigError, ModelConfig, RopeScaling, TextConfig, VisionConfig, preset
from herd.formats import hf, meta
from herd.info import counts, text_counts

SCOUT, MAVERICK, GUARD = "llama4-scout-17b-16e", "llama4-maverick-17b-128e", "llama-guard-4-12b"
LADDER = {"herd-10m": 10e6, "herd-50m": 50e6, "herd-150m": 150e6, "herd-500m": 500e6, "herd-1.5b": 1.5e9}
TINY = {"scout_like": SCOUT_LIKE, "maverick_like": MAVERICK_LIKE, "dense_like": DENSE_LIKE}
ALL_LAYERS = range(48)


def architecture(text: TextConfig) -> dict:
    """Every TextConfig field except the context length, which differs between Instruct and base configs."""
    fields = dataclasses.asdict(text)
    del fields["max_seq_len"]
    return fields


# ---------------------------------------------------------------------------------------------
# Presets.


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset(name):
    config = preset(name)
    assert config is PRESETS[name]
    assert isinstance(config, ModelConfig) and isinstance(config.text, TextConfig)
    t = config.text
    assert t.dim == t.n_heads * t.head_dim
    assert t.n_heads % t.n_kv_heads == 0


def test_unknown_preset_lists_the_names():
    with pytest.raises(ConfigError, match="llama4-scuot") as info:
        preset("llama4-scuot")
    for name in PRESETS:
        assert name in str(info.value)


def test_scout_preset():
    c = preset(SCOUT).text
    assert c.rope_scaling == RopeScaling(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                                         original_max_position_embeddings=8192)
    assert c.use_qk_norm
    assert c.n_experts == 16 and c.top_k == 1 and c.expert_dim == 8192
    assert [i for i in ALL_LAYERS if c.is_moe_layer(i)] == list(ALL_LAYERS)
    assert [i for i in ALL_LAYERS if c.is_nope_layer(i)] == list(range(3, 48, 4))
    assert [i for i in ALL_LAYERS if c.chunk_size(i) is None] == list(range(3, 48, 4))
    assert {c.chunk_size(i) for i in ALL_LAYERS if not c.is_nope_layer(i)} == {8192}
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size) == (5120, 48, 40, 8, 128, 202048)
    assert c.rope_theta == 500000.0 and c.norm_eps == 1e-5
    assert (c.attn_temperature_tuning, c.floor_scale, c.attn_scale) == (True, 8192.0, 0.1)
    assert (c.bos_id, c.eos_ids, c.pad_id) == (200000, (200001, 200007, 200008), 200018)
    assert preset(SCOUT).vision == VisionConfig()


def test_maverick_preset():
    c = preset(MAVERICK).text
    assert not c.use_qk_norm
    assert c.rope_scaling is None
    assert c.n_experts == 128 and c.top_k == 1 and c.moe_layer_step == 2 and c.expert_dim == 8192
    assert [i for i in ALL_LAYERS if c.is_moe_layer(i)] == list(range(1, 48, 2))
    assert c.ffn_dim == 16384  # the dense (even) layers
    assert [i for i in ALL_LAYERS if c.is_nope_layer(i)] == list(range(3, 48, 4))
    assert c.attention_chunk_size == 8192
    assert preset(MAVERICK).vision == VisionConfig()


def test_guard_preset():
    c = preset(GUARD).text
    assert c.n_experts == 0 and not any(c.is_moe_layer(i) for i in ALL_LAYERS)
    assert c.ffn_dim == 8192
    assert c.nope_layer_interval is None and not any(c.is_nope_layer(i) for i in ALL_LAYERS)
    assert c.attention_chunk_size is None and all(c.chunk_size(i) is None for i in ALL_LAYERS)
    assert preset(GUARD).vision == VisionConfig()


def test_vision_preset_values():
    v = VisionConfig()
    assert (v.image_size, v.patch_size, v.dim, v.n_layers, v.n_heads, v.mlp_dim) == (336, 14, 1408, 34, 16, 5632)
    assert (v.pixel_shuffle_ratio, v.adapter_dim, v.output_dim, v.rope_theta) == (0.5, 4096, 4096, 10000.0)


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"n_heads": 40, "n_kv_heads": 7}, "n_kv_heads"),
        ({"head_dim": 127}, "head_dim"),
        ({"top_k": 17}, "top_k"),
        ({"top_k": 0}, "top_k"),
        ({"moe_layer_step": 0}, "moe_layer_step"),
    ],
)
def test_text_config_validation(changes, word):
    with pytest.raises(ConfigError, match=word):
        TextConfig().replace(**changes)


# ---------------------------------------------------------------------------------------------
# Parameter counts (spec §5.2).


@pytest.mark.parametrize(
    ("name", "total", "active"),
    [
        (SCOUT, 108_641_793_536, 17_172_894_720),
        (MAVERICK, 401_583_781_376, 17_184_691_200),
        (GUARD, 12_001_097_216, 11_129_164_800),
    ],
)
def test_released_model_counts(name, total, active):
    c = counts(preset(name))
    assert c.total == total
    assert c.active == active
    assert c.vision == 871_932_416


def test_released_text_counts():
    assert counts(preset(SCOUT)).text == 107_769_861_120
    assert counts(preset(MAVERICK)).text == 400_711_848_960
    assert counts(preset(GUARD)).text == 11_129_164_800


def _numel(text: TextConfig) -> int:
    with torch.device("meta"):
        model = herd.Transformer(text)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "config",
    [SCOUT_LIKE, MAVERICK_LIKE, DENSE_LIKE, *(preset(n).text for n in PRESETS)],
    ids=[*TINY, *PRESETS],
)
def test_analytic_count_matches_built_model(config):
    assert text_counts(config)[0] == _numel(config)


def test_active_count_of_tiny_moe():
    """Active = total minus the routed experts a token does not visit (top-k of E)."""
    c = SCOUT_LIKE
    total, active = text_counts(c)
    moe_layers = sum(1 for i in range(c.n_layers) if c.is_moe_layer(i))
    skipped = moe_layers * (c.n_experts - c.top_k) * 3 * c.dim * c.expert_dim
    assert active == total - skipped
    assert text_counts(DENSE_LIKE)[0] == text_counts(DENSE_LIKE)[1]


@pytest.mark.parametrize("name", LADDER)
def test_ladder_sizes(name):
    total = counts(preset(name)).total
    assert 0.75 * LADDER[name] <= total <= 1.25 * LADDER[name], f"{name}: {total:,}"


def test_ladder_grows():
    totals = [counts(preset(n)).total for n in LADDER]
    assert totals == sorted(totals)


# ---------------------------------------------------------------------------------------------
# HF config.json: the Hub configs as transformers 4.51 wrote them.

_HUB_VISION = {
    "_attn_implementation_autoset": True,
    "attention_dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 1408,
    "image_size": 336,
    "initializer_range": 0.02,
    "intermediate_layers_indices": [-1],
    "intermediate_size": 5632,
    "model_type": "llama4_vision_model",
    "multi_modal_projector_bias": False,
    "norm_eps": 1e-05,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 34,
    "patch_size": 14,
    "pixel_shuffle_ratio": 0.5,
    "projector_dropout": 0.0,
    "projector_input_dim": 4096,
    "projector_output_dim": 4096,
    "rope_theta": 10000,
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "default",
    "vision_output_dim": 4096,
}


def hub_config(variant: str) -> dict:
    """A Hub-style `Llama4ForConditionalGeneration` config.json (transformers 4.51, spec §5.1)."""
    scout = variant == "scout"
    text = {
        "_attn_implementation_autoset": True,
        "attention_bias": False,
        "attention_chunk_size": 8192,
        "attention_dropout": 0.0,
        "attn_scale": 0.1,
        "attn_temperature_tuning": 4,
        "bos_token_id": 200000,
        "cache_implementation": "hybrid",
        "eos_token_id": [200001, 200007, 200008],
        "floor_scale": 8192,
        "for_llm_compressor": False,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 5120,
        "initializer_range": 0.02,
        "interleave_moe_layer_step": 1 if scout else 2,
        "intermediate_size": 8192,
        "intermediate_size_mlp": 16384,
        "max_position_embeddings": 10485760 if scout else 1048576,
        "model_type": "llama4_text",
        "moe_layers": list(range(48)) if scout else list(range(1, 48, 2)),
        "no_rope_layers": [int((i + 1) % 4 != 0) for i in range(48)],
        "num_attention_heads": 40,
        "num_experts_per_tok": 1,
        "num_hidden_layers": 48,
        "num_key_value_heads": 8,
        "num_local_experts": 16 if scout else 128,
        "output_router_logits": False,
        "pad_token_id": 200018,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 16.0,
            "high_freq_factor": 1.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        } if scout else None,
        "rope_theta": 500000.0,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_qk_norm": scout,
        "vocab_size": 202048,
    }
    if variant == "guard":  # transformers' converter, dense branch (spec §5.3; LLAMA_GUARD_4.md): Scout pruned
        text.update({"num_local_experts": 0, "moe_layers": [], "interleave_moe_layer_step": 0,
                     "intermediate_size_mlp": 8192, "no_rope_layers": [1] * 48, "no_rope_layer_interval": 80,
                     "attention_chunk_size": None, "cache_implementation": "static", "max_position_embeddings": 8192,
                     "use_qk_norm": True, "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0,
                                                          "low_freq_factor": 1.0,
                                                          "original_max_position_embeddings": 8192,
                                                          "rope_type": "llama3"}})
    return {
        "architectures": ["Llama4ForConditionalGeneration"],
        "boi_token_index": 200080,
        "eoi_token_index": 200081,
        "image_token_index": 200092,
        "model_type": "llama4",
        "text_config": text,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0.dev0",
        "vision_config": dict(_HUB_VISION),
    }


@pytest.mark.parametrize(("variant", "name"), [("scout", SCOUT), ("maverick", MAVERICK)])
def test_hub_config_matches_preset(variant, name):
    got = hf.model_config_from_hf(hub_config(variant))
    want = preset(name)
    assert architecture(got.text) == architecture(want.text)
    assert got.vision == want.vision
    assert got.text.max_seq_len == hub_config(variant)["text_config"]["max_position_embeddings"]


def test_llama_guard_4_hub_config_is_the_preset_exactly(tmp_path):
    """Llama Guard 4's config.json as transformers' converter writes it for the dense model (no weights): every
    field of the text and vision configs is the `llama-guard-4-12b` preset's."""
    (tmp_path / "config.json").write_text(json.dumps(hub_config("guard"), indent=2))
    assert read_config(tmp_path) == preset(GUARD)


@pytest.mark.parametrize("variant", ["scout", "maverick"])
def test_hub_config_from_a_file(tmp_path, variant):
    (tmp_path / "config.json").write_text(json.dumps(hub_config(variant), indent=2))
    assert read_config(tmp_path) == hf.model_config_from_hf(hub_config(variant))


def test_hub_config_with_empty_no_rope_layers():
    """Some exports leave `no_rope_layers` empty: the interval (default 4) decides."""
    raw = hub_config("scout")
    raw["text_config"]["no_rope_layers"] = []
    assert architecture(hf.model_config_from_hf(raw).text) == architecture(preset(SCOUT).text)


def test_hub_config_image_token_index_is_the_patch_token():
    raw = hub_config("scout")
    raw["image_token_index"] = 5
    assert hf.model_config_from_hf(raw).vision.patch_token_id == 5


def test_hub_config_without_vision():
    raw = hub_config("scout")
    del raw["vision_config"]
    assert hf.model_config_from_hf(raw).vision is None


@pytest.mark.parametrize(
    ("section", "key", "value", "word"),
    [
        ("text_config", "moe_layers", [0, 2, 5], "moe_layers"),
        ("text_config", "no_rope_layers", [1, 0] * 24, None),  # NoPE every 2nd layer: regular, accepted
        ("vision_config", "vision_output_dim", 7680, "vision_output_dim"),
        ("vision_config", "hidden_act", "silu", "hidden_act"),
        (None, "tie_word_embeddings", True, "tie_word_embeddings"),
    ],
)
def test_hub_config_checked_values(section, key, value, word):
    raw = hub_config("scout")
    (raw[section] if section else raw)[key] = value
    if word is None:
        assert hf.model_config_from_hf(raw).text.nope_layer_interval == 2
        return
    with pytest.raises(ConfigError, match=word):
        hf.model_config_from_hf(raw)


# ---------------------------------------------------------------------------------------------
# HF config.json as transformers 5 writes it.


@pytest.mark.parametrize("name", TINY)
def test_transformers_text_config_reads_back(name, tmp_path):
    """`Llama4TextConfig` built from a herd config (by hand, in hf_oracle) reads back to that config."""
    c = TINY[name]
    hf_config = hf_text_config(c)
    assert hf.text_config_from_hf(hf_config.to_dict()) == c
    hf_config.save_pretrained(tmp_path)  # the config.json that Llama4ForCausalLM.save_pretrained writes
    assert read_config(tmp_path) == ModelConfig(text=c)


def test_transformers_default_text_config():
    """transformers' own defaults are a Scout-shaped text model without rope scaling."""
    from transformers import Llama4TextConfig

    got = hf.text_config_from_hf(Llama4TextConfig().to_dict())
    want = preset(SCOUT).text.replace(rope_scaling=None)
    skip = {"max_seq_len", "bos_id", "eos_ids", "pad_id"}  # transformers defaults: 131072, 1, 2, None
    assert {k: v for k, v in dataclasses.asdict(got).items() if k not in skip} == {
        k: v for k, v in dataclasses.asdict(want).items() if k not in skip
    }


@pytest.mark.parametrize("name", ["scout_like", "maverick_like"])
def test_transformers_multimodal_config_reads_back(name):
    c = TINY[name]
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, image_size=28,
                  patch_size=14, projector_input_dim=64, projector_output_dim=64, vision_output_dim=64,
                  pixel_shuffle_ratio=0.5)
    raw = Llama4Config(text_config=hf_text_config(c).to_dict(), vision_config=vision).to_dict()
    got = hf.model_config_from_hf(raw)
    assert got.text == c
    assert got.vision == VisionConfig(image_size=28, patch_size=14, dim=32, n_layers=1, n_heads=2, mlp_dim=128,
                                      adapter_dim=64, output_dim=64)


# ---------------------------------------------------------------------------------------------
# herd's writer round-trips through herd's reader.


@pytest.mark.parametrize(
    "config", [*TINY.values(), *(preset(n).text for n in PRESETS)], ids=[*TINY, *PRESETS]
)
def test_text_config_round_trip(config):
    written = hf.text_config_to_hf(config, "float32")
    assert json.loads(json.dumps(written)) == written  # plain JSON
    assert hf.text_config_from_hf(written) == config


def test_dense_round_trip_is_dense():
    written = hf.text_config_to_hf(DENSE_LIKE, "float32")
    assert written["num_local_experts"] == 0 and written["moe_layers"] == []
    assert written["attention_chunk_size"] is None and all(written["no_rope_layers"])
    back = hf.text_config_from_hf(written)
    assert back.n_experts == 0 and back.nope_layer_interval is None and back.attention_chunk_size is None


# ---------------------------------------------------------------------------------------------
# Meta params.json.


def meta_hub_params(variant: str) -> dict:
    """A released-style params.json (spec §5.1: ffn_exp 4, multiplier 1.2, multiple_of 2048)."""
    scout = variant == "scout"
    params = {
        "dim": 5120,
        "n_layers": 48,
        "n_heads": 40,
        "n_kv_heads": 8,
        "vocab_size": 202048,
        "ffn_dim_multiplier": 1.2,
        "ffn_exp": 4.0,
        "multiple_of": 2048,
        "norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "moe_args": {
            "num_experts": 16 if scout else 128,
            "capacity_factor": 1.0,
            "auto_scale_F": True,
            "top_k": 1,
            "interleave_moe_layer_step": 1 if scout else 2,
        },
        "vision_args": {
            "image_size": {"height": 336, "width": 336},
            "patch_size": {"height": 14, "width": 14},
            "dim": 1408,
            "n_layers": 34,
            "n_heads": 16,
            "mlp_ratio": 4.0,
            "output_dim": 4096,
            "pixel_shuffle_ratio": 0.5,
        },
        "nope_layer_interval": 4,
        "use_qk_norm": scout,
        "attention_chunk_size": 8192,
        "attn_temperature_tuning": True,
    }
    if scout:
        params["use_scaled_rope"] = True
    return params


def test_meta_scout_params():
    config = meta.model_config_from_params(meta_hub_params("scout"))
    t = config.text
    assert (t.expert_dim, t.ffn_dim, t.head_dim) == (8192, 16384, 128)
    assert t.rope_scaling == RopeScaling(16.0, 1.0, 1.0, 8192)
    assert t.n_experts == 16 and t.moe_layer_step == 1 and t.use_qk_norm
    assert architecture(t) == architecture(preset(SCOUT).text)
    assert config.vision == preset(SCOUT).vision


def test_meta_maverick_params():
    config = meta.model_config_from_params(meta_hub_params("maverick"))
    t = config.text
    assert (t.expert_dim, t.ffn_dim, t.head_dim) == (8192, 16384, 128)
    assert t.n_experts == 128 and t.moe_layer_step == 2
    assert t.rope_scaling is None and not t.use_qk_norm
    assert architecture(t) == architecture(preset(MAVERICK).text)
    assert config.vision == preset(MAVERICK).vision


def test_meta_params_explicit_rope_factors():
    params = meta_hub_params("scout") | {"rope_scaling_factor": 8.0, "rope_high_freq_factor": 4.0}
    assert meta.model_config_from_params(params).text.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)


def test_meta_params_nested_under_model(tmp_path):
    (tmp_path / "params.json").write_text(json.dumps({"model": meta_hub_params("scout")}))
    assert read_config(tmp_path) == meta.model_config_from_params(meta_hub_params("scout"))


def test_meta_dense_params():
    """No moe_args: a dense model (the Llama Guard 4 branch of HF's converter)."""
    params = meta_hub_params("scout")
    del params["moe_args"]
    params.update(nope_layer_interval=None, attention_chunk_size=None)
    t = meta.model_config_from_params(params).text
    assert t.n_experts == 0 and t.ffn_dim == 16384 and not any(t.is_moe_layer(i) for i in ALL_LAYERS)
    assert t.nope_layer_interval is None and t.attention_chunk_size is None


def test_meta_vocab_minus_one_means_the_tokenizer():
    params = meta_hub_params("scout") | {"vocab_size": -1}
    assert meta.model_config_from_params(params).text.vocab_size == 202048
