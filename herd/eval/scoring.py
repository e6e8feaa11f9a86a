"""The scoring every evaluation shares: log-probabilities of token continuations, in batched forwards.

- A request is a token sequence and the index `first` of the first token to score: tokens[first:] are scored,
  each given all the tokens before it (first >= 1). Perplexity windows, multiple-choice continuations,
  passkey answers and lm-eval's requests are all this one shape.
- Requests are batched longest first under a token budget and padded on the right (causal attention: padding
  after a sequence changes nothing before it), so a whole evaluation runs at prefill speed, not decode speed.
- The LM head runs only on the scored positions, a few hundred rows at a time, so a long window never holds
  its full [S, V] logits.
- `encode_pair` splits context and continuation the way lm-evaluation-harness does (trailing spaces of the
  context move to the continuation; the whole is encoded and cut at the context's length), so herd's own
  tasks and lm-eval's requests give the same tokens.

Shapes: B batch, S sequence, D model dim, N scored positions, V vocab.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from herd.tokenizer import Tokenizer


@dataclass
class Scored:
    """Per scored token: its log-probability and whether it was the model's top-1 choice there."""

    logprobs: list[float]
    greedy: list[bool]

    @property
    def total(self) -> float:
        return sum(self.logprobs)

    @property
    def is_greedy(self) -> bool:
        return all(self.greedy)


class Scorer:
    """Scores requests `(tokens, first)` with one model: `score` returns a `Scored` per request, in order."""

    def __init__(self, model: nn.Module, *, batch_tokens: int = 4096, head_rows: int = 256,
                 progress: bool = False) -> None:
        self.model = model
        self.batch_tokens = batch_tokens
        self.head_rows = head_rows
        self.progress = progress
        self.device = model.tok_embeddings.weight.device

    def score(self, requests: Sequence[tuple[Sequence[int], int]], desc: str = "scoring") -> list[Scored]:
        for tokens, first in requests:
            if not 1 <= first <= len(tokens):
                raise ValueError(f"a request of {len(tokens)} tokens cannot score from index {first} "
                                 "(the first scored token needs at least one token before it)")
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
        out: list[Scored | None] = [None] * len(requests)
        bar = tqdm(total=sum(len(t) for t, _ in requests), desc=desc, unit="tok", disable=not self.progress,
                   dynamic_ncols=True)
        start = 0
        while start < len(order):
            longest = len(requests[order[start]][0])
            rows = max(1, self.batch_tokens // longest)
            batch = order[start : start + rows]
            for i, scored in zip(batch, self._batch([requests[i] for i in batch]), strict=True):
                out[i] = scored
            bar.update(sum(len(requests[i][0]) for i in batch))
            start += len(batch)
        bar.close()
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _batch(self, requests: list[tuple[Sequence[int], int]]) -> list[Scored]:
        S = max(len(tokens) for tokens, _ in requests)
        tokens_BS = torch.zeros(len(requests), S, dtype=torch.long)
        for b, (tokens, _) in enumerate(requests):
            tokens_BS[b, : len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
        hidden_BSD = self.model.hidden(tokens_BS.to(self.device))
        # The hidden state at position p predicts token p + 1.
        rows = [(b, p) for b, (tokens, first) in enumerate(requests) for p in range(first - 1, len(tokens) - 1)]
        b_N = torch.tensor([b for b, _ in rows], dtype=torch.long)
        p_N = torch.tensor([p for _, p in rows], dtype=torch.long)
        targets_N = tokens_BS[b_N, p_N + 1]
        logprob_N, greedy_N = self._head(hidden_BSD[b_N.to(self.device), p_N.to(self.device)], targets_N)
        out, at = [], 0
        for tokens, first in requests:
            n = len(tokens) - first
            out.append(Scored(logprob_N[at : at + n].tolist(), greedy_N[at : at + n].tolist()))
            at += n
        return out

    def _head(self, hidden_ND: torch.Tensor, targets_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs, greedy = [], []
        targets_N = targets_N.to(self.device)
        for i in range(0, hidden_ND.shape[0], self.head_rows):
            logits_NV = self.model.output(hidden_ND[i : i + self.head_rows]).float()
            target_N = targets_N[i : i + self.head_rows]
            # cross_entropy's fused log-softmax: ~7x faster on CPU than logits - logsumexp at a 202K vocabulary
            logprobs.append(-F.cross_entropy(logits_NV, target_N, reduction="none").cpu())
            greedy.append((logits_NV.argmax(dim=-1) == target_N).cpu())
        if not logprobs:
            return torch.empty(0), torch.empty(0, dtype=torch.bool)
        return torch.cat(logprobs).double(), torch.cat(greedy)


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids with BOS, continuation ids), split as lm-evaluation-harness's `TemplateLM` does."""
    if not context:  # the continuation alone, scored after BOS
        return [tokenizer.bos_id], tokenizer.encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, bos=True)
    context_ids = tokenizer.encode(context, bos=True)
    return context_ids, whole[len(context_ids) :]


def checkpoint_fingerprint(path: str | Path | None) -> str | None:
    """A short SHA-256 over a checkpoint directory's config and weight files' names, sizes and first MiB
    (enough to tell checkpoints apart without reading gigabytes), or None for a preset."""
    if path is None:
        return None
    root = Path(path)
    files = sorted(p for p in (root.rglob("*") if root.is_dir() else [root]) if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(json.dumps([str(file.relative_to(root) if root.is_dir() else file.name),
                                  file.stat().st_size]).encode())
        with open(file, "rb") as f:
            digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]
