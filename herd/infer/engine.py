"""The offline engine: token ids in, token ids out, over the continuous-batching scheduler. No tokenizer.

- `generate()` / `stream()` submit every prompt to a `Scheduler` and step it until they are done; all
  prompts share the call's `SamplingParams`. Rows decode together as soon as their prefill is done; a long
  prompt is prefilled in pieces of `prefill_chunk` tokens, one piece per step, so memory stays linear in
  its length; only the last position's logits are computed.
- The KV pool is the engine's own and outlives the call, so a later call whose prompt starts like an
  earlier one (a chat's next turn) reuses its cached prefix. With `max_slots`/`max_context` it is allocated
  once at construction (more prompts than slots wait their turn); without, it is sized on first use and
  reallocated, in a few bucketed sizes, only when a call needs more slots or positions than it has.
- `step` is the decode step (`herd.infer.steps`): `FastDecode(model)` for a model laid out by
  `herd.fast.optimize`, the eager model by default.
- Images (pixel tiles from `herd.image` / `herd.chat.ImageCollector`) are encoded once per prompt at
  prefill; each piece takes the features of the `<|patch|>` tokens it holds.
- Closing the `stream()` iterator aborts what is left. Stop strings need text, so the caller passes
  `stop_fn(row, token) -> bool` (e.g. backed by `herd.tokenizer.TextStream`), which ends that row with
  finish_reason "stop".

Shapes: V vocab.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from herd.infer.kv_pool import KVPool, bucket
from herd.infer.sampling import SamplingParams
from herd.infer.scheduler import Scheduler, TokenEvent, prefill_piece
from herd.infer.steps import DecodeStep, EagerStep
from herd.model import Transformer

log = logging.getLogger("herd")


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    sampling_logprobs: list[float] = field(default_factory=list)
    scored: list[list[float]] = field(default_factory=list)  # per step, for SamplingParams.scored_ids
    finish_reason: str | None = None


def _rows(prompts: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    """One prompt (ids) or several, as lists of Python ints; tensors and numpy arrays welcome."""
    if hasattr(prompts, "tolist"):
        prompts = prompts.tolist()
    if len(prompts) and isinstance(prompts[0], numbers.Integral):
        return [[int(t) for t in prompts]]
    return [[int(t) for t in (p.tolist() if hasattr(p, "tolist") else p)] for p in prompts]


class Engine:
    def __init__(self, model: Transformer, *, prefill_chunk: int = 512, step: DecodeStep | None = None,
                 max_slots: int | None = None, max_context: int | None = None) -> None:
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be >= 1")
        self.model = model.eval()
        self.prefill_chunk = prefill_chunk
        self.step = step or EagerStep(model)
        self.fixed = max_slots is not None or max_context is not None
        self.scheduler: Scheduler | None = None
        self._mail: dict[tuple[int, int], deque[TokenEvent]] = {}  # (scheduler, request) -> events not yet yielded
        if self.fixed:
            self._allocate(max_slots or 1, max_context or model.config.max_seq_len)

    @property
    def device(self) -> torch.device:
        return self.model.tok_embeddings.weight.device

    def _allocate(self, slots: int, context: int) -> None:
        self.scheduler = None  # the old pool goes before the new one is allocated
        pool = KVPool(self.model.config, slots, context, self.model.tok_embeddings.weight.dtype, self.device)
        log.debug("herd.infer: KV pool of %s", pool.describe())
        self.scheduler = Scheduler(self.model, pool, self.step, prefill_chunk=self.prefill_chunk)

    def _scheduler_for(self, rows: int, positions: int) -> Scheduler:
        """The scheduler, its pool (re)allocated if this call needs more than it holds."""
        s = self.scheduler
        if s is not None and s.pool.dtype != self.model.tok_embeddings.weight.dtype:
            s = None  # the model was cast
        if not self.fixed and (s is None or s.pool.slots < rows or s.pool.max_context < positions):
            self._allocate(1 << (rows - 1).bit_length(), bucket(positions, self.model.config.max_seq_len))
        elif s is None:
            self._allocate(self.scheduler.pool.slots, self.scheduler.pool.max_context)
        return self.scheduler

    @property
    def pool(self) -> KVPool | None:
        return self.scheduler.pool if self.scheduler is not None else None

    @torch.no_grad()
    def prefill(self, pool: KVPool, slot: int, prompt: Sequence[int],
                images: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Fill `slot` of `pool` with a whole prompt, piece by piece; the last position's logits [V]."""
        prompt = list(prompt)
        features_FD = self.model.encode_images(list(images)) if images else None
        patch_id = self.model.vision.config.patch_token_id if self.model.vision is not None else -1
        if features_FD is not None and prompt.count(patch_id) != features_FD.shape[0]:
            raise ValueError(f"the prompt has {prompt.count(patch_id)} <|patch|> tokens but its images give "
                             f"{features_FD.shape[0]} features")
        for start in range(0, len(prompt), self.prefill_chunk):
            end = min(start + self.prefill_chunk, len(prompt))
            logits_V = prefill_piece(self.model, pool, slot, prompt, start, end, features_FD)
        return logits_V

    def stream(self, prompts: Sequence[int] | Sequence[Sequence[int]], params: SamplingParams | None = None,
               stop_fn: Callable[[int, int], bool] | None = None,
               images: Sequence[Sequence[torch.Tensor] | None] | None = None) -> Iterator[TokenEvent]:
        """Generate for one prompt (a list of ids) or several; events (`event.row` is the prompt's index)
        arrive step by step. `images[b]` holds the pixel tiles of prompt b's images, in prompt order."""
        params = params or SamplingParams()
        rows = _rows(prompts)
        images = list(images) if images is not None else [None] * len(rows)
        if len(images) != len(rows):
            raise ValueError(f"{len(rows)} prompts but images for {len(images)}")
        if not rows:
            raise ValueError("every prompt must hold at least one token id")
        longest = max(len(p) for p in rows)
        scheduler = self._scheduler_for(len(rows), min(longest + params.max_new_tokens, self.model.config.max_seq_len))
        rows = [scheduler.check(p, images[b]) for b, p in enumerate(rows)]
        if params.max_new_tokens == 0:
            return iter(())
        return self._run(scheduler, rows, params, stop_fn, images)

    def _run(self, scheduler: Scheduler, rows: list[list[int]], params: SamplingParams,
             stop_fn: Callable[[int, int], bool] | None,
             images: list[Sequence[torch.Tensor] | None]) -> Iterator[TokenEvent]:
        row_of: dict[int, int] = {}
        for b, prompt in enumerate(rows):
            row_stop = None if stop_fn is None else (lambda _sample, token, b=b: stop_fn(b, token))
            row_of[scheduler.submit(prompt, params, images=images[b], stop_fn=row_stop)] = b
        mine = [self._mail.setdefault((id(scheduler), r), deque()) for r in row_of]
        left = len(rows)
        try:
            while left:
                if not any(mine):  # another open stream of this engine may have stepped for us
                    for event in scheduler.step():
                        self._mail.get((id(scheduler), event.request), deque()).append(event)
                for request_id, box in zip(row_of, mine, strict=True):
                    while box:
                        event = box.popleft()
                        if event.finish_reason is not None:
                            left -= 1
                        yield dataclasses.replace(event, request=row_of[request_id])
        finally:
            for request_id in row_of:
                self._mail.pop((id(scheduler), request_id), None)
            if left:  # closed early, or an error: nothing of this call keeps a slot
                for request_id in row_of:
                    scheduler.abort(request_id)
                scheduler.apply_aborts()

    def generate(self, prompts: Sequence[int] | Sequence[Sequence[int]], params: SamplingParams | None = None,
                 stop_fn: Callable[[int, int], bool] | None = None,
                 images: Sequence[Sequence[torch.Tensor] | None] | None = None) -> list[Completion]:
        """Run `stream()` to the end and collect one `Completion` per prompt."""
        rows = _rows(prompts)
        completions = [Completion(prompt_ids=p) for p in rows]
        for event in self.stream(rows, params, stop_fn, images):
            c = completions[event.row]
            c.token_ids.append(event.token)
            if event.logprob is not None:
                c.logprobs.append(event.logprob)
                c.top_logprobs.append(event.top_logprobs or [])
            if event.sampling_logprob is not None:
                c.sampling_logprobs.append(event.sampling_logprob)
            if event.scored is not None:
                c.scored.append(event.scored)
            c.finish_reason = event.finish_reason or c.finish_reason
        return completions
