"""Decode steps: one token for each running row, addressed by KV slot, to logits. The runtime is handed one.

Every step is called as `step(tokens_B1, positions_B, slots_B, pool) -> logits_BV`: row b feeds token
tokens_B1[b] at absolute position positions_B[b] of the sequence in pool slot slots_B[b], whose keys the step
writes before it attends. The scheduler calls `step.rows(tokens, positions, slots, pool, greedy)` with Python
ints instead, which may also return each row's greedy token (the native step finds it while the logits are
in cache) and skips building tensors where the step takes ints. Three implementations compute the same thing:

- `EagerStep`: the plain model through the pool's decode view (SDPA over each row's slots). The reference.
- The compiled graph (inside `FastDecode`): the whole step, embedding to final norm, as one `torch.compile`
  graph with static shapes: one per batch size and attended span (a bucket of positions, `kv_pool.bucket`),
  so global layers attend over a masked span of at most twice the positions in use. Single-query attention
  is written as products and sums, which the graph fuses into two passes over the keys; it removes the
  Python and op dispatch between the ~300 small ops of a step. The LM head runs after it, standalone.
- The native step (`herd.infer.native`): the step, LM head included, in one C call, on CPUs with
  AVX512-BF16, for a model laid out by `herd.fast.optimize`.

`FastDecode` takes the native step where it can run, else the graph, else the eager step; each fallback
is exact. Tested against `EagerStep` in `tests/test_fast.py` and `tests/test_native_decode.py`.

Shapes: B rows, H heads, G kv heads (R = H / G), L attended positions, K head dim, V vocab.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from herd.infer.kv_pool import KVPool, bucket
from herd.infer.native import NativeDecode

log = logging.getLogger("herd")


def wake(fd: int) -> None:
    """Write one byte to `fd` (a non-blocking pipe: a full one already holds a wake-up)."""
    with contextlib.suppress(BlockingIOError):
        os.write(fd, b"\1")


class DecodeStep:
    """A decode step; see the module doc. Subclasses define `__call__`; `rows` defaults to it."""

    def __call__(self, tokens_B1: torch.Tensor, positions_B: torch.Tensor, slots_B: torch.Tensor,
                 pool: KVPool) -> torch.Tensor:
        raise NotImplementedError

    def rows(self, tokens: Sequence[int], positions: Sequence[int], slots: Sequence[int], pool: KVPool,
             greedy: bool = False, wake_fd: int = -1) -> tuple[torch.Tensor, list[int] | None]:
        """The step on Python ints: the logits [B, V], and each row's greedy token (the first largest logit)
        where the step found it on the way (`greedy`: asked for), else None. With `wake_fd`, one byte is written
        to that file descriptor during the step: as its LM head starts (the native step), or at once."""
        if wake_fd >= 0:
            wake(wake_fd)
        device = pool.device
        tokens_B1 = torch.tensor(tokens, device=device).view(-1, 1)
        positions_B, slots_B = torch.tensor(positions, device=device), torch.tensor(slots, device=device)
        return self(tokens_B1, positions_B, slots_B, pool), None


class CallStep(DecodeStep):
    """A plain function `fn(tokens_B1, positions_B, slots_B, pool) -> logits_BV` as a `DecodeStep`."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, KVPool], torch.Tensor]) -> None:
        self.fn = fn

    def __call__(self, tokens_B1: torch.Tensor, positions_B: torch.Tensor, slots_B: torch.Tensor,
                 pool: KVPool) -> torch.Tensor:
        return self.fn(tokens_B1, positions_B, slots_B, pool)


class EagerStep(DecodeStep):
    """The plain model's decode step; see the module doc."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, tokens_B1: torch.Tensor, positions_B: torch.Tensor, slots_B: torch.Tensor,
                 pool: KVPool) -> torch.Tensor:
        return self.model(tokens_B1, kv=pool.decode(slots_B, positions_B))[:, -1]


def single_query_attention(q_BH1K: torch.Tensor, k_BGLK: torch.Tensor, v_BGLK: torch.Tensor,
                           allowed_BL: torch.Tensor) -> torch.Tensor:
    """Attention of one query per row as products and sums (fp32), which a compiled graph fuses into two
    passes over the keys. On CPU, SDPA's flash kernel costs ~130 µs per call for a single query, more than
    a layer's weights take to read."""
    B, H, _, K = q_BH1K.shape
    G = k_BGLK.shape[1]
    q_BGR1K = q_BH1K.view(B, G, H // G, 1, K).float() * K**-0.5
    s_BGRL = (q_BGR1K * k_BGLK[:, :, None].float()).sum(-1)
    s_BGRL = s_BGRL.masked_fill(~allowed_BL[:, None, None, :], float("-inf"))
    p_BGRL = torch.softmax(s_BGRL, dim=-1)
    out_BGRK = (p_BGRL[..., None] * v_BGLK[:, :, None].float()).sum(-2)
    return out_BGRK.reshape(B, H, 1, K).to(q_BH1K.dtype)


class SpanDecodeView:
    """The pool's decode view with shapes that do not depend on data: global layers attend over the first
    `span` positions of each row's slot (masked past the row's position), chunked layers over the whole ring."""

    def __init__(self, pool: KVPool, slots_B: torch.Tensor, positions_B: torch.Tensor, span: int) -> None:
        self.pool, self.slots_B, self.positions_B, self.span = pool, slots_B, positions_B, span

    def positions_BS(self, S: int, device: torch.device) -> torch.Tensor:
        return self.positions_B.to(device)[:, None]

    def attend(self, layer: int, q_BH1K: torch.Tensor, k_BG1K: torch.Tensor, v_BG1K: torch.Tensor) -> torch.Tensor:
        cache = self.pool.layers[layer]
        at_B = cache.write(self.slots_B, self.positions_B, k_BG1K, v_BG1K)
        L = cache.k_SGLK.shape[2] if cache.chunk is not None else self.span
        allowed_BL = torch.arange(L, device=q_BH1K.device)[None, :] <= at_B[:, None]
        k_BGLK, v_BGLK = cache.k_SGLK[self.slots_B, :, :L], cache.v_SGLK[self.slots_B, :, :L]
        return single_query_attention(q_BH1K, k_BGLK, v_BGLK, allowed_BL)


class FastDecode(DecodeStep):
    """The fastest exact decode step for a model laid out by `herd.fast.optimize`: native (batches up to
    `native_max_batch`), else the compiled graph (up to `max_batch`: each batch size compiles its own graph),
    else eager. A compile failure turns the graph off with a warning."""

    def __init__(self, model: nn.Module, max_batch: int = 8, native_max_batch: int = 64) -> None:
        self.model, self.max_batch = model, max_batch
        # Quantized modules run their own kernels per layer (`herd.quant`): a graph of the step would
        # dequantize every weight each step, so a quantized model decodes eagerly.
        self.enabled = not getattr(model, "quantization", None)
        self.compiled_steps = self.native_steps = 0
        self.native = NativeDecode(model, native_max_batch)
        self.eager = EagerStep(model)
        self._compiled = torch.compile(self._hidden, fullgraph=True, dynamic=False)

    def _hidden(self, tokens_B1: torch.Tensor, positions_B: torch.Tensor, slots_B: torch.Tensor, pool: KVPool,
                span: int) -> torch.Tensor:
        return self.model.hidden(tokens_B1, kv=SpanDecodeView(pool, slots_B, positions_B, span))[:, -1]

    def __call__(self, tokens_B1: torch.Tensor, positions_B: torch.Tensor, slots_B: torch.Tensor,
                 pool: KVPool) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.eager(tokens_B1, positions_B, slots_B, pool)
        if self.native.takes(tokens_B1, pool):
            self.native_steps += 1
            return self.native(tokens_B1, positions_B, slots_B, pool)  # the LM head included
        hidden_BD = None
        if self.enabled and tokens_B1.shape[0] <= self.max_batch:
            span = bucket(int(positions_B.max()) + 1, pool.max_context)
            try:
                hidden_BD = self._compiled(tokens_B1, positions_B, slots_B, pool, span)
                self.compiled_steps += 1
            except Exception as err:  # no C++ compiler, or an unsupported op: the eager step is exact
                log.warning("herd.infer: compiled decode step unavailable (%s: %s); decoding eagerly",
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "")
                self.enabled = False
        if hidden_BD is None:
            return self.eager(tokens_B1, positions_B, slots_B, pool)
        # The LM head stays outside the graph: inside it, inductor fuses the head's reduction with
        # the last layer and picks loop orders that run it 20-50x slower than the standalone kernel.
        return self.model.output(hidden_BD)

    def rows(self, tokens: Sequence[int], positions: Sequence[int], slots: Sequence[int], pool: KVPool,
             greedy: bool = False, wake_fd: int = -1) -> tuple[torch.Tensor, list[int] | None]:
        """As `DecodeStep.rows`; the native step takes the ints as they are (its logits are a buffer that the
        next native step overwrites)."""
        if not torch.is_grad_enabled() and self.native.ready(len(tokens), pool):
            self.native_steps += 1
            return self.native.run(tokens, positions, slots, pool, greedy, wake_fd)
        return super().rows(tokens, positions, slots, pool, greedy, wake_fd)
