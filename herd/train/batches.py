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

import dataclasses
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
    reference model. `windows_N` (optional) are the rows' window indices in `split` of the token shards (what a
    precomputed teacher is keyed by). `images_N` (optional) holds each row's images (pixel tiles) in token
    order. Length and slicing count samples, not rows.
    """

    tokens_NS: torch.Tensor
    documents_NS: torch.Tensor | None = None
    targets_NS: torch.Tensor | None = None
    reference_N: torch.Tensor | None = None
    group: int = 1
    windows_N: torch.Tensor | None = None
    split: str = "train"
    on_policy: bool = False  # the counted targets were sampled from the model being trained
    images_N: list[list[torch.Tensor]] | None = None  # per row, its images' pixel tiles in token order
    advantages_N: torch.Tensor | None = None  # RL: each row's advantage
    behaviour_NS: torch.Tensor | None = None  # RL: each target's log-probability under the policy that sampled it

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        images_N = None if self.images_N is None else [[p.to(device) for p in row] for row in self.images_N]
        return dataclasses.replace(self, tokens_NS=self.tokens_NS.to(device), documents_NS=move(self.documents_NS),
                                   targets_NS=move(self.targets_NS), reference_N=move(self.reference_N),
                                   images_N=images_N, advantages_N=move(self.advantages_N),
                                   behaviour_NS=move(self.behaviour_NS))

    def __len__(self) -> int:
        return self.tokens_NS.shape[0] // self.group

    def n_targets(self) -> int:
        n, s = self.tokens_NS.shape
        return n * (s - 1) if self.targets_NS is None else int(self.targets_NS.sum())

    def slice(self, i: int, j: int) -> Batch:
        """Samples i … j - 1."""
        def rows(t: Any) -> Any:
            return None if t is None else t[i * self.group : j * self.group]

        return dataclasses.replace(self, **{f.name: rows(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if f.name.endswith("_N") or f.name.endswith("_NS")})


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

    def window_of(self, sample: int) -> int:
        """The window index of global sample `sample`."""
        return self._window(sample)

    def read(self, windows: list[int]) -> torch.Tensor:
        """Token windows [N, S + 1] by window index."""
        return torch.from_numpy(np.stack([self.shards.read(w * self.seq_len, self.seq_len + 1) for w in windows]))

    def samples(self, samples: range) -> torch.Tensor:
        """Token windows [N, S + 1] of the given global sample indices (in the shuffled order)."""
        return self.read([self._window(s) for s in samples])

    def micro_batches(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[torch.Tensor]:
        """This process's micro-batches [micro, S + 1] of optimizer step `step`."""
        return [self.samples(r) for r in step_samples(step, batch_size, rank, world, micro)]

    def validation_windows(self, n: int | None) -> list[int]:
        """min(n, available) window indices spread evenly over the split, in order (all of them for None)."""
        n = self.n_windows if n is None else min(n, self.n_windows)
        return [i * self.n_windows // n for i in range(n)]

    def validation(self, n: int | None) -> torch.Tensor:
        """The `validation_windows(n)` [N, S + 1]."""
        return self.read(self.validation_windows(n))


class TokenWindows:
    """Pretraining data: windows of the token shards (`Batches`), with documents split at BOS when masking."""

    rows_per_sample = 1

    def __init__(self, shards: TokenShards, seq_len: int, seed: int, bos_id: int | None, split: str = "train") -> None:
        self.shards, self.seq_len, self.seed, self.bos_id, self.split = shards, seq_len, seed, bos_id, split
        self.windows = Batches(shards, seq_len, seed)

    def batch(self, windows: list[int]) -> Batch:
        """These windows (by index) as a batch."""
        tokens_NS = self.windows.read(windows)
        # A window may open inside a document: its first tokens form a document of their own.
        documents = None if self.bos_id is None else (tokens_NS[:, :-1] == self.bos_id).cumsum(dim=1)
        return Batch(tokens_NS, documents, windows_N=torch.tensor(windows, dtype=torch.int64), split=self.split)

    def step_windows(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[list[int]]:
        """The window indices of this process's micro-batches of optimizer step `step`."""
        return [[self.windows.window_of(s) for s in r] for r in step_samples(step, batch_size, rank, world, micro)]

    def micro_batches(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[Batch]:
        return [self.batch(w) for w in self.step_windows(step, batch_size, rank, world, micro)]

    def validation(self, n: int) -> Batch:
        return self.batch(self.windows.validation_windows(n))

    def fingerprint(self) -> dict[str, Any]:
        m = self.shards.manifest
        return {"train_tokens": len(self.shards), "tokenizer": m.get("tokenizer", {}).get("sha256")}
