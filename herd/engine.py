"""The generation engine: token ids in, token ids out. It knows no tokenizer.

- One `KVCache` per request batch, sized to the longest prompt plus `max_new_tokens`; chunked
  layers keep a ring of `attention_chunk_size` slots, global layers the full context.
- Each prompt is prefilled on its own, in pieces of `prefill_chunk` tokens, so a long prompt
  never needs memory quadratic in its length; only the last position's logits are computed.
- Images (pixel tiles from `herd.image` / `herd.chat.ImageCollector`) are encoded once per
  prompt at prefill; each piece takes the features of the `<|patch|>` tokens it holds.
- Then all unfinished rows decode together, each at its own position (prompts of different
  lengths batch without padding tricks).
- `stream()` yields a `TokenEvent` per generated token; closing the iterator stops generation.
  Stop strings need text, so the caller passes `stop_fn(row, token) -> bool` (e.g. backed by
  `herd.tokenizer.TextStream`), which ends that row with finish_reason "stop".
  `generate()` collects the events.

Shapes: B batch, V vocab.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from herd.kv_cache import KVCache
from herd.model import Transformer
from herd.sampling import SamplingParams, apply_penalties, choose, logprobs_of


@dataclass
class TokenEvent:
    row: int
    token: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop" (a stop token) or "length" on a row's last token


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None


def _rows(prompts: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    """One prompt (ids) or several, as lists of Python ints; tensors and numpy arrays welcome."""
    if hasattr(prompts, "tolist"):
        prompts = prompts.tolist()
    if len(prompts) and isinstance(prompts[0], numbers.Integral):
        return [[int(t) for t in prompts]]
    return [[int(t) for t in (p.tolist() if hasattr(p, "tolist") else p)] for p in prompts]


class Engine:
    def __init__(self, model: Transformer, *, prefill_chunk: int = 512) -> None:
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be >= 1")
        self.model = model.eval()
        self.prefill_chunk = prefill_chunk

    @property
    def device(self) -> torch.device:
        return self.model.output.weight.device

    def _check(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> int:
        config = self.model.config
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt must hold at least one token id")
        for p in prompts:
            bad = [t for t in p if not 0 <= t < config.vocab_size]
            if bad:
                raise ValueError(f"prompt token id(s) {bad[:5]} outside the vocabulary [0, {config.vocab_size})")
        longest = max(len(p) for p in prompts)
        if longest >= config.max_seq_len:
            raise ValueError(f"prompt of {longest} tokens does not fit the context of {config.max_seq_len}")
        return min(longest + max_new_tokens, config.max_seq_len)

    @torch.no_grad()
    def prefill(self, cache: KVCache, row: int, prompt: Sequence[int],
                images: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Fill `row` of the cache with a prompt, piece by piece; the last position's logits [V]."""
        tokens_1S = torch.tensor([list(prompt)], device=self.device)
        features_FD = self.model.encode_images(list(images)) if images else None
        is_patch_S = tokens_1S[0] == (self.model.vision.config.patch_token_id if self.model.vision else -1)
        if features_FD is not None and int(is_patch_S.sum()) != features_FD.shape[0]:
            raise ValueError(f"the prompt has {int(is_patch_S.sum())} <|patch|> tokens but its images give "
                             f"{features_FD.shape[0]} features")
        used = 0
        for start in range(0, tokens_1S.shape[1], self.prefill_chunk):
            piece_1S = tokens_1S[:, start : start + self.prefill_chunk]
            piece_features = None
            if features_FD is not None:
                n = int(is_patch_S[start : start + self.prefill_chunk].sum())
                piece_features, used = features_FD[used : used + n], used + n
            logits_11V = self.model(piece_1S, start_pos=start, cache=cache, row=row, last_only=True,
                                    image_features_FD=piece_features)
        return logits_11V[0, -1]

    @torch.no_grad()
    def stream(self, prompts: Sequence[int] | Sequence[Sequence[int]], params: SamplingParams | None = None,
               stop_fn: Callable[[int, int], bool] | None = None,
               images: Sequence[Sequence[torch.Tensor] | None] | None = None) -> Iterator[TokenEvent]:
        """Generate for one prompt (a list of ids) or several; events arrive step by step.

        `images[b]` holds the pixel tiles of prompt b's images, in prompt order (None: no images).
        """
        params = params or SamplingParams()
        rows = _rows(prompts)
        if params.max_new_tokens == 0:
            return
        length = self._check(rows, params.max_new_tokens)
        stop = set(params.stop_ids if params.stop_ids is not None else self.model.config.eos_ids)
        step = getattr(self.model, "fast_decode", None)  # a compiled step wants a few cache shapes only
        size = step.cache_length(length, self.model.config.max_seq_len) if step is not None else length
        cache = KVCache(self.model.config, len(rows), size, self.model.output.weight.dtype, self.device)
        generators = [None if params.seed is None else torch.Generator(self.device).manual_seed(params.seed)
                      for _ in rows]
        # Bookkeeping in Python lists: after the LM head has streamed its weights through every cache, each
        # distinct torch op costs ~100 µs the first time in a step (cold code and data), so the loop adds few.
        history = [list(p) for p in rows]  # prompt + output ids
        images = list(images) if images is not None else [None] * len(rows)
        if len(images) != len(rows):
            raise ValueError(f"{len(rows)} prompts but images for {len(images)}")
        logits_BV = torch.stack([self.prefill(cache, b, p, images[b]) for b, p in enumerate(rows)])
        positions = [len(p) for p in rows]
        live = list(range(len(rows)))
        finished = [False] * len(rows)
        while live:
            for b in live:
                token = self._sample(logits_BV[b], params, history[b], len(rows[b]), generators[b])
                history[b].append(token)
                n_out = len(history[b]) - len(rows[b])
                done = "stop" if token in stop or (stop_fn is not None and stop_fn(b, token)) else None
                if done is None and (n_out >= params.max_new_tokens or positions[b] + 1 >= length):
                    done = "length"
                finished[b] = done is not None
                event = TokenEvent(row=b, token=token, finish_reason=done)
                if params.logprobs is not None:
                    event.logprob, event.top_logprobs = logprobs_of(logits_BV[b], token, params.logprobs)
                yield event
            live_next = [b for b in live if not finished[b]]
            if not live_next:
                return
            # Every row of the cache steps together. Finished rows are carried along with their output
            # ignored, and stay at their last position so they never write past the cache.
            tokens_B1 = torch.tensor([[h[-1]] for h in history], device=self.device)
            logits_BV = self._decode(tokens_B1, torch.tensor(positions, device=self.device), cache)
            positions = [n + (not done) for n, done in zip(positions, finished, strict=True)]
            live = live_next

    def _decode(self, tokens_B1: torch.Tensor, positions_B: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits [B, V] of one decode step: the compiled step that `herd.fast.optimize` sets, if any."""
        step = getattr(self.model, "fast_decode", None)
        if step is not None:
            return step(tokens_B1, positions_B, cache)
        return self.model(tokens_B1, cache=cache, positions_B=positions_B)[:, -1]

    def _sample(self, logits_V: torch.Tensor, params: SamplingParams, history: list[int], prompt_length: int,
                generator: torch.Generator | None) -> int:
        """The next token of a row whose prompt and output so far are `history`."""
        if params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
            seen = torch.tensor(history, device=logits_V.device)
            logits_V = apply_penalties(logits_V.float(), params, seen, seen[prompt_length:])
        return choose(logits_V, params, generator)  # greedy takes the first maximum, as in fp32

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
            c.finish_reason = event.finish_reason or c.finish_reason
        return completions
