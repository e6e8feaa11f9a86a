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


def sequence_logps(model: nn.Module, batch: Batch, bfloat16: bool = False) -> torch.Tensor:
    """Each row's summed log-probability of its counted targets, [N]."""
    inputs_NS, targets_NS = batch.tokens_NS[:, :-1], batch.tokens_NS[:, 1:]
    if batch.targets_NS is not None:
        targets_NS = targets_NS.masked_fill(~batch.targets_NS, IGNORE)
    with torch.autocast(inputs_NS.device.type, torch.bfloat16, enabled=bfloat16):
        logits_NSV = model(inputs_NS, documents_BS=batch.documents_NS)
    nll_NS = F.cross_entropy(logits_NSV.float().flatten(0, 1), targets_NS.flatten(), ignore_index=IGNORE,
                             reduction="none").view(targets_NS.shape)  # zero where ignored
    return -nll_NS.sum(dim=1)


class Preference:
    """DPO's sigmoid loss over pairs: −log σ(β·[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))]).

    The reference's log-probabilities come with the batch (computed once before training). With
    `nll_weight` > 0, the chosen side's token-mean NLL is added per pair (RPO; TRL's `rpo_alpha`). The
    metrics are TRL's: the implicit rewards β·(log π − log π_ref) of each side, their margin, and the
    fraction of pairs where the chosen reward is the larger.
    """

    def __init__(self, beta: float, nll_weight: float = 0.0, bfloat16: bool = False) -> None:
        self.beta, self.nll_weight, self.bfloat16 = beta, nll_weight, bfloat16

    def count(self, batch: Batch) -> int:
        return len(batch)

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.reference_N is None:
            raise ValueError("preference batches need the reference's log-probabilities (reference_logps)")
        logp_N = sequence_logps(model, batch, self.bfloat16)
        rewards_N = self.beta * (logp_N - batch.reference_N.to(logp_N))
        chosen_P, rejected_P = rewards_N[0::2], rewards_N[1::2]
        margin_P = chosen_P - rejected_P
        loss_P = -F.logsigmoid(margin_P)
        if self.nll_weight:
            n_chosen_P = batch.targets_NS[0::2].sum(dim=1).clamp_min(1)
            loss_P = loss_P + self.nll_weight * (-logp_N[0::2] / n_chosen_P)
        with torch.no_grad():
            metrics = {"rewards_chosen": chosen_P.sum(), "rewards_rejected": rejected_P.sum(),
                       "reward_margin": margin_P.sum(), "reward_accuracy": (margin_P > 0).float().sum()}
        return {"loss": loss_P.sum(), **metrics}


@torch.no_grad()
def reference_logps(model: nn.Module, batches: list[Batch], bfloat16: bool = False,
                    progress: bool = False) -> torch.Tensor:
    """The reference model's log-probabilities of every row of `batches`, as [pairs, 2] (chosen, rejected)."""
    from tqdm import tqdm

    model.eval()
    out = [sequence_logps(model, batch, bfloat16).view(-1, batch.group).double().cpu()
           for batch in tqdm(batches, desc="reference", unit="batch", disable=not progress)]
    return torch.cat(out)
