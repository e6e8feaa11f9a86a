"""Continuous batching: many requests share one KV slot pool, joining and leaving at any step.

- `submit()` queues a request (prompt ids, its own `SamplingParams`, images, a stop callback, n samples)
  at any time, from any thread; the queue is FIFO with a bound (`max_queue`, `QueueFull` past it).
- `step()` runs one batched decode over every running sequence, then prefills at most `prefill_chunk`
  prompt tokens: a piece of the request being admitted, and when its prompt ends inside the budget, the
  start of the next ones (chunked prefill interleaved with decode: a long prompt stalls the running
  streams by at most one piece per step, and short prompts do not cost a step each). It returns the
  step's `TokenEvent`s.
- A request is admitted when the pool has a free slot for each of its n samples. Its prompt is prefilled
  once, then its cache is copied into the other n-1 slots, and every sample decodes on its own.
- A server's hand-off (`wake_fd`): the scheduler writes one byte to that file descriptor when the events emitted
  so far should be delivered: as the next decode step's LM head starts (its blocks are shared out between the
  step's threads as they come, so a thread the server's event loop takes off its core costs the step least),
  or at once when a prefill piece or no decode comes next.
- Finished sequences free their slot at once. `abort()` (client gone) takes effect at the start of the next
  step, also in the middle of a prefill.
- Prefix reuse: a slot keeps the tokens of its cache after it is freed. A new request takes the slot (free,
  or copied from a running one) whose cached tokens share the longest usable prefix with its prompt, and
  prefills only the rest. Global layers hold every position; a chunk ring holds only the chunk of the
  slot's last cached position, so the shared prefix is used whole when it ends in that chunk and is
  rounded down to a chunk boundary otherwise. At least the last prompt token is always computed (its
  logits give the first output). Image placeholder tokens are the same for every image, so positions of
  images are keyed by the images' content: a prefix never crosses different images.
- Constrained decoding: a request's `constraint` (`herd.infer.guided`, llguidance) masks each sample's
  logits to what its grammar allows and ends the sample when the grammar is complete.
- Sampling is per sequence: its own seeded generator (sample i of a request with seed s draws from
  seed s + i), penalties over its own history; log-probabilities of the raw model distribution (OpenAI's
  semantics) and, on request, under the sampling distribution (after penalties, temperature, top-k/p, min-p).

Shapes: B rows, V vocab, F image features, D model dim.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from herd.infer.guided import Constraint
from herd.infer.kv_pool import KVPool
from herd.infer.sampling import (
    SamplingParams,
    apply_penalties,
    choose,
    logprobs_of,
    sampling_logprob,
    scored_logprobs,
)
from herd.infer.steps import CallStep, DecodeStep, EagerStep, wake


class QueueFull(RuntimeError):
    """The waiting queue is at its bound; try again later."""


@dataclass
class TokenEvent:
    request: int  # the request's id (its row, in `Engine` calls)
    token: int
    logprob: float | None = None  # under the model's own distribution
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop" (a stop token or the stop callback) or "length", on the last token
    sample: int = 0  # which of the request's n samples
    sampling_logprob: float | None = None  # under the sampling distribution (SamplingParams.sampling_logprobs)
    scored: list[float] | None = None  # log-probabilities of SamplingParams.scored_ids, in their order

    @property
    def row(self) -> int:
        return self.request


Key = int | tuple[str, str]  # a cached position: its token id, or for an image position the images' digest


@dataclass(eq=False)
class _Request:
    id: int
    prompt: list[int]
    keys: list[Key]
    params: SamplingParams
    images: list[torch.Tensor] | None
    stop_fn: Callable[[int, int], bool] | None
    n: int
    stop: frozenset[int]
    constraint: Callable[[], Constraint] | None = None  # a fresh grammar state per sample
    slots: list[int] = field(default_factory=list)  # the prefill slot first, then one per further sample
    done: int = 0  # prompt positions cached in slots[0]
    features_FD: torch.Tensor | None = None
    live: int = 0  # sequences still generating


@dataclass(eq=False)
class _Sequence:
    request: _Request
    sample: int
    slot: int
    history: list[int]  # prompt + output; every token but the last has its keys in the slot
    generator: torch.Generator | None
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        # the step's own argmax is this sample's next token: nothing else reads its logits
        p = self.request.params
        self.plain_greedy = p.plain_greedy and self.constraint is None and not p.reads_logprobs


def usable_prefix(shared: int, cached: int, prompt: int, chunk: int | None) -> int:
    """How much of a `shared`-token common prefix a slot holding `cached` positions can give a prompt of
    `prompt` tokens: never the last prompt token; with chunk rings, the whole prefix only when it ends in
    the chunk the ring holds (that of position cached-1), else rounded down to a chunk boundary."""
    n = min(shared, prompt - 1)
    if chunk and n % chunk and n // chunk != (cached - 1) // chunk:
        n -= n % chunk
    return max(n, 0)


def _common(a: list[Key], b: list[Key]) -> int:
    n = 0
    for x, y in zip(a, b):  # noqa: B905 (lengths differ)
        if x != y:
            break
        n += 1
    return n


def _image_keys(prompt: list[int], images: Sequence[torch.Tensor] | None, patch_id: int) -> list[Key]:
    if not images:
        return list(prompt)
    digest = hashlib.sha1()
    for pixels in images:
        digest.update(str(tuple(pixels.shape)).encode())
        digest.update(pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    image = ("image", digest.hexdigest())
    return [image if t == patch_id else t for t in prompt]


def prefill_piece(model: nn.Module, pool: KVPool, slot: int, prompt: Sequence[int], start: int, end: int,
                  features_FD: torch.Tensor | None = None) -> torch.Tensor:
    """Write prompt[start:end] (at positions start…) into `slot` and return the last one's logits [V].
    `features_FD` are the image features of all the prompt's `<|patch|>` tokens; the piece takes its own."""
    piece = list(prompt[start:end])
    piece_features = None
    if features_FD is not None:
        patch_id = model.vision.config.patch_token_id
        used, n = list(prompt[:start]).count(patch_id), piece.count(patch_id)
        piece_features = features_FD[used : used + n] if n else None
    tokens_1S = torch.tensor([piece], device=pool.device)
    logits_11V = model(tokens_1S, kv=pool.prefill(slot, start), last_only=True, image_features_FD=piece_features)
    return logits_11V[0, -1]


class Scheduler:
    """Continuous batching over one `KVPool`; see the module doc. `step` is the decode step to run
    (`EagerStep` by default, `herd.infer.steps.FastDecode` for an optimized model)."""

    def __init__(self, model: nn.Module, pool: KVPool, step: DecodeStep | None = None, *,
                 prefill_chunk: int = 512, max_queue: int | None = None) -> None:
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be >= 1")
        self.model, self.pool = model.eval(), pool
        step = step or EagerStep(model)
        self.step_fn = step if isinstance(step, DecodeStep) else CallStep(step)  # a plain step function too
        self.prefill_chunk, self.max_queue = prefill_chunk, max_queue
        self.limit = min(pool.max_context, model.config.max_seq_len)  # positions a sequence may reach
        self._patch_id = model.vision.config.patch_token_id if model.vision is not None else -1
        self._tokens_per_tile = model.vision.tokens_per_tile if model.vision is not None else 0
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._queue: deque[_Request] = deque()
        self._aborts: set[int] = set()
        self._requests: dict[int, _Request] = {}  # admitted and not yet finished
        self._prefilling: _Request | None = None
        self._running: list[_Sequence] = []
        self._cached: list[list[Key]] = [[] for _ in range(pool.slots)]  # the keys whose KV each slot holds
        self.wake_fd = -1  # see the module doc; -1: none
        self.reused_tokens = 0  # prompt tokens taken from cached prefixes instead of prefilled
        self.prefilled_tokens = 0  # prompt tokens computed

    # ---- requests in ----

    def check(self, prompt: Sequence[int], images: Sequence[torch.Tensor] | None = None, n: int = 1) -> list[int]:
        """The prompt as a list of ids, or ValueError saying what is wrong with the request."""
        prompt = [int(t) for t in prompt]
        vocab = self.model.config.vocab_size
        if not prompt:
            raise ValueError("every prompt must hold at least one token id")
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token id(s) {bad[:5]} outside the vocabulary [0, {vocab})")
        if len(prompt) >= self.limit:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.limit}")
        if not 1 <= n <= self.pool.slots:
            raise ValueError(f"n must be between 1 and the {self.pool.slots} KV slots, got {n}")
        if images:
            if self.model.vision is None:
                raise ValueError("this model has no vision tower (a text-only checkpoint, or loaded with "
                                 "text_only=True)")
            patches, features = prompt.count(self._patch_id), sum(p.shape[0] for p in images) * self._tokens_per_tile
            if patches != features:
                raise ValueError(f"the prompt has {patches} <|patch|> tokens but its images give {features} "
                                 "features")
        return prompt

    def submit(self, prompt: Sequence[int], params: SamplingParams, *, images: Sequence[torch.Tensor] | None = None,
               stop_fn: Callable[[int, int], bool] | None = None, n: int = 1,
               constraint: Callable[[], Constraint] | None = None) -> int:
        """Queue a request and return its id. `stop_fn(sample, token)` ends that sample with "stop" (stop
        strings); `images` are the pixel tiles of the prompt's images in order; `constraint()` makes each
        sample's grammar state (`herd.infer.guided`), which masks its logits. Thread-safe."""
        prompt = self.check(prompt, images, n)
        stop = frozenset(params.stop_ids if params.stop_ids is not None else self.model.config.eos_ids)
        with self._lock:
            if self.max_queue is not None and len(self._queue) >= self.max_queue:
                raise QueueFull(f"the queue holds its limit of {self.max_queue} waiting requests")
            request = _Request(next(self._ids), prompt, _image_keys(prompt, images, self._patch_id), params,
                               list(images) if images else None, stop_fn, n, stop, constraint)
            self._queue.append(request)
        return request.id

    def abort(self, request_id: int) -> None:
        """End a request (waiting, prefilling or decoding) at the start of the next step. Thread-safe."""
        with self._lock:
            self._aborts.add(request_id)

    # ---- state ----

    @property
    def n_waiting(self) -> int:
        return len(self._queue)

    @property
    def n_running(self) -> int:
        """Sequences holding a slot: decoding, or the one being prefilled."""
        return len(self._running) + (self._prefilling.n if self._prefilling is not None else 0)

    def has_work(self) -> bool:
        return bool(self._queue or self._running or self._prefilling is not None or self._aborts)

    # ---- the step ----

    @torch.no_grad()
    def step(self, emit: Callable[[list[TokenEvent]], None] | None = None) -> list[TokenEvent]:
        """One decode over every running sequence, then up to `prefill_chunk` prompt tokens; the tokens they
        produced. `emit(events)` (a server's dispatch) gets them as soon as each part of the step is done, so
        the decoded rows and the first request whose prefill ends are not held back by the rest of the step."""
        self.apply_aborts()
        if self._running:
            events = self._decode()  # its step writes wake_fd as its LM head starts
        else:
            events = []
            self._wake()  # nothing decodes: what is pending goes out now
        if emit is not None and events:
            emit(events)
        budget, done = self.prefill_chunk, len(events)
        while budget > 0:
            if self._prefilling is None:
                self._admit()
                if self._prefilling is None:
                    break
            if done:
                self._wake()  # the decoded rows' tokens go out before the prefill piece
            budget -= self._prefill(budget, events)
            if emit is not None and len(events) > done:
                emit(events[done:])
                done = len(events)
        return events

    def _wake(self) -> None:
        fd = self.wake_fd  # read once: a runner stopping may reset it
        if fd >= 0:
            wake(fd)

    def apply_aborts(self) -> None:
        """Carry out the aborts asked for so far (`step` starts with this)."""
        with self._lock:
            aborts, self._aborts = self._aborts, set()
            if aborts:
                self._queue = deque(r for r in self._queue if r.id not in aborts)
        for request_id in aborts:
            request = self._requests.pop(request_id, None)
            if request is None:
                continue
            if request is self._prefilling:
                self._prefilling = None
                for slot in request.slots:
                    self.pool.free(slot)
            else:
                for seq in [s for s in self._running if s.request is request]:
                    self._end(seq)

    def _admit(self) -> None:
        with self._lock:
            if not self._queue or self.pool.n_free < self._queue[0].n:
                return
            request = self._queue.popleft()
        self._requests[request.id] = request
        slot, reuse = self._place(request)
        request.slots = [slot] + [self.pool.alloc() for _ in range(request.n - 1)]
        for extra in request.slots[1:]:
            self._cached[extra] = []
        request.done = reuse
        self.reused_tokens += reuse
        self._prefilling = request

    def _place(self, request: _Request) -> tuple[int, int]:
        """A slot for the request's prompt and how many of its positions are already there: the free slot with
        the longest usable prefix, or a fresh slot with that prefix copied from a busy one."""
        best, best_slot = 0, -1
        for slot, cached in enumerate(self._cached):
            if not cached or cached[0] != request.keys[0]:
                continue
            n = usable_prefix(_common(cached, request.keys), len(cached), len(request.prompt), self.pool.chunk)
            if n > best or (n == best and n and self.pool.is_free(slot) and not self.pool.is_free(best_slot)):
                best, best_slot = n, slot
        if best and self.pool.is_free(best_slot):
            slot = self.pool.alloc(best_slot)
        else:
            slot = self.pool.alloc()
            if best:
                self.pool.copy(best_slot, slot, best)
        self._cached[slot] = self._cached[best_slot][:best] if best else []
        return slot, best

    def _prefill(self, budget: int, events: list[TokenEvent]) -> int:
        """Prefill up to `budget` tokens of the admitted request (its first tokens go to `events` when its
        prompt is done); returns the tokens computed."""
        request = self._prefilling
        slot, start = request.slots[0], request.done
        end = min(start + budget, len(request.prompt))
        if request.images and request.features_FD is None:
            request.features_FD = self.model.encode_images(request.images)
        logits_V = prefill_piece(self.model, self.pool, slot, request.prompt, start, end, request.features_FD)
        self._cached[slot].extend(request.keys[start:end])
        request.done = end
        self.prefilled_tokens += end - start
        if end < len(request.prompt):
            return end - start
        self._prefilling, request.features_FD = None, None
        for extra in request.slots[1:]:  # n samples: the prompt's cache copied, not prefilled again
            self.pool.copy(slot, extra, end)
            self._cached[extra] = list(self._cached[slot])
        request.live = request.n
        for i, s in enumerate(request.slots):
            seed = request.params.seed
            generator = None if seed is None else torch.Generator(logits_V.device).manual_seed(seed + i)
            constraint = request.constraint() if request.constraint is not None else None
            seq = _Sequence(request, i, s, list(request.prompt), generator, constraint)
            self._running.append(seq)
            events.append(self._sample(seq, logits_V))
        return end - start

    def _decode(self) -> list[TokenEvent]:
        seqs = list(self._running)
        greedy = any(s.plain_greedy for s in seqs)  # ask the step for its rows' argmax
        logits_BV, best_B = self.step_fn.rows([s.history[-1] for s in seqs], [len(s.history) - 1 for s in seqs],
                                              [s.slot for s in seqs], self.pool, greedy, self.wake_fd)
        events = []
        for b, seq in enumerate(seqs):
            self._cached[seq.slot].append(seq.history[-1])
            if best_B is not None and seq.plain_greedy:
                events.append(self._emit(seq, best_B[b], None))  # the step's argmax: no logits read here
            else:
                events.append(self._sample(seq, logits_BV[b]))
        return events

    def _sample(self, seq: _Sequence, logits_V: torch.Tensor) -> TokenEvent:
        request, params = seq.request, seq.request.params
        if params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
            seen = torch.tensor(seq.history, device=logits_V.device)
            penalized_V = apply_penalties(logits_V.float(), params, seen, seen[len(request.prompt):])
        else:
            penalized_V = logits_V
        if seq.constraint is not None:
            penalized_V = seq.constraint.mask(penalized_V)
        token = choose(penalized_V, params, seq.generator)  # greedy takes the first maximum, as in fp32
        return self._emit(seq, token, logits_V, penalized_V)

    def _emit(self, seq: _Sequence, token: int, logits_V: torch.Tensor | None,
              penalized_V: torch.Tensor | None = None) -> TokenEvent:
        """The event of a sample's next token (the logits it was chosen from, where read), ending the sample
        where it is done."""
        request, params = seq.request, seq.request.params
        seq.history.append(token)
        done = None
        if token in request.stop or (request.stop_fn is not None and request.stop_fn(seq.sample, token)):
            done = "stop"
        elif seq.constraint is not None and seq.constraint.advance(token):
            done = "stop"  # the grammar is complete
        elif len(seq.history) - len(request.prompt) >= params.max_new_tokens or len(seq.history) >= self.limit:
            done = "length"
        event = TokenEvent(request=request.id, token=token, finish_reason=done, sample=seq.sample)
        if logits_V is not None:
            if params.logprobs is not None:
                event.logprob, event.top_logprobs = logprobs_of(logits_V, token, params.logprobs)
            if params.scored_ids:
                event.scored = scored_logprobs(logits_V, params.scored_ids)
            if params.sampling_logprobs:
                event.sampling_logprob = sampling_logprob(penalized_V, params, token)
        if done is not None:
            self._end(seq)
        return event

    def _end(self, seq: _Sequence) -> None:
        self._running.remove(seq)
        self.pool.free(seq.slot)
        seq.request.live -= 1
        if seq.request.live <= 0:
            self._requests.pop(seq.request.id, None)
