"""Parameter counts, weight memory and KV-cache size of a config, computed analytically (spec §5.2).

Active parameters count what one token touches: attention, norms, router, the shared expert,
top-k routed experts, and both the embedding row source and the LM head (Meta's "17B" counts
both). Counts agree with `numel()` of a built model (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

from herd.config import ModelConfig, TextConfig, VisionConfig

BYTES_PER_PARAM = {"bf16": 2.0, "fp8": 1.0, "int4": 0.5}


@dataclass(frozen=True)
class Counts:
    text: int
    vision: int
    active: int

    @property
    def total(self) -> int:
        return self.text + self.vision


def text_counts(c: TextConfig) -> tuple[int, int]:
    """(total, active) parameters of the text decoder."""
    D = c.dim
    attention = D * c.n_heads * c.head_dim * 2 + D * c.n_kv_heads * c.head_dim * 2 + 2 * D
    swiglu = 3 * D * c.expert_dim
    total = active = 2 * c.vocab_size * D + D
    for layer in range(c.n_layers):
        if c.is_moe_layer(layer):
            total += attention + (c.n_experts + 1) * swiglu + D * c.n_experts
            active += attention + (c.top_k + 1) * swiglu + D * c.n_experts
        else:
            total += attention + 3 * D * c.ffn_dim
            active += attention + 3 * D * c.ffn_dim
    return total, active


def vision_count(v: VisionConfig, text_dim: int) -> int:
    """Encoder, pixel-shuffle adapter and the projector into the text width."""
    tokens = (v.image_size // v.patch_size) ** 2 + 1  # patches plus the class token
    embed = 3 * v.patch_size**2 * v.dim + v.dim + tokens * v.dim + 4 * v.dim
    layer = 4 * v.dim * v.dim + 4 * v.dim + 2 * v.dim * v.mlp_dim + v.mlp_dim + v.dim + 4 * v.dim
    shuffled = int(v.dim / v.pixel_shuffle_ratio**2)
    adapter = shuffled * v.adapter_dim + v.adapter_dim * v.output_dim
    return embed + v.n_layers * layer + adapter + v.output_dim * text_dim


def counts(config: ModelConfig) -> Counts:
    total, active = text_counts(config.text)
    vision = vision_count(config.vision, config.text.dim) if config.vision else 0
    return Counts(text=total, vision=vision, active=active)


def kv_bytes_per_token(c: TextConfig, bytes_per_value: int = 2) -> tuple[int, int, int]:
    """(bytes per token over the global layers, bytes per token per chunked layer, chunked layer count)."""
    per_layer = 2 * c.n_kv_heads * c.head_dim * bytes_per_value
    chunked = sum(1 for layer in range(c.n_layers) if c.chunk_size(layer))
    return per_layer * (c.n_layers - chunked), per_layer, chunked


def kv_cache_bytes(c: TextConfig, context: int, bytes_per_value: int = 2) -> int:
    """KV-cache bytes for one sequence of `context` tokens: chunked layers keep one chunk at most."""
    global_per_token, per_layer, chunked = kv_bytes_per_token(c, bytes_per_value)
    window = min(context, c.attention_chunk_size or context)
    return global_per_token * context + chunked * per_layer * window
