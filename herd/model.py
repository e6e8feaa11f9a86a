"""The Llama 4 text decoder, single-device plain PyTorch (spec §1–2).

- Pre-norm blocks: h = x + Attn(RMSNorm(x)); out = h + FFN(RMSNorm(h)); FFN is MoE or dense SwiGLU.
- GQA attention without biases; interleaved-pair RoPE with optional llama3 scaling.
- iRoPE: every `nope_layer_interval`-th layer is global with no RoPE; the others attend within
  absolute chunks of `attention_chunk_size` tokens.
- Weightless QK-norm after RoPE on RoPE layers (`use_qk_norm`); attention temperature tuning of q
  on NoPE layers: q·(1 + attn_scale·ln(floor((p+1)/floor_scale) + 1)).
- Untied embedding and LM head, no embedding scaling.
- Early fusion (multimodal checkpoints): projected image features from `herd.vision` replace the
  token embeddings at `<|patch|>` positions, in order; the decoder then treats them as tokens.

The model knows nothing of checkpoints, devices, compile or parallelism: build it on the meta
device and call `init_weights()`, or fill it with `herd.checkpoint.load`. Attention with a KV cache goes
through a view (`kv`, from `herd.infer.kv_pool`): the view says where the tokens sit and how their keys are
stored and attended, so prefill, decode and the fast steps that own their attention look the same here.

Shapes: B batch, S sequence, D model dim, H heads, G kv heads, K head dim, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from herd.attention import causal_attention, document_masks, masked_attention
from herd.config import TextConfig, VisionConfig
from herd.ffn import FeedForward, RMSNorm, rms_normalize
from herd.moe import MoE
from herd.rope import angles, apply_rope, inv_freq
from herd.vision import VisionModel

# Parameters that write into the residual stream (a block's last matrix): their init is scaled down with depth.
OUTPUT_PROJECTIONS = ("wo.weight", "w2.weight", "experts.w2")


class Attention(nn.Module):
    def __init__(self, config: TextConfig, layer: int) -> None:
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.use_rope = not c.is_nope_layer(layer)
        self.use_qk_norm = c.use_qk_norm and self.use_rope
        self.temperature_tuning = c.attn_temperature_tuning and not self.use_rope
        self.chunk_size = c.chunk_size(layer)
        self.layer = layer
        self.norm_eps = c.norm_eps
        self.wq = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)

    def project(self, x_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.wq(x_BSD), self.wk(x_BSD), self.wv(x_BSD)

    def forward(self, x_BSD: torch.Tensor, pos: Positions) -> torch.Tensor:
        B, S, _ = x_BSD.shape
        q, k, v = self.project(x_BSD)
        q_BSHK = q.reshape(B, S, self.n_heads, self.head_dim)
        k_BSGK = k.reshape(B, S, self.n_kv_heads, self.head_dim)
        v_BSGK = v.reshape(B, S, self.n_kv_heads, self.head_dim)
        if self.use_rope:
            q_BSHK = apply_rope(q_BSHK, pos.cos_BSK2, pos.sin_BSK2)
            k_BSGK = apply_rope(k_BSGK, pos.cos_BSK2, pos.sin_BSK2)
            if self.use_qk_norm:
                q_BSHK = rms_normalize(q_BSHK, self.norm_eps)
                k_BSGK = rms_normalize(k_BSGK, self.norm_eps)
        elif self.temperature_tuning:
            q_BSHK = (q_BSHK * pos.temperature_BS[:, :, None, None]).to(q_BSHK.dtype)
        q_BHSK, k_BGSK, v_BGSK = q_BSHK.transpose(1, 2), k_BSGK.transpose(1, 2), v_BSGK.transpose(1, 2)
        if pos.documents_BS is not None:
            out_BHSK = masked_attention(q_BHSK, k_BGSK, v_BGSK, pos.mask(self.chunk_size))
        elif pos.kv is None:
            out_BHSK = causal_attention(q_BHSK, k_BGSK, v_BGSK, start_pos=pos.start, chunk_size=self.chunk_size)
        else:
            out_BHSK = pos.kv.attend(self.layer, q_BHSK, k_BGSK, v_BGSK)
        return self.wo(out_BHSK.transpose(1, 2).reshape(B, S, -1))


class Block(nn.Module):
    def __init__(self, config: TextConfig, layer: int) -> None:
        super().__init__()
        c = config
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.attention = Attention(c, layer)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.is_moe = c.is_moe_layer(layer)
        self.feed_forward: nn.Module = (
            MoE(c.dim, c.expert_dim, c.n_experts, c.top_k, c.router_bias) if self.is_moe
            else FeedForward(c.dim, c.ffn_dim)
        )

    def forward(self, x_BSD: torch.Tensor, pos: Positions) -> torch.Tensor:
        h_BSD = x_BSD + self.attention(self.attention_norm(x_BSD), pos)
        return h_BSD + self.feed_forward(self.ffn_norm(h_BSD))


class KVView(Protocol):
    """Where a forward's tokens sit and how attention reaches the cached past (`herd.infer.kv_pool`)."""

    def positions_BS(self, S: int, device: torch.device) -> torch.Tensor: ...

    def attend(self, layer: int, q_BHSK: torch.Tensor, k_BGSK: torch.Tensor, v_BGSK: torch.Tensor) -> torch.Tensor:
        ...


class Positions:
    """What one forward shares across layers: absolute positions, RoPE angles, temperature
    scales, and how attention reaches its keys (causal over the tokens alone, or through `kv`)."""

    def __init__(self, config: TextConfig, freq_K2: torch.Tensor, positions_BS: torch.Tensor, start: int,
                 kv: KVView | None = None, documents_BS: torch.Tensor | None = None) -> None:
        self.positions_BS, self.start, self.kv, self.documents_BS = positions_BS, start, kv, documents_BS
        self.cos_BSK2, self.sin_BSK2 = angles(positions_BS, freq_K2)
        floors_BS = torch.floor((positions_BS.float() + 1.0) / config.floor_scale)
        self.temperature_BS = torch.log1p(floors_BS) * config.attn_scale + 1.0
        self._masks: dict[int | None, torch.Tensor] = {}

    def mask(self, chunk_size: int | None) -> torch.Tensor:
        """The packed documents' attention mask [B, S, S] for global (None) or chunked layers, built once."""
        if chunk_size not in self._masks:
            self._masks[chunk_size] = document_masks(self.documents_BS, self.positions_BS, chunk_size)
        return self._masks[chunk_size]


def document_positions(documents_BS: torch.Tensor) -> torch.Tensor:
    """Each token's position inside its document [B, S], documents being runs of equal ids along S."""
    S = documents_BS.shape[1]
    index_BS = torch.arange(S, device=documents_BS.device).expand_as(documents_BS)
    starts_BS = torch.ones_like(documents_BS, dtype=torch.bool)
    starts_BS[:, 1:] = documents_BS[:, 1:] != documents_BS[:, :-1]
    return index_BS - torch.where(starts_BS, index_BS, 0).cummax(dim=1).values


class Transformer(nn.Module):
    """The Llama 4 model: token ids [B, S] (and image features) in, logits [B, S, V] out.

    `vision` is built only for multimodal configs; `encode_images` turns pixel tiles into the
    features that `forward` places at the `<|patch|>` positions.
    """

    def __init__(self, config: TextConfig, vision: VisionConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionModel(vision, config.dim) if vision is not None else None
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.register_buffer("freq_K2", torch.empty(config.head_dim // 2), persistent=False)

    def set_moe_impl(self, impl: str) -> None:
        """Switch every MoE layer between "sparse" dispatch and the "dense" reference path."""
        if impl not in ("sparse", "dense"):
            raise ValueError(f"unknown MoE implementation {impl!r}; use 'sparse' or 'dense'")
        for module in self.modules():
            if isinstance(module, MoE):
                module.impl = impl

    def _apply(self, fn, recurse=True):
        # .to(dtype) would cast the RoPE table too; it is recomputed in fp32 on the new device.
        super()._apply(fn, recurse)
        self.init_buffers()
        return self

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute non-persistent buffers, e.g. after loading weights into a meta-device model."""
        c = self.config
        device = self.tok_embeddings.weight.device
        self.freq_K2 = inv_freq(c.head_dim, c.rope_theta, c.rope_scaling).to(device)
        if self.vision is not None:
            self.vision.init_buffers()

    def init_std(self, name: str, std: float = 0.02) -> float:
        """The standard initialisation of a text parameter: N(0, std), output projections std / sqrt(2L) (GPT-2),
        0 for norm gains (they start at 1)."""
        if name.endswith("norm.weight"):
            return 0.0
        return std / math.sqrt(2 * self.config.n_layers) if name.endswith(OUTPUT_PROJECTIONS) else std

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None,
                     stds: Mapping[str, float] | None = None) -> None:
        """Random initialisation, the one place weights are drawn: norm gains 1, router biases 0, every other text
        parameter N(0, σ) in parameter order, σ from `stds` by name (a parametrization's, e.g. MetaP's) or else
        `init_std`; the vision tower by its own rule."""
        for name, param in self.named_parameters():
            if name.startswith("vision."):
                continue
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, stds[name] if stds is not None else self.init_std(name, std), generator=generator)
        for module in self.modules():
            if isinstance(module, MoE) and module.router_bias is not None:
                module.router_bias.zero_()
        if self.vision is not None:
            self.vision.init_weights(std, generator)
        self.init_buffers()

    def encode_images(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """Projected features [F, D] for the tiles of several images, in prompt order (tiles
        row-major, thumbnail last, as `herd.image` lays them out)."""
        if self.vision is None:
            raise ValueError("this model has no vision tower (a text-only checkpoint, or loaded with text_only=True)")
        features_TND = self.vision(torch.cat(list(pixels), dim=0).to(self.tok_embeddings.weight.device))
        return features_TND.reshape(-1, features_TND.shape[-1])

    def embed(self, tokens_BS: torch.Tensor, image_features_FD: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings, with image features at the `<|patch|>` positions when given."""
        x_BSD = self.tok_embeddings(tokens_BS)
        if image_features_FD is None:
            return x_BSD
        patch_id = self.vision.config.patch_token_id if self.vision is not None else -1
        is_patch_BS = tokens_BS == patch_id
        n = int(is_patch_BS.sum())
        if n != image_features_FD.shape[0]:
            raise ValueError(f"the prompt has {n} <|patch|> tokens but the images give {image_features_FD.shape[0]} "
                             "features; each tile needs its exact token layout")
        return x_BSD.masked_scatter(is_patch_BS[..., None], image_features_FD.to(x_BSD.dtype))

    def forward(self, tokens_BS: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Logits [B, S, V]: the LM head over `hidden(tokens_BS, **kwargs)`."""
        return self.output(self.hidden(tokens_BS, **kwargs))

    def hidden(
        self,
        tokens_BS: torch.Tensor,
        *,
        start_pos: int = 0,
        last_only: bool = False,
        kv: KVView | None = None,
        image_features_FD: torch.Tensor | None = None,
        documents_BS: torch.Tensor | None = None,
        pixels: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The final normalized hidden states [B, S, D]; `last_only` keeps the last position.

        Without `kv` the tokens sit at absolute positions start_pos… and attend causally among themselves.
        With `kv` (a view of a KV cache) the view gives their positions and holds their past: prefill of one
        slot's tokens [1, S], or decode of one token per row [B, 1] (`herd.infer.kv_pool`).
        `image_features_FD` (from `encode_images`) fills the `<|patch|>` positions of `tokens_BS`; or `pixels`, the
        images' tiles, encoded here (inside the forward, where FSDP has gathered the tower).
        `documents_BS` (training on packed documents: runs of equal ids) keeps attention inside each document,
        and positions restart at each document's first token, so every document is seen as if alone.
        """
        S = tokens_BS.shape[1]
        device = tokens_BS.device
        if documents_BS is not None:
            if kv is not None or start_pos:
                raise ValueError("documents_BS is for training forwards, without a KV cache or start_pos")
            positions_BS = document_positions(documents_BS)
        elif kv is not None:
            positions_BS = kv.positions_BS(S, device)
        else:
            positions_BS = torch.arange(start_pos, start_pos + S, device=device)[None, :]
        pos = Positions(self.config, self.freq_K2, positions_BS, start_pos, kv, documents_BS)
        if pixels is not None and image_features_FD is None:
            image_features_FD = self.encode_images(pixels)
        x_BSD = self.embed(tokens_BS, image_features_FD)
        for block in self.layers:
            x_BSD = block(x_BSD, pos)
        if last_only:
            x_BSD = x_BSD[:, -1:]
        return self.norm(x_BSD)
