"""The KV slot pool: every sequence's keys and values, allocated once (spec §1.7, §8).

- S slots, each able to hold one sequence of up to `max_context` positions. A request takes a slot
  with `alloc()` and gives it back with `free()`; nothing is allocated per request after start-up.
- Global (NoPE) layers keep every position: [S, G, max_context, K], indexed by absolute position.
- Chunked layers keep only the current chunk: a ring of C slots, position p in ring slot p mod C.
  Chunks are aligned to absolute position 0, so after position p the ring slots 0 … p mod C hold
  exactly the chunk of p; higher ones hold the previous chunk and are masked out. Their memory is
  S·G·C·K however long the context grows.
- The model reaches the pool through a view, which also says where its tokens sit: `prefill(slot,
  start)` for a run of tokens of one slot, `decode(slots_B, positions_B)` for one token per row, row b
  in slot slots_B[b] at position positions_B[b]. Views write the new keys, then attend.
- A freed slot keeps its contents, so a later request with the same prefix can reuse them
  (`herd.infer.scheduler`); `alloc()` hands out the least recently freed slot first.
- Stored keys are post-RoPE and post-QK-norm.

Shapes: B rows, H heads, G kv heads, S new tokens, L cached positions, C chunk, K head dim.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from herd.attention import attention_with_past, causal_attention
from herd.config import TextConfig


class PoolFull(RuntimeError):
    """No free slot."""


def bucket(length: int, max_length: int) -> int:
    """A size for `length` positions, at most `max_length`: a power of two from 256 to 8192, then a multiple
    of 8192, so that similar lengths share one compiled graph while long contexts waste at most 8191 slots."""
    if length > 8192:
        return min(max_length, -(-length // 8192) * 8192)
    return min(max_length, max(256, 1 << (length - 1).bit_length()))


class LayerPool:
    """One layer's keys and values for every slot: [S, G, L, K], L = max_context (global) or C (ring)."""

    def __init__(self, slots: int, max_context: int, config: TextConfig, chunk: int | None, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.chunk = chunk
        length = max_context if chunk is None else min(chunk, max_context)
        shape = (slots, config.n_kv_heads, length, config.head_dim)
        self.k_SGLK = torch.zeros(shape, dtype=dtype, device=device)
        self.v_SGLK = torch.zeros(shape, dtype=dtype, device=device)

    def slot_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Where absolute positions live in this layer: the ring's slot, or the position itself."""
        return positions if self.chunk is None else positions % self.chunk

    def prefill(self, slot: int, start: int, q_1HSK: torch.Tensor, k_1GSK: torch.Tensor,
                v_1GSK: torch.Tensor) -> torch.Tensor:
        """Attend S new tokens of one slot at positions start… to its cached past and themselves."""
        S, device = q_1HSK.shape[2], q_1HSK.device
        if self.chunk is None:
            past_k, past_v = self.k_SGLK[slot : slot + 1, :, :start], self.v_SGLK[slot : slot + 1, :, :start]
            out = attention_with_past(q_1HSK, past_k, past_v, k_1GSK, v_1GSK)
            self.k_SGLK[slot, :, start : start + S] = k_1GSK[0]
            self.v_SGLK[slot, :, start : start + S] = v_1GSK[0]
            return out

        C = self.chunk
        past = start % C  # positions of the current chunk already cached, in ring slots 0 … past-1
        if past == 0:
            out = causal_attention(q_1HSK, k_1GSK, v_1GSK, start_pos=start, chunk_size=C)
        else:  # the queries up to the next chunk boundary also see the cached start of their chunk
            head = min(S, C - past)
            past_k, past_v = self.k_SGLK[slot : slot + 1, :, :past], self.v_SGLK[slot : slot + 1, :, :past]
            out = attention_with_past(q_1HSK[:, :, :head], past_k, past_v, k_1GSK[:, :, :head], v_1GSK[:, :, :head])
            if head < S:
                tail = causal_attention(q_1HSK[:, :, head:], k_1GSK[:, :, head:], v_1GSK[:, :, head:],
                                        start_pos=start + head, chunk_size=C)
                out = torch.cat((out, tail), dim=2)
        n = min(S, C)  # only the newest C positions can still be seen
        ring = torch.arange(start + S - n, start + S, device=device) % C
        self.k_SGLK[slot][:, ring] = k_1GSK[0, :, S - n :]
        self.v_SGLK[slot][:, ring] = v_1GSK[0, :, S - n :]
        return out

    def write(self, slots_B: torch.Tensor, positions_B: torch.Tensor, k_BG1K: torch.Tensor,
              v_BG1K: torch.Tensor) -> torch.Tensor:
        """Store one new token per row; returns the ring-or-global slot each was written to [B]."""
        at_B = self.slot_of(positions_B)
        self.k_SGLK[slots_B, :, at_B] = k_BG1K[:, :, 0]
        self.v_SGLK[slots_B, :, at_B] = v_BG1K[:, :, 0]
        return at_B

    def decode(self, slots_B: torch.Tensor, positions_B: torch.Tensor, q_BH1K: torch.Tensor, k_BG1K: torch.Tensor,
               v_BG1K: torch.Tensor) -> torch.Tensor:
        """One new token per row: written, then attended over the row's slots up to the largest position in use
        (SDPA, slots past a row's own position masked)."""
        at_B = self.write(slots_B, positions_B, k_BG1K, v_BG1K)
        L = self.k_SGLK.shape[2] if self.chunk is not None else int(at_B.max()) + 1
        allowed_B11L = (torch.arange(L, device=q_BH1K.device)[None, :] <= at_B[:, None])[:, None, None, :]
        k_BGLK, v_BGLK = self.k_SGLK[slots_B, :, :L], self.v_SGLK[slots_B, :, :L]
        return F.scaled_dot_product_attention(q_BH1K, k_BGLK, v_BGLK, attn_mask=allowed_B11L,
                                              enable_gqa=q_BH1K.shape[1] != k_BGLK.shape[1])


class PrefillView:
    """A run of tokens of one slot from absolute position `start`, as the model attends through the pool."""

    def __init__(self, pool: KVPool, slot: int, start: int) -> None:
        self.pool, self.slot, self.start = pool, slot, start

    def positions_BS(self, S: int, device: torch.device) -> torch.Tensor:
        return torch.arange(self.start, self.start + S, device=device)[None, :]

    def attend(self, layer: int, q_1HSK: torch.Tensor, k_1GSK: torch.Tensor, v_1GSK: torch.Tensor) -> torch.Tensor:
        return self.pool.layers[layer].prefill(self.slot, self.start, q_1HSK, k_1GSK, v_1GSK)


class DecodeView:
    """One token per row, row b in slot slots_B[b] at absolute position positions_B[b]."""

    def __init__(self, pool: KVPool, slots_B: torch.Tensor, positions_B: torch.Tensor) -> None:
        self.pool, self.slots_B, self.positions_B = pool, slots_B, positions_B

    def positions_BS(self, S: int, device: torch.device) -> torch.Tensor:
        if S != 1:
            raise ValueError(f"decode takes one token per row, got {S}")
        return self.positions_B.to(device)[:, None]

    def attend(self, layer: int, q_BH1K: torch.Tensor, k_BG1K: torch.Tensor, v_BG1K: torch.Tensor) -> torch.Tensor:
        return self.pool.layers[layer].decode(self.slots_B, self.positions_B, q_BH1K, k_BG1K, v_BG1K)


class KVPool:
    """`slots` sequences of up to `max_context` positions each, allocated once; see the module doc."""

    def __init__(self, config: TextConfig, slots: int, max_context: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
        if slots < 1 or max_context < 1:
            raise ValueError(f"a KV pool needs at least one slot and one position, got {slots} x {max_context}")
        self.config, self.slots, self.max_context = config, slots, max_context
        self.chunk = config.attention_chunk_size if any(
            config.chunk_size(i) for i in range(config.n_layers)) else None
        self.layers = [LayerPool(slots, max_context, config, config.chunk_size(i), dtype, torch.device(device))
                       for i in range(config.n_layers)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(slots))  # least recently freed first

    @staticmethod
    def bytes_per_slot(config: TextConfig, max_context: int, dtype: torch.dtype) -> int:
        """Keys and values of one slot across every layer, in bytes."""
        per_position = 2 * config.n_kv_heads * config.head_dim * dtype.itemsize
        return sum(per_position * (max_context if (c := config.chunk_size(i)) is None else min(c, max_context))
                   for i in range(config.n_layers))

    @classmethod
    def for_budget(cls, config: TextConfig, budget_bytes: int, max_context: int, dtype: torch.dtype,
                   device: torch.device | str = "cpu") -> KVPool:
        """As many slots of `max_context` positions as fit in `budget_bytes`."""
        per_slot = cls.bytes_per_slot(config, max_context, dtype)
        if budget_bytes < per_slot:
            raise ValueError(f"a KV budget of {budget_bytes:,} bytes holds no slot of {max_context:,} positions "
                             f"({per_slot:,} bytes each)")
        return cls(config, budget_bytes // per_slot, max_context, dtype, device)

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].k_SGLK.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].k_SGLK.device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.k_SGLK, layer.v_SGLK))

    def describe(self) -> str:
        return (f"{self.slots} slots x {self.max_context:,} positions, {self.nbytes() / 2**20:,.1f} MiB "
                f"({str(self.dtype).removeprefix('torch.')})")

    @property
    def n_free(self) -> int:
        return len(self._free)

    def is_free(self, slot: int) -> bool:
        return slot in self._free

    def alloc(self, slot: int | None = None) -> int:
        """Take a free slot: `slot` itself, or the least recently freed one."""
        if slot is None:
            if not self._free:
                raise PoolFull(f"all {self.slots} KV slots are in use")
            return self._free.popitem(last=False)[0]
        if slot not in self._free:
            raise ValueError(f"KV slot {slot} is not free")
        del self._free[slot]
        return slot

    def free(self, slot: int) -> None:
        if not 0 <= slot < self.slots or slot in self._free:
            raise ValueError(f"KV slot {slot} is not in use")
        self._free[slot] = None

    def copy(self, src: int, dst: int, n: int) -> None:
        """Make `dst` hold the first n positions of `src`: global layers copy them, chunk rings entirely (they
        hold the chunk of n-1 when `src` has n or more positions of that chunk cached)."""
        for layer in self.layers:
            span = slice(None) if layer.chunk is not None else slice(0, n)
            layer.k_SGLK[dst, :, span] = layer.k_SGLK[src, :, span]
            layer.v_SGLK[dst, :, span] = layer.v_SGLK[src, :, span]

    def prefill(self, slot: int, start: int) -> PrefillView:
        return PrefillView(self, slot, start)

    def decode(self, slots_B: torch.Tensor, positions_B: torch.Tensor) -> DecodeView:
        return DecodeView(self, slots_B, positions_B)
