"""Perplexity of held-out text, by the two protocols people compare against.

- **strided** (HF's "perplexity of fixed-length models"): windows of `window` tokens moved `stride` at a
  time; each window scores only the tokens no earlier window scored, so every token after the first is
  scored once with up to `window - 1` tokens of context. stride = window gives disjoint windows; stride 1
  scores every token with the longest context the window allows (the brute-force reference).
- **llama.cpp** (`llama-perplexity`): the text is cut into disjoint windows of `context` tokens (512 by
  default), each window's first token replaced by BOS, and only the second half of each window scored.

Perplexity is exp of the mean negative log-likelihood over all scored tokens (token-weighted, not a mean of
per-window means). `position_bins` splits the strided protocol's loss by position inside the window: how well
the model uses long context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.data.shards import TokenShards, read_manifest
from herd.data.sources import DataError, read_document, resolve
from herd.eval.scoring import Scorer
from herd.tokenizer import Tokenizer


@dataclass
class Perplexity:
    protocol: str
    nll: float  # summed over scored tokens, nats
    tokens: int  # scored
    windows: int
    settings: dict[str, Any]
    position_bins: list[dict[str, float]] = field(default_factory=list)

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll)

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, **self.settings, "windows": self.windows, "scored_tokens": self.tokens,
                "mean_nll": self.mean_nll, "ppl": self.ppl, "position_bins": self.position_bins}


def read_sequences(inputs: list[str], tokenizer: Tokenizer | None, split: str = "val",
                   max_tokens: int | None = None) -> list[list[int]]:
    """Token sequences to evaluate: a prepared dataset directory's `split` as one stream (its documents are
    already `[bos] text [eos]` runs), or text/JSONL files, each document `[bos] + encode(text)`; at most
    `max_tokens` in all."""
    if len(inputs) == 1 and Path(inputs[0]).is_dir() and _is_dataset(Path(inputs[0])):
        shards = TokenShards(inputs[0], split)
        n = shards.n_tokens if max_tokens is None else min(max_tokens, shards.n_tokens)
        return [shards.read(0, n).astype("int64").tolist()]
    if tokenizer is None:
        raise DataError("text files need the model's tokenizer")
    out: list[list[int]] = []
    total = 0
    for path in resolve(inputs):
        for text in read_document(path):
            ids = tokenizer.encode(text, bos=True)
            if max_tokens is not None:
                ids = ids[: max_tokens - total]
            out.append(ids)
            total += len(ids)
            if max_tokens is not None and total >= max_tokens:
                return out
    if not out:
        raise DataError(f"no text in {' '.join(inputs)}")
    return out


def _is_dataset(path: Path) -> bool:
    try:
        read_manifest(path)
    except DataError:
        return False
    return True


def strided(scorer: Scorer, sequences: list[list[int]], window: int, stride: int,
            bins: int = 0) -> Perplexity:
    """HF's sliding-window protocol over each sequence; `bins` > 0 also splits the loss by window position."""
    if not 1 <= stride <= window:
        raise ValueError(f"need 1 <= stride <= window, got stride {stride} and window {window}")
    requests = []
    for ids in sequences:
        done = 1  # tokens before this index are scored (the first token never is)
        for begin in range(0, len(ids), stride):
            end = min(begin + window, len(ids))
            if end > done:  # a window's first token has no context inside it, so it is never scored (HF's rule)
                requests.append((ids[begin:end], max(done - begin, 1)))
                done = end
            if end == len(ids):
                break
    scored = scorer.score(requests, desc="perplexity")
    result = Perplexity("strided", -sum(s.total for s in scored), sum(len(s.logprobs) for s in scored),
                        len(requests), {"window": window, "stride": stride})
    if bins:
        edges = [round(window * i / bins) for i in range(bins + 1)]
        sums, counts = [0.0] * bins, [0] * bins
        for (_, first), s in zip(requests, scored, strict=True):
            for j, logprob in enumerate(s.logprobs):
                k = next(i for i in range(bins) if first + j < edges[i + 1])
                sums[k] -= logprob
                counts[k] += 1
        result.position_bins = [{"from": edges[k], "to": edges[k + 1], "tokens": counts[k],
                                 "mean_nll": sums[k] / counts[k] if counts[k] else math.nan} for k in range(bins)]
    return result


def llama_cpp(scorer: Scorer, sequences: list[list[int]], bos_id: int, context: int = 512) -> Perplexity:
    """llama-perplexity's protocol over the concatenated sequences."""
    if context < 4:
        raise ValueError(f"the context must be at least 4 tokens, got {context}")
    stream = [t for ids in sequences for t in ids]
    n = len(stream) // context
    if n == 0:
        raise ValueError(f"the text has {len(stream)} tokens, fewer than one window of {context}")
    first = context // 2 + 1
    requests = [([bos_id, *stream[i * context + 1 : (i + 1) * context]], first) for i in range(n)]
    scored = scorer.score(requests, desc="perplexity")
    return Perplexity("llama.cpp", -sum(s.total for s in scored), sum(len(s.logprobs) for s in scored), n,
                      {"context": context})
