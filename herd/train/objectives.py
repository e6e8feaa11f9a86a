"""What a training step minimises, given the batches its data source hands out.

An objective gives, per micro-batch, the count its loss is a mean over (`count`, known before the
forward) and the sums of its loss and metrics (`sums`). The trainer adds up the counts of every
micro-batch on every process first and divides each sum by that total. So a step's loss is the same
token mean however the batch is split into micro-batches and processes, also when, as in fine-tuning,
micro-batches hold different numbers of supervised tokens.

- `NextToken`: next-token cross-entropy over the counted targets, which is every one in pretraining and
  the assistant's tokens in SFT. With `accuracy`, it also counts the targets that are the argmax
  (`token_accuracy`).

Shapes: N sequences, S sequence length, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from herd.train.batches import Batch

IGNORE = -100


class NextToken:
    def __init__(self, bfloat16: bool = False, accuracy: bool = False) -> None:
        self.bfloat16, self.accuracy = bfloat16, accuracy

    def count(self, batch: Batch) -> int:
        return batch.n_targets()

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """{"loss": the summed cross-entropy, ["token_accuracy": the number of argmax hits]} of the batch."""
        inputs_NS, targets_NS = batch.tokens_NS[:, :-1], batch.tokens_NS[:, 1:]
        if batch.targets_NS is not None:
            targets_NS = targets_NS.masked_fill(~batch.targets_NS, IGNORE)
        with torch.autocast(inputs_NS.device.type, torch.bfloat16, enabled=self.bfloat16):
            logits_NSV = model(inputs_NS, documents_BS=batch.documents_NS)
        logits_NSV = logits_NSV.float()
        out = {"loss": F.cross_entropy(logits_NSV.flatten(0, 1), targets_NS.flatten(), ignore_index=IGNORE,
                                       reduction="sum")}
        if self.accuracy:
            with torch.no_grad():
                out["token_accuracy"] = (logits_NSV.argmax(dim=-1) == targets_NS).sum().float()
        return out
