"""What an RL step minimises: a clipped policy-gradient loss over sampled completions, with group-relative advantages.

Each prompt is answered G times (a group); a verifier scores every answer. A row's advantage is its reward minus
the group's mean, divided by the group's standard deviation (`scale_rewards="group"`, GRPO) or not (`"none"`, Dr.
GRPO). A group whose rewards are all equal has no signal: its advantages are exactly zero (not the rounding residue
of r − mean), so it contributes no gradient.

Per completion token, with r = π_θ(y) / π_old(y) and A the row's advantage:

    loss = −min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A) · w + β·KL

- π_old is, by default, the policy that sampled the token (`old_logps="sampler"`: the sampler's own log-probability,
  so with stale samples the clip bounds how far one update follows them, as in PPO), or the learner's current
  policy detached (`"learner"`, TRL's form when each batch is used once), in which case the mismatch between sampler
  and learner is corrected by a truncated importance weight w = min(π_learner / π_sampler, `is_cap`). Otherwise w = 1.
- ε_high > ε_low is DAPO's clip-higher.
- KL (β = `kl_coef` > 0) is the k3 estimator to a frozen reference, exp(ref − logπ) − (ref − logπ) − 1.
- Log-probabilities are taken at the sampling temperature, as the sampler drew them.

The loss types differ in what the sum is divided by (the trainer divides by the step's total `count`, over every
micro-batch and process, so each is invariant to how the step is split):
- `dapo`: the step's completion tokens (a token mean over the whole batch);
- `grpo`: each row's token mean, then the mean over rows;
- `dr_grpo`: rows × max_new_tokens (a constant, free of length bias).

Metrics listed in `PER_TOKEN` are token means (the trainer divides them by the step's `tokens`).

Shapes: G group size, N rows, S sequence length, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from herd.train.batches import Batch
from herd.train.objectives import IGNORE, forward

LOSS_TYPES = ("dapo", "grpo", "dr_grpo")
SCALES = ("group", "none")
OLD_LOGPS = ("sampler", "learner")


def group_advantages(rewards_PG: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """Each sample's advantage within its group [P, G]: r − mean, over (std + 1e-4) when `scale` is "group"
    (TRL's rule, unbiased std); exactly zero for a group whose rewards are all equal."""
    if scale not in SCALES:
        raise ValueError(f"scale_rewards must be one of {', '.join(SCALES)}, got {scale!r}")
    rewards_PG = rewards_PG.double()
    advantages_PG = rewards_PG - rewards_PG.mean(dim=1, keepdim=True)
    if scale == "group" and rewards_PG.shape[1] > 1:
        advantages_PG = advantages_PG / (rewards_PG.std(dim=1, keepdim=True) + 1e-4)
    flat_P = (rewards_PG == rewards_PG[:, :1]).all(dim=1, keepdim=True)
    return torch.where(flat_P, torch.zeros_like(advantages_PG), advantages_PG).float()


def clipped_token_loss(logp_T: torch.Tensor, old_T: torch.Tensor, advantage_T: torch.Tensor, clip_low: float,
                       clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """−min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A) per token, and whether the clipped side was taken."""
    ratio_T = torch.exp(logp_T - old_T)
    unclipped_T = ratio_T * advantage_T
    clipped_T = torch.clamp(ratio_T, 1 - clip_low, 1 + clip_high) * advantage_T
    return -torch.minimum(unclipped_T, clipped_T), (clipped_T < unclipped_T)


class PolicyGradient:
    PER_TOKEN = ("entropy", "clip_fraction", "is_weight", "kl", "ratio")

    def __init__(self, loss_type: str = "dapo", clip_low: float = 0.2, clip_high: float = 0.2,
                 temperature: float = 1.0, kl_coef: float = 0.0, reference: nn.Module | None = None,
                 old_logps: str = "sampler", is_cap: float = 2.0, max_new_tokens: int = 256,
                 bfloat16: bool = False) -> None:
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
        if old_logps not in OLD_LOGPS:
            raise ValueError(f"old_logps must be one of {', '.join(OLD_LOGPS)}, got {old_logps!r}")
        if kl_coef and reference is None:
            raise ValueError("a KL penalty needs the reference model")
        self.loss_type, self.clip_low, self.clip_high = loss_type, clip_low, clip_high
        self.temperature, self.kl_coef = temperature, kl_coef
        self.reference = reference.eval() if reference is not None else None
        self.old_logps, self.is_cap, self.max_new_tokens, self.bfloat16 = old_logps, is_cap, max_new_tokens, bfloat16

    def count(self, batch: Batch) -> int:
        if self.loss_type == "dapo":
            return batch.n_targets()
        rows = int((batch.targets_NS.sum(dim=1) > 0).sum())
        return rows * self.max_new_tokens if self.loss_type == "dr_grpo" else rows

    def _logps(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities of the targets at the sampling temperature [N, S], the counted mask, and the
        entropies [N, S]."""
        logits_NSV, targets_NS = forward(model, batch, self.bfloat16)
        counted_NS = targets_NS != IGNORE
        logp_NSV = F.log_softmax(logits_NSV / self.temperature, dim=-1)
        logp_NS = logp_NSV.gather(2, targets_NS.clamp_min(0)[..., None])[..., 0]
        with torch.no_grad():
            entropy_NS = -(logp_NSV.exp() * logp_NSV).sum(dim=-1)
        return logp_NS, counted_NS, entropy_NS

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.advantages_N is None or batch.behaviour_NS is None:
            raise ValueError("policy-gradient batches need advantages and the sampler's log-probabilities")
        logp_NS, counted_NS, entropy_NS = self._logps(model, batch)
        sampler_NS = batch.behaviour_NS.to(logp_NS)
        old_NS = sampler_NS if self.old_logps == "sampler" else logp_NS.detach()
        advantage_NS = batch.advantages_N.to(logp_NS)[:, None].expand_as(logp_NS)
        token_NS, clipped_NS = clipped_token_loss(logp_NS, old_NS, advantage_NS, self.clip_low, self.clip_high)
        weight_NS = torch.ones_like(logp_NS)
        if self.old_logps == "learner":
            weight_NS = torch.exp(logp_NS.detach() - sampler_NS).clamp(max=self.is_cap)
            token_NS = token_NS * weight_NS
        kl_NS = torch.zeros_like(logp_NS)
        if self.kl_coef:
            with torch.no_grad():
                reference_NS, _, _ = self._logps(self.reference, batch)
            delta_NS = torch.where(counted_NS, reference_NS - logp_NS, 0.0)  # no overflow where nothing counts
            kl_NS = torch.exp(delta_NS) - delta_NS - 1
            token_NS = token_NS + self.kl_coef * kl_NS
        token_NS = token_NS.masked_fill(~counted_NS, 0.0)
        if self.loss_type == "grpo":
            loss = (token_NS.sum(dim=1) / counted_NS.sum(dim=1).clamp_min(1)).sum()
        else:  # dapo and dr_grpo sum tokens; their counts differ
            loss = token_NS.sum()
        with torch.no_grad():
            def total(x_NS: torch.Tensor) -> torch.Tensor:
                return x_NS.float().masked_fill(~counted_NS, 0.0).sum()

            metrics = {"tokens": counted_NS.sum().float(), "entropy": total(entropy_NS),
                       "clip_fraction": total(clipped_NS), "is_weight": total(weight_NS),
                       "kl": total(kl_NS.detach()), "ratio": total(torch.exp(logp_NS.detach() - old_NS))}
        return {"loss": loss, **metrics}
