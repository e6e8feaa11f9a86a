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

import math

import torch
import torch.nn.functional as F
from torch import nn

from herd.train.batches import Batch
from herd.train.teacher_cache import TopKCache

IGNORE = -100


def forward(model: nn.Module, batch: Batch, bfloat16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's next-token logits [N, S, V] in fp32 and its targets [N, S], IGNORE where not counted."""
    inputs_NS, targets_NS = batch.tokens_NS[:, :-1], batch.tokens_NS[:, 1:]
    if batch.targets_NS is not None:
        targets_NS = targets_NS.masked_fill(~batch.targets_NS, IGNORE)
    pixels = [p for row in batch.images_N for p in row] if batch.images_N else None
    with torch.autocast(inputs_NS.device.type, torch.bfloat16, enabled=bfloat16):
        logits_NSV = model(inputs_NS, documents_BS=batch.documents_NS, pixels=pixels or None)
    return logits_NSV.float(), targets_NS


class NextToken:
    def __init__(self, bfloat16: bool = False, accuracy: bool = False) -> None:
        self.bfloat16, self.accuracy = bfloat16, accuracy

    def count(self, batch: Batch) -> int:
        return batch.n_targets()

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """{"loss": the summed cross-entropy, ["token_accuracy": the number of argmax hits]} of the batch."""
        logits_NSV, targets_NS = forward(model, batch, self.bfloat16)
        out = {"loss": F.cross_entropy(logits_NSV.flatten(0, 1), targets_NS.flatten(), ignore_index=IGNORE,
                                       reduction="sum")}
        if self.accuracy:
            with torch.no_grad():
                out["token_accuracy"] = (logits_NSV.argmax(dim=-1) == targets_NS).sum().float()
        return out


def sequence_logps(model: nn.Module, batch: Batch, bfloat16: bool = False) -> torch.Tensor:
    """Each row's summed log-probability of its counted targets, [N]."""
    logits_NSV, targets_NS = forward(model, batch, bfloat16)
    nll_NS = F.cross_entropy(logits_NSV.flatten(0, 1), targets_NS.flatten(), ignore_index=IGNORE,
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


SOFT_LOSSES = ("forward_kl", "reverse_kl", "jsd")
ALPHA_RULES = ("fixed", "linear", "confidence")


def _divergence(t_NV: torch.Tensor, s_NV: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """The soft loss between teacher and student log-probabilities over the same support, per row [N]."""
    def kl(p_NV: torch.Tensor, q_NV: torch.Tensor) -> torch.Tensor:  # KL(p ‖ q) from log-probabilities
        return (p_NV.exp() * (p_NV - q_NV)).sum(dim=-1)

    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return kl(t_NV, s_NV)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return kl(s_NV, t_NV)
    if kind != "jsd":
        raise ValueError(f"soft loss must be one of {', '.join(SOFT_LOSSES)}, got {kind!r}")
    m_NV = torch.logsumexp(torch.stack([t_NV + math.log(beta), s_NV + math.log1p(-beta)]), dim=0)
    return beta * kl(t_NV, m_NV) + (1 - beta) * kl(s_NV, m_NV)


def soft_loss(student_NV: torch.Tensor, teacher_NV: torch.Tensor, kind: str, beta: float = 0.5,
              temperature: float = 1.0) -> torch.Tensor:
    """Per-row divergence between the teacher's and the student's next-token distributions at `temperature`, [N].

    forward_kl = KL(teacher ‖ student) (mass-covering, classic distillation); reverse_kl = KL(student ‖ teacher)
    (mode-seeking); jsd = β·KL(teacher ‖ M) + (1 − β)·KL(student ‖ M) with M = β·teacher + (1 − β)·student,
    the generalized JSD of GKD, taken as forward KL at β = 0 and reverse KL at β = 1 (TRL's convention).
    """
    s_NV = F.log_softmax(student_NV.float() / temperature, dim=-1)
    t_NV = F.log_softmax(teacher_NV.float() / temperature, dim=-1)
    return _divergence(t_NV, s_NV, kind, beta)


def soft_loss_topk(student_NV: torch.Tensor, ids_NK: torch.Tensor, teacher_NK: torch.Tensor, kind: str,
                   beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """`soft_loss` against a teacher known by its top-k ids and log-probabilities, per row [N].

    The teacher is renormalised over its k ids at τ. forward_kl takes the student's full softmax at those ids (the
    teacher's tail counts as zero, so the loss also pulls the student's mass into the teacher's top-k);
    reverse_kl and jsd weigh by the student's own probabilities and need them where the teacher has mass, so the
    student is renormalised over the same k ids. With k = V every kind equals `soft_loss`.
    """
    t_NK = F.log_softmax(teacher_NK.float() / temperature, dim=-1)
    s_NV = student_NV.float() / temperature
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return _divergence(t_NK, F.log_softmax(s_NV, dim=-1).gather(1, ids_NK), "forward_kl", beta)
    return _divergence(t_NK, F.log_softmax(s_NV.gather(1, ids_NK), dim=-1), kind, beta)


class Distill:
    """Distillation from a teacher on the same tokens: per target, α·τ²·soft + (1 − α)·hard, hard the
    cross-entropy with the data's next token, soft a divergence from the teacher at temperature τ (τ² keeps the
    soft gradients' scale as τ changes, as in Hinton et al.).

    α is `fixed`; `linear` from `alpha` to `alpha_end` over the run; or `confidence`: per token, α·p_teacher(y),
    the probability the teacher gives the true next token (at τ = 1). Where the teacher is right and sure its
    distribution is the richer target; where it gives the truth little mass its soft target would teach the
    student its mistake, so the data's token takes over. This is the rule we chose for Meta's "dynamic"
    weighting of soft and hard targets, which Meta did not publish.
    """

    def __init__(self, teacher: nn.Module | None, kind: str = "forward_kl", alpha: float = 0.5, rule: str = "fixed",
                 alpha_end: float = 0.5, beta: float = 0.5, temperature: float = 1.0, bfloat16: bool = False,
                 cache: TopKCache | None = None) -> None:
        if rule not in ALPHA_RULES:
            raise ValueError(f"alpha rule must be one of {', '.join(ALPHA_RULES)}, got {rule!r}")
        if kind not in SOFT_LOSSES:
            raise ValueError(f"soft loss must be one of {', '.join(SOFT_LOSSES)}, got {kind!r}")
        self.teacher = teacher.eval() if teacher is not None else None
        self.kind, self.alpha, self.rule, self.alpha_end = kind, alpha, rule, alpha_end
        self.beta, self.temperature, self.bfloat16 = beta, temperature, bfloat16
        self.cache = cache  # the teacher's precomputed top-k, used instead of `teacher` when set
        self.progress = 0.0  # the run's fraction done, set by the trainer each step (for `linear`)

    def count(self, batch: Batch) -> int:
        return batch.n_targets()

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        student_NSV, targets_NS = forward(model, batch, self.bfloat16)
        counted_NS = targets_NS != IGNORE
        student_TV, target_T = student_NSV[counted_NS], targets_NS[counted_NS]
        hard_T = F.cross_entropy(student_TV, target_T, reduction="none")
        if self.cache is not None:
            if batch.windows_N is None:
                raise ValueError("a precomputed teacher needs batches of token-shard windows")
            ids_NSK, logps_NSK = self.cache.read(batch.split, batch.windows_N.tolist())
            ids_TK, logps_TK = ids_NSK.to(target_T.device)[counted_NS], logps_NSK.to(target_T.device)[counted_NS]
            soft_T = soft_loss_topk(student_TV, ids_TK, logps_TK, self.kind, self.beta, self.temperature)
            with torch.no_grad():  # the teacher's probability of the true token (0 outside its top-k)
                p_true_T = (logps_TK.exp() * (ids_TK == target_T[:, None])).sum(dim=-1)
        else:
            if self.teacher is None:
                raise ValueError("distillation needs a teacher model or its precomputed top-k")
            with torch.no_grad():
                teacher_NSV, _ = forward(self.teacher, batch, self.bfloat16)
            teacher_TV = teacher_NSV[counted_NS]
            soft_T = soft_loss(student_TV, teacher_TV, self.kind, self.beta, self.temperature)
            with torch.no_grad():
                p_true_T = torch.softmax(teacher_TV, dim=-1).gather(1, target_T[:, None])[:, 0]
        soft_T = soft_T * self.temperature**2
        if batch.on_policy:  # the targets are the student's own samples, not the truth: the teacher alone teaches
            alpha_T = torch.ones_like(hard_T)
        elif self.rule == "confidence":
            alpha_T = self.alpha * p_true_T
        else:
            value = self.alpha + (self.alpha_end - self.alpha) * self.progress if self.rule == "linear" else self.alpha
            alpha_T = torch.full_like(hard_T, value)
        loss_T = alpha_T * soft_T + (1 - alpha_T) * hard_T
        return {"loss": loss_T.sum(), "hard_loss": hard_T.detach().sum(), "soft_loss": soft_T.detach().sum(),
                "alpha": alpha_T.sum()}
