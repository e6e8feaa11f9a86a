"""Typed configuration for Llama 4 models and the registry of named presets.

- `TextConfig` describes the decoder (spec §1–2), `VisionConfig` the image encoder (spec §3),
  `ModelConfig` pairs them. All are frozen dataclasses; `replace()` derives variants.
- Layer patterns are stored as intervals, as both references define them: layer `l` is NoPE
  when `(l + 1) % nope_layer_interval == 0` and MoE when `(l + 1) % moe_layer_step == 0`.
- Presets: the released models (values from spec §5) and a ladder of small trainable sizes
  that keep the Llama 4 shape, plus a tiny `debug` flavour for tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from herd.tokenizer import compact_special_ids


class ConfigError(ValueError):
    """A configuration file or value that herd cannot honour; the message names the key."""


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3-style frequency scaling (spec §1.6). Scout: 16 / 1 / 1 / 8192."""

    factor: float = 16.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 1.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 202048
    dim: int = 5120
    n_layers: int = 48
    n_heads: int = 40
    n_kv_heads: int = 8
    head_dim: int = 128
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    # NoPE (global, no RoPE) every `nope_layer_interval` layers; None: every layer uses RoPE.
    nope_layer_interval: int | None = 4
    # RoPE layers attend within absolute chunks of this size; None: every layer is global.
    attention_chunk_size: int | None = 8192
    use_qk_norm: bool = True
    attn_temperature_tuning: bool = True
    floor_scale: float = 8192.0
    attn_scale: float = 0.1
    ffn_dim: int = 16384  # hidden size of dense SwiGLU layers
    n_experts: int = 16  # 0: no MoE layers (dense model)
    top_k: int = 1
    moe_layer_step: int = 1
    expert_dim: int = 8192  # hidden size of each routed expert and of the shared expert
    # A per-expert bias added to the router logits for expert *selection* only (auxiliary-loss-free
    # load balancing, learned in training); the released checkpoints have none.
    router_bias: bool = False
    max_seq_len: int = 10485760
    bos_id: int = 200000
    eos_ids: tuple[int, ...] = (200001, 200007, 200008)
    pad_id: int = 200018

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for RoPE")
        if self.n_experts and not 1 <= self.top_k <= self.n_experts:
            raise ConfigError(f"top_k ({self.top_k}) must be in [1, n_experts={self.n_experts}]")
        if self.n_experts and self.moe_layer_step < 1:
            raise ConfigError(f"moe_layer_step ({self.moe_layer_step}) must be >= 1 when n_experts > 0")

    def is_nope_layer(self, layer: int) -> bool:
        """Global layer without RoPE (and without QK-norm); the only ones with temperature tuning."""
        return self.nope_layer_interval is not None and (layer + 1) % self.nope_layer_interval == 0

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_experts > 0 and (layer + 1) % self.moe_layer_step == 0

    def chunk_size(self, layer: int) -> int | None:
        """The attention chunk of a layer, or None for global causal attention."""
        return None if self.is_nope_layer(layer) else self.attention_chunk_size

    def replace(self, **changes: object) -> TextConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 336  # tile side
    patch_size: int = 14
    dim: int = 1408
    n_layers: int = 34
    n_heads: int = 16
    mlp_dim: int = 5632
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    pixel_shuffle_ratio: float = 0.5
    adapter_dim: int = 4096  # HF projector_input_dim: the adapter's first linear output
    output_dim: int = 4096  # HF projector_output_dim / vision_output_dim: the adapter output
    max_tiles: int = 16
    patch_token_id: int = 200092  # <|patch|>: the prompt positions image features replace

    def __post_init__(self) -> None:
        shuffled = self.dim / self.pixel_shuffle_ratio**2
        if shuffled != self.mlp_dim:
            raise ConfigError(f"vision mlp_dim ({self.mlp_dim}) must equal the pixel-shuffled width dim/ratio² "
                              f"({shuffled:g}): the adapter's input and the encoder MLP share that size")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 4:
            raise ConfigError(f"vision head dim {self.dim}/{self.n_heads} must be a multiple of 4 for 2D RoPE")

    @property
    def tokens_per_tile(self) -> int:
        """`<|patch|>` tokens per image tile: its patches, after pixel shuffle."""
        return int((self.image_size // self.patch_size) ** 2 * self.pixel_shuffle_ratio**2)

    def replace(self, **changes: object) -> VisionConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelConfig:
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig | None = None

    def replace(self, **changes: object) -> ModelConfig:
        return dataclasses.replace(self, **changes)


_SCOUT_TEXT = TextConfig(rope_scaling=RopeScaling(), use_qk_norm=True, n_experts=16, moe_layer_step=1)

# Small trainable sizes keep the Llama 4 shape: MoE with a shared expert in every layer,
# NoPE every 4th layer, chunked attention. The 8192-entry vocabulary matches `herd tokenizer train`.
_LADDER = {
    # name: (dim, layers, heads, kv heads, experts, expert hidden)
    "herd-10m": (256, 4, 4, 2, 4, 384),
    "herd-50m": (512, 8, 8, 2, 4, 512),
    "herd-150m": (768, 12, 12, 4, 4, 896),
    "herd-500m": (1024, 16, 16, 4, 8, 1024),
    "herd-1.5b": (1536, 24, 24, 8, 8, 1280),
}


def _ladder(dim: int, layers: int, heads: int, kv: int, experts: int, hidden: int) -> ModelConfig:
    # Special ids of a compact tokenizer (`herd tokenizer train`): Llama 4's names after the BPE ids.
    ids = compact_special_ids(8192)
    text = TextConfig(
        vocab_size=8192, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv, head_dim=dim // heads,
        rope_scaling=None, use_qk_norm=True, n_experts=experts, moe_layer_step=1, expert_dim=hidden,
        ffn_dim=2 * hidden, attention_chunk_size=8192, max_seq_len=131072, bos_id=ids["<|begin_of_text|>"],
        eos_ids=(ids["<|end_of_text|>"], ids["<|eom|>"], ids["<|eot|>"]), pad_id=ids["<|finetune_right_pad|>"],
    )
    return ModelConfig(text=text)


PRESETS: dict[str, ModelConfig] = {
    "llama4-scout-17b-16e": ModelConfig(text=_SCOUT_TEXT, vision=VisionConfig()),
    "llama4-maverick-17b-128e": ModelConfig(
        text=TextConfig(
            rope_scaling=None, use_qk_norm=False, n_experts=128, moe_layer_step=2, max_seq_len=1048576
        ),
        vision=VisionConfig(),
    ),
    # Dense, all layers RoPE and global, shared expert kept as the FFN (spec §5.3).
    "llama-guard-4-12b": ModelConfig(
        text=TextConfig(
            rope_scaling=RopeScaling(), use_qk_norm=True, n_experts=0, ffn_dim=8192,
            nope_layer_interval=None, attention_chunk_size=None, max_seq_len=8192,
        ),
        vision=VisionConfig(),
    ),
    # Tiny but complete: MoE + shared expert, NoPE at layer 3, chunks of 32, temperature floor 16,
    # and a vision tower on 56-pixel tiles (4 tokens per tile).
    "debug": ModelConfig(
        text=TextConfig(
            dim=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16, rope_scaling=RopeScaling(),
            attention_chunk_size=32, floor_scale=16.0, ffn_dim=128, n_experts=4, expert_dim=64,
            moe_layer_step=1, max_seq_len=4096,
        ),
        vision=VisionConfig(image_size=56, patch_size=14, dim=32, n_layers=2, n_heads=2, mlp_dim=128,
                            adapter_dim=48, output_dim=48, max_tiles=4),
    ),
    **{name: _ladder(*shape) for name, shape in _LADDER.items()},
}


def preset(name: str) -> ModelConfig:
    """The named preset config; raises ConfigError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
