"""Held-out loss of a finished model: the figure the demo and the LR sweeps report.

- Every window of the split is scored (`Batches.validation` with no limit), so two models scored on the
  same split and sequence length see exactly the same tokens, and a unigram baseline over
  `target_tokens` sees them too.

Shapes: N sequences, S sequence length, V vocabulary.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from herd.data.shards import TokenShards
from herd.train.batches import Batches


@torch.no_grad()
def split_loss(model: nn.Module, shards: TokenShards, seq_len: int, batch: int = 16) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats/token) over every window of `shards`, and the tokens scored."""
    windows_NS = Batches(shards, seq_len, seed=0).validation(None)
    total = 0.0
    for i in range(0, len(windows_NS), batch):
        chunk_NS = windows_NS[i:i + batch]
        logits_NSV = model(chunk_NS[:, :-1])
        total += float(F.cross_entropy(logits_NSV.float().flatten(0, 1), chunk_NS[:, 1:].flatten(), reduction="sum"))
    n_tokens = len(windows_NS) * seq_len
    return total / n_tokens, n_tokens


def target_tokens(shards: TokenShards, seq_len: int) -> np.ndarray:
    """The tokens `split_loss` predicts: the targets of every window, in order."""
    return shards.read(1, Batches(shards, seq_len, seed=0).n_windows * seq_len)
