"""The KV cache, allocated once per request batch (spec §1.7, §8).

- Global (NoPE) layers keep every position: a [B, G, L, K] buffer indexed by absolute position.
- Chunked layers keep only the current chunk: a ring of C slots, position p in slot p mod C.
  Chunks are aligned to absolute position 0, so after position p the slots 0 … p mod C hold
  exactly the chunk of p; higher slots hold the previous chunk and are masked out. Their memory
  is B·G·C·K however long the context grows.
- Prefill writes one row at a time, in pieces of any size (the engine picks it); decode writes
  every row at its own position, so prompts of different lengths batch together.
- Stored keys are post-RoPE and post-QK-norm.

Shapes: B batch, H heads, G kv heads, S new tokens, L cached positions, C chunk, K head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from herd.attention import attention_with_past, causal_attention
from herd.config import TextConfig


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=q.shape[1] != k.shape[1])


def _single_query(q_BH1K: torch.Tensor, k_BGLK: torch.Tensor, v_BGLK: torch.Tensor,
                  allowed_BL: torch.Tensor) -> torch.Tensor:
    """Attention of one query per row written as products and sums (fp32), which a compiled graph
    fuses into two passes over the cache. On CPU, SDPA's flash kernel costs ~130 µs per call for a
    single query, more than a layer's weights take to read."""
    B, H, _, K = q_BH1K.shape
    G = k_BGLK.shape[1]
    q_BGR1K = q_BH1K.view(B, G, H // G, 1, K).float() * K**-0.5
    s_BGRL = (q_BGR1K * k_BGLK[:, :, None].float()).sum(-1)
    s_BGRL = s_BGRL.masked_fill(~allowed_BL[:, None, None, :], float("-inf"))
    p_BGRL = torch.softmax(s_BGRL, dim=-1)
    out_BGRK = (p_BGRL[..., None] * v_BGLK[:, :, None].float()).sum(-2)
    return out_BGRK.reshape(B, H, 1, K).to(q_BH1K.dtype)


class LayerCache:
    def __init__(self, batch: int, length: int, config: TextConfig, chunk: int | None, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.chunk = chunk
        slots = length if chunk is None else min(chunk, length)
        shape = (batch, config.n_kv_heads, slots, config.head_dim)
        self.k_BGLK = torch.zeros(shape, dtype=dtype, device=device)
        self.v_BGLK = torch.zeros(shape, dtype=dtype, device=device)

    def prefill(self, row: int, start: int, q_1HSK: torch.Tensor, k_1GSK: torch.Tensor,
                v_1GSK: torch.Tensor) -> torch.Tensor:
        """Attend S new tokens of one row at positions start… to its cached past and themselves."""
        S, device = q_1HSK.shape[2], q_1HSK.device
        if self.chunk is None:
            past_k, past_v = self.k_BGLK[row : row + 1, :, :start], self.v_BGLK[row : row + 1, :, :start]
            out = attention_with_past(q_1HSK, past_k, past_v, k_1GSK, v_1GSK)
            self.k_BGLK[row, :, start : start + S] = k_1GSK[0]
            self.v_BGLK[row, :, start : start + S] = v_1GSK[0]
            return out

        C = self.chunk
        past = start % C  # positions of the current chunk already cached, in slots 0 … past-1
        if past == 0:
            out = causal_attention(q_1HSK, k_1GSK, v_1GSK, start_pos=start, chunk_size=C)
        else:  # the queries up to the next chunk boundary also see the cached start of their chunk
            head = min(S, C - past)
            past_k, past_v = self.k_BGLK[row : row + 1, :, :past], self.v_BGLK[row : row + 1, :, :past]
            out = attention_with_past(q_1HSK[:, :, :head], past_k, past_v, k_1GSK[:, :, :head], v_1GSK[:, :, :head])
            if head < S:
                tail = causal_attention(q_1HSK[:, :, head:], k_1GSK[:, :, head:], v_1GSK[:, :, head:],
                                        start_pos=start + head, chunk_size=C)
                out = torch.cat((out, tail), dim=2)
        n = min(S, C)  # only the newest C positions can still be seen
        slots = torch.arange(start + S - n, start + S, device=device) % C
        self.k_BGLK[row][:, slots] = k_1GSK[0, :, S - n :]
        self.v_BGLK[row][:, slots] = v_1GSK[0, :, S - n :]
        return out

    def decode(self, q_BH1K: torch.Tensor, k_BG1K: torch.Tensor, v_BG1K: torch.Tensor,
               pos_B: torch.Tensor) -> torch.Tensor:
        """One new token per row, row b at absolute position pos_B[b].

        A global layer attends to its slots up to the largest position; inside a compiled graph it
        attends over the whole buffer instead, so the shapes never depend on data. Slots past a
        row's position are masked either way.
        """
        rows = torch.arange(q_BH1K.shape[0], device=q_BH1K.device)
        slot_B = pos_B if self.chunk is None else pos_B % self.chunk
        self.k_BGLK[rows, :, slot_B] = k_BG1K[:, :, 0]
        self.v_BGLK[rows, :, slot_B] = v_BG1K[:, :, 0]
        compiling = torch.compiler.is_compiling()
        L = self.k_BGLK.shape[2] if self.chunk is not None or compiling else int(slot_B.max()) + 1
        allowed_BL = torch.arange(L, device=q_BH1K.device)[None, :] <= slot_B[:, None]
        if compiling:
            return _single_query(q_BH1K, self.k_BGLK, self.v_BGLK, allowed_BL)
        return _sdpa(q_BH1K, self.k_BGLK[:, :, :L], self.v_BGLK[:, :, :L], allowed_BL[:, None, None, :])


class KVCache:
    """Per-layer caches for `batch` sequences of up to `length` positions each."""

    def __init__(self, config: TextConfig, batch: int, length: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
        self.batch, self.length = batch, length
        self.layers = [
            LayerCache(batch, length, config, config.chunk_size(layer), dtype, torch.device(device))
            for layer in range(config.n_layers)
        ]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for c in self.layers for t in (c.k_BGLK, c.v_BGLK))
