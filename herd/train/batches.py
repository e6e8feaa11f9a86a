"""Which tokens each process trains on at each step: a pure function of (seed, step), so a resumed
run needs only its step count, and the global batch is the same for any number of processes.

- The training stream is cut into non-overlapping windows of seq_len + 1 tokens (inputs and the
  next-token targets); each epoch visits every window once in a seeded random order.
- Optimizer step s takes global samples s·B … s·B + B - 1 (B = batch_size); process r of W takes
  its contiguous B/W of them, in micro-batches.
- Validation uses windows spread evenly over the held-out split, always the same ones: the first
  windows alone would score only the first documents (a held-out split of a few files can open with a
  generated table that any model predicts almost perfectly).

`Batch` is what every training data source hands the trainer; `TokenWindows` makes them from `Batches`.

Shapes: N sequences, S sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from herd.data.shards import TokenShards


@dataclass
class Batch:
    """Sequences of S + 1 tokens: the inputs are the first S, the next-token targets the last S.

    `documents_NS` (optional) numbers the packed documents of the inputs: attention stays inside each and
    positions restart at its start. `targets_NS` (optional) marks the targets that count in the loss
    (supervised tokens in fine-tuning); None counts every one. A sample is `group` rows (a preference
    pair's chosen and rejected rows); `reference_N` (optional) is each row's log-probability under the
    reference model. Length and slicing count samples, not rows.
    """

    tokens_NS: torch.Tensor
    documents_NS: torch.Tensor | None = None
    targets_NS: torch.Tensor | None = None
    reference_N: torch.Tensor | None = None
    group: int = 1

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Batch(self.tokens_NS.to(device), move(self.documents_NS), move(self.targets_NS),
                     move(self.reference_N), self.group)

    def __len__(self) -> int:
        return self.tokens_NS.shape[0] // self.group

    def n_targets(self) -> int:
        n, s = self.tokens_NS.shape
        return n * (s - 1) if self.targets_NS is None else int(self.targets_NS.sum())

    def slice(self, i: int, j: int) -> Batch:
        """Samples i … j - 1."""
        def rows(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[i * self.group : j * self.group]

        return Batch(self.tokens_NS[i * self.group : j * self.group], rows(self.documents_NS), rows(self.targets_NS),
                     rows(self.reference_N), self.group)


def step_samples(step: int, batch_size: int, rank: int, world: int, micro: int) -> list[range]:
    """The global sample indices of process `rank`'s micro-batches in optimizer step `step`: samples s·B … s·B + B - 1,
    split into `world` contiguous shares, each cut into micro-batches of `micro`."""
    per_rank = batch_size // world
    first = step * batch_size + rank * per_rank
    return [range(first + m, first + m + micro) for m in range(0, per_rank, micro)]


class EpochOrder:
    """Global sample s -> item: each epoch visits all n items once, in a seeded random order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=generator).numpy()

    def __call__(self, sample: int) -> int:
        epoch, i = divmod(sample, self.n)
        if epoch != self._epoch:
            self._order, self._epoch = self.permutation(epoch), epoch
        return int(self._order[i])


class Batches:
    def __init__(self, shards: TokenShards, seq_len: int, seed: int) -> None:
        self.shards, self.seq_len, self.seed = shards, seq_len, seed
        self.n_windows = (len(shards) - 1) // seq_len
        if self.n_windows < 1:
            raise ValueError(f"{len(shards)} tokens are too few for one sequence of {seq_len} + 1")
        self._window = EpochOrder(self.n_windows, seed)

    def samples(self, samples: range) -> torch.Tensor:
        """Token windows [N, S + 1] of the given global sample indices (in the shuffled order)."""
        rows = [self.shards.read(self._window(s) * self.seq_len, self.seq_len + 1) for s in samples]
        return torch.from_numpy(np.stack(rows))

    def micro_batches(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[torch.Tensor]:
        """This process's micro-batches [micro, S + 1] of optimizer step `step`."""
        return [self.samples(r) for r in step_samples(step, batch_size, rank, world, micro)]

    def validation(self, n: int | None) -> torch.Tensor:
        """min(n, available) windows [N, S + 1] spread evenly over the split, in order (all of them for None)."""
        n = self.n_windows if n is None else min(n, self.n_windows)
        picks = [i * self.n_windows // n for i in range(n)]
        return torch.from_numpy(np.stack([self.shards.read(i * self.seq_len, self.seq_len + 1) for i in picks]))


class TokenWindows:
    """Pretraining data: windows of the token shards (`Batches`), with documents split at BOS when masking."""

    rows_per_sample = 1

    def __init__(self, shards: TokenShards, seq_len: int, seed: int, bos_id: int | None) -> None:
        self.shards, self.seq_len, self.seed, self.bos_id = shards, seq_len, seed, bos_id
        self.windows = Batches(shards, seq_len, seed)

    def _batch(self, tokens_NS: torch.Tensor) -> Batch:
        # A window may open inside a document: its first tokens form a document of their own.
        documents = None if self.bos_id is None else (tokens_NS[:, :-1] == self.bos_id).cumsum(dim=1)
        return Batch(tokens_NS, documents)

    def micro_batches(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[Batch]:
        return [self._batch(t) for t in self.windows.micro_batches(step, batch_size, rank, world, micro)]

    def validation(self, n: int) -> Batch:
        return self._batch(self.windows.validation(n))

    def fingerprint(self) -> dict[str, Any]:
        m = self.shards.manifest
        return {"train_tokens": len(self.shards), "tokenizer": m.get("tokenizer", {}).get("sha256")}
