"""HF transformers' Llama 4 as a CPU float32 oracle: tiny random models saved in HF's own format.

Test helper, not a test file. The HF config is written from a herd `TextConfig` by hand (not by
herd's own writer), so a mistake in herd's config reader cannot hide behind a matching writer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Llama4Config, Llama4ForCausalLM, Llama4ForConditionalGeneration, Llama4TextConfig

from herd.config import RopeScaling, TextConfig

# Tiny shapes: 4 layers (layer 3 NoPE), chunks of 8 and a temperature floor of 4 so a 40-token
# sequence crosses several chunk boundaries and the floor; scaled rope with an original context
# of 32 so the llama3 rule actually changes some frequencies.
_TINY = dict(vocab_size=256, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16, attention_chunk_size=8,
             floor_scale=4.0, ffn_dim=96, expert_dim=32, max_seq_len=4096)

SCOUT_LIKE = TextConfig(**_TINY, rope_scaling=RopeScaling(16.0, 1.0, 1.0, 32), use_qk_norm=True, n_experts=4,
                        moe_layer_step=1)
MAVERICK_LIKE = TextConfig(**_TINY, rope_scaling=None, use_qk_norm=False, n_experts=8, moe_layer_step=2)
DENSE_LIKE = TextConfig(**_TINY | {"attention_chunk_size": None}, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 32),
                        use_qk_norm=True, n_experts=0, nope_layer_interval=None)


# A 56-pixel tile of 14-pixel patches: 16 patches, 4 tokens per tile after the pixel shuffle.
TINY_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                   image_size=56, patch_size=14, projector_input_dim=48, projector_output_dim=48,
                   vision_output_dim=48, pixel_shuffle_ratio=0.5, norm_eps=1e-5)
PATCH_ID, BOI_ID, EOI_ID = 250, 251, 252  # inside the tiny vocabulary


def hf_text_config(c: TextConfig) -> Llama4TextConfig:
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        s = c.rope_scaling
        rope = {"rope_type": "llama3", "rope_theta": c.rope_theta, "factor": s.factor,
                "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings}
    dense = c.n_experts == 0
    return Llama4TextConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.expert_dim, intermediate_size_mlp=c.ffn_dim,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
        head_dim=c.head_dim, num_local_experts=c.n_experts, num_experts_per_tok=c.top_k,
        interleave_moe_layer_step=0 if dense else c.moe_layer_step,
        moe_layers=[] if dense else None, use_qk_norm=c.use_qk_norm, rope_parameters=rope,
        attention_chunk_size=c.attention_chunk_size, floor_scale=int(c.floor_scale), attn_scale=c.attn_scale,
        attn_temperature_tuning=c.attn_temperature_tuning,
        no_rope_layer_interval=c.nope_layer_interval or 2 * c.n_layers, rms_norm_eps=c.norm_eps,
        max_position_embeddings=c.max_seq_len, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that every part of the model matters; norms around 1, not exactly 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                std = 0.2 if "router" in name else 0.08
                p.copy_(std * torch.randn(p.shape, generator=g))


def causal_lm(c: TextConfig, seed: int = 0) -> Llama4ForCausalLM:
    model = Llama4ForCausalLM(hf_text_config(c)).eval()
    randomize_(model, seed)
    return model


def conditional_generation(c: TextConfig, seed: int = 0) -> Llama4ForConditionalGeneration:
    """The multimodal model with a tiny vision tower, to test the `language_model.` layout."""
    config = Llama4Config(text_config=hf_text_config(c).to_dict(), vision_config=TINY_VISION,
                          image_token_index=PATCH_ID, boi_token_index=BOI_ID, eoi_token_index=EOI_ID)
    model = Llama4ForConditionalGeneration(config).eval()
    randomize_(model, seed)
    return model


def hf_logits(model: torch.nn.Module, tokens_BS: torch.Tensor) -> torch.Tensor:
    # transformers 5.24's Llama4ForConditionalGeneration.forward fails without pixel values
    # (it reads `image_outputs` from a text-only output), so take its language model directly.
    model = getattr(model, "language_model", model)
    with torch.no_grad():
        return model(input_ids=tokens_BS).logits.float()


def hf_multimodal_logits(model: torch.nn.Module, tokens_BS: torch.Tensor, pixels_TCHW: torch.Tensor) -> torch.Tensor:
    """HF's own fusion, step by step: `Llama4ForConditionalGeneration.forward` in transformers 5.24
    fails while building its output (`image_outputs`), so its body is followed here with HF's modules:
    vision model -> projector -> masked_scatter into the embeddings at image_token_index -> text model."""
    with torch.no_grad():
        features = model.vision_model(pixels_TCHW).last_hidden_state
        projected = model.multi_modal_projector(features.reshape(-1, features.shape[-1]))
        embeds = model.language_model.get_input_embeddings()(tokens_BS)
        mask = (tokens_BS == model.config.image_token_index)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, projected.to(embeds.dtype))
        return model.language_model(inputs_embeds=embeds).logits.float()


def save_hf(model: torch.nn.Module, directory: Path, max_shard_size: str | None = None) -> Path:
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    return directory
