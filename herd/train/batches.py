"""Which tokens each process trains on at each step: a pure function of (seed, step), so a resumed
run needs only its step count, and the global batch is the same for any number of processes.

- The training stream is cut into non-overlapping windows of seq_len + 1 tokens (inputs and the
  next-token targets); each epoch visits every window once in a seeded random order.
- Optimizer step s takes global samples s·B … s·B + B - 1 (B = batch_size); process r of W takes
  its contiguous B/W of them, in micro-batches.
- Validation uses windows spread evenly over the held-out split, always the same ones: the first
  windows alone would score only the first documents (a held-out split of a few files can open with a
  generated table that any model predicts almost perfectly).

Shapes: N sequences, S sequence length.
"""

from __future__ import annotations

import numpy as np
import torch

from herd.data.shards import TokenShards


class Batches:
    def __init__(self, shards: TokenShards, seq_len: int, seed: int) -> None:
        self.shards, self.seq_len, self.seed = shards, seq_len, seed
        self.n_windows = (len(shards) - 1) // seq_len
        if self.n_windows < 1:
            raise ValueError(f"{len(shards)} tokens are too few for one sequence of {seq_len} + 1")
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def _window(self, sample: int) -> int:
        epoch, i = divmod(sample, self.n_windows)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.n_windows, generator=generator).numpy()
            self._epoch = epoch
        return int(self._order[i])

    def samples(self, samples: range) -> torch.Tensor:
        """Token windows [N, S + 1] of the given global sample indices (in the shuffled order)."""
        rows = [self.shards.read(self._window(s) * self.seq_len, self.seq_len + 1) for s in samples]
        return torch.from_numpy(np.stack(rows))

    def micro_batches(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[torch.Tensor]:
        """This process's micro-batches [micro, S + 1] of optimizer step `step`."""
        per_rank = batch_size // world
        first = step * batch_size + rank * per_rank
        return [self.samples(range(first + m, first + m + micro)) for m in range(0, per_rank, micro)]

    def validation(self, n: int | None) -> torch.Tensor:
        """min(n, available) windows [N, S + 1] spread evenly over the split, in order (all of them for None)."""
        n = self.n_windows if n is None else min(n, self.n_windows)
        picks = [i * self.n_windows // n for i in range(n)]
        return torch.from_numpy(np.stack([self.shards.read(i * self.seq_len, self.seq_len + 1) for i in picks]))
