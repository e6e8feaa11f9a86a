"""Causal and chunked-causal attention over a contiguous run of positions, without S×S masks.

- Global layers: plain causal `scaled_dot_product_attention` (flash kernels, no mask tensor).
- Chunked layers: query i sees key j iff j <= i and floor(i/C) == floor(j/C), chunks aligned to
  absolute position 0 (spec §1.7). The sequence is cut at absolute chunk boundaries and the
  aligned part is folded into the batch as [B·n, H, C, K], so each chunk runs causal SDPA alone.
- GQA goes through SDPA's `enable_gqa`, so K/V heads are never materialised H times.
- Packed training documents (`document_masks`): one boolean mask per batch row keeps attention inside each
  document (and inside its chunks, counted from the document's start), through SDPA's masked kernels.
- A run that continues a cached past (`attention_with_past`) attends to the past without a mask
  and to itself causally, as two flash-attention passes merged by their log-sum-exp, so memory
  stays linear in the context however long it is.

Shapes: B batch, H query heads, G kv heads, S sequence, K head dim, C chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sdpa_causal(q_BHSK: torch.Tensor, k_BGSK: torch.Tensor, v_BGSK: torch.Tensor) -> torch.Tensor:
    gqa = q_BHSK.shape[1] != k_BGSK.shape[1]
    return F.scaled_dot_product_attention(q_BHSK, k_BGSK, v_BGSK, is_causal=True, enable_gqa=gqa)


def causal_attention(
    q_BHSK: torch.Tensor,
    k_BGSK: torch.Tensor,
    v_BGSK: torch.Tensor,
    *,
    start_pos: int = 0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Self-attention of a run of S tokens at absolute positions start_pos … start_pos+S-1.

    With `chunk_size`, attention stays inside absolute chunks; otherwise it is global causal.
    Scale is 1/sqrt(K).
    """
    S = q_BHSK.shape[2]
    if chunk_size is None:
        return _sdpa_causal(q_BHSK, k_BGSK, v_BGSK)
    # The first piece runs from start_pos to the next chunk boundary; the rest is chunk-aligned.
    head = min(S, chunk_size - start_pos % chunk_size)
    if head == S:
        return _sdpa_causal(q_BHSK, k_BGSK, v_BGSK)
    out_head = _sdpa_causal(q_BHSK[:, :, :head], k_BGSK[:, :, :head], v_BGSK[:, :, :head])
    out_tail = _chunked_aligned(q_BHSK[:, :, head:], k_BGSK[:, :, head:], v_BGSK[:, :, head:], chunk_size)
    return torch.cat((out_head, out_tail), dim=2)


def _chunked_aligned(q_BHSK: torch.Tensor, k_BGSK: torch.Tensor, v_BGSK: torch.Tensor, C: int) -> torch.Tensor:
    B, S = q_BHSK.shape[0], q_BHSK.shape[2]
    n = -(-S // C)
    pad = n * C - S
    if pad:  # right padding: padded keys come after every real query, so causality hides them
        q_BHSK, k_BGSK, v_BGSK = (F.pad(t, (0, 0, 0, pad)) for t in (q_BHSK, k_BGSK, v_BGSK))

    def fold(t: torch.Tensor) -> torch.Tensor:  # [B, X, n·C, K] -> [B·n, X, C, K]
        return t.unflatten(2, (n, C)).transpose(1, 2).flatten(0, 1)

    out = _sdpa_causal(fold(q_BHSK), fold(k_BGSK), fold(v_BGSK))
    return out.unflatten(0, (B, n)).transpose(1, 2).flatten(2, 3)[:, :, :S]


def document_masks(documents_BS: torch.Tensor, positions_BS: torch.Tensor,
                   chunk_size: int | None) -> torch.Tensor:
    """Which keys each query may see [B, S, S] when packed documents must not attend to each other: causal,
    inside its document, and with `chunk_size` inside its chunk (chunks counted from the document's start)."""
    S = documents_BS.shape[1]
    allowed_BSS = documents_BS[:, :, None] == documents_BS[:, None, :]
    allowed_BSS &= torch.ones(S, S, dtype=torch.bool, device=documents_BS.device).tril()
    if chunk_size is not None:
        chunk_BS = torch.div(positions_BS, chunk_size, rounding_mode="floor")
        allowed_BSS &= chunk_BS[:, :, None] == chunk_BS[:, None, :]
    return allowed_BSS


def masked_attention(q_BHSK: torch.Tensor, k_BGSK: torch.Tensor, v_BGSK: torch.Tensor,
                     allowed_BSS: torch.Tensor) -> torch.Tensor:
    """Self-attention where query i sees key j iff allowed_BSS[:, i, j] (scale 1/sqrt(K))."""
    gqa = q_BHSK.shape[1] != k_BGSK.shape[1]
    return F.scaled_dot_product_attention(q_BHSK, k_BGSK, v_BGSK, attn_mask=allowed_BSS[:, None], enable_gqa=gqa)


_flash_with_lse = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def attention_with_past(
    q_BHSK: torch.Tensor,
    k_past_BGLK: torch.Tensor,
    v_past_BGLK: torch.Tensor,
    k_BGSK: torch.Tensor,
    v_BGSK: torch.Tensor,
) -> torch.Tensor:
    """S new queries attend to all L cached keys and causally to their own S keys (scale 1/sqrt(K))."""
    B, H, S, K = q_BHSK.shape
    G, L = k_past_BGLK.shape[1], k_past_BGLK.shape[2]
    if L == 0:
        return _sdpa_causal(q_BHSK, k_BGSK, v_BGSK)
    if _flash_with_lse is None or q_BHSK.device.type != "cpu":  # elsewhere: one masked pass
        keys, values = torch.cat((k_past_BGLK, k_BGSK), dim=2), torch.cat((v_past_BGLK, v_BGSK), dim=2)
        allowed = torch.ones(S, L + S, dtype=torch.bool, device=q_BHSK.device).tril(diagonal=L)
        return F.scaled_dot_product_attention(q_BHSK, keys, values, attn_mask=allowed, enable_gqa=H != G)
    r = H // G
    # The past needs no mask, so the r query heads sharing a kv head can ride as extra query rows.
    out_past, lse_past = _flash_with_lse(q_BHSK.reshape(B, G, r * S, K), k_past_BGLK, v_past_BGLK, 0.0, False)
    k_BHSK, v_BHSK = (t.repeat_interleave(r, dim=1) if r > 1 else t for t in (k_BGSK, v_BGSK))
    out_self, lse_self = _flash_with_lse(q_BHSK.contiguous(), k_BHSK, v_BHSK, 0.0, True)
    lse_past = lse_past.reshape(B, H, S, 1)
    lse_self = lse_self.reshape(B, H, S, 1)
    top = torch.maximum(lse_past, lse_self)
    w_past, w_self = torch.exp(lse_past - top), torch.exp(lse_self - top)
    out = out_past.reshape(B, H, S, K).float() * w_past + out_self.float() * w_self
    return (out / (w_past + w_self)).to(q_BHSK.dtype)
