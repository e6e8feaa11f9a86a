"""The settings of a training run: one typed dataclass, read from a JSON file and/or CLI flags.

- Batch sizes are in sequences of `seq_len` tokens. `batch_size` is the global batch of one
  optimizer step, whatever the number of processes; `micro_batch_size` is what one process runs
  per forward, and gradient accumulation makes up the rest.
- A config file is read strictly: an unknown key is an error that names it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.config import ConfigError

SCHEDULES = ("cosine", "wsd", "constant")
OBJECTIVES = ("lm", "sft", "dpo", "distill", "rl")
PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "lm"  # lm: next-token prediction on token shards (herd train) | sft: on chat data (herd sft)
    #                        | dpo: preference pairs (herd dpo) | distill: token shards with a teacher (herd distill)
    #                        | rl: online RL on prompts with a verifier (herd rl)
    model: str = "herd-10m"  # a preset name, or a checkpoint directory / config.json to start from scratch
    init_from: str = ""  # a checkpoint to continue from (its architecture and weights; a fresh optimizer)
    vocab_size: int = 0  # 0: the model's own; else a smaller/larger embedding, e.g. the data tokenizer's size
    data: str = ""  # a directory written by `herd data prepare`
    document_masking: bool = False  # attention stays inside each packed document; positions restart at its BOS
    out: str = "runs/herd"  # checkpoints, log.jsonl and the final model go here
    seq_len: int = 512
    batch_size: int = 16  # sequences per optimizer step, across all processes
    micro_batch_size: int = 0  # sequences per process per forward; 0: batch_size / processes (no accumulation)
    steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the schedule ends at lr · min_lr_ratio
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0: no clipping
    init_std: float = 0.02  # σ: the base init std (of the proxy model under metap)
    parametrization: str = "metap"  # metap (herd.train.metap: transfers across width and depth) | standard
    metap_base: str = "herd-10m"  # the preset whose shapes metap's rules are relative to (the proxy)
    seed: int = 0
    precision: str = "float32"  # bfloat16: autocast matmuls to bf16 (weights and optimizer stay fp32)
    compile: bool = False  # torch.compile each block
    activation_checkpointing: bool = False
    router_bias_rate: float = 1e-3  # aux-loss-free balancing step; 0 turns it off
    aux_loss_coef: float = 0.0  # optional auxiliary balance loss
    eval_every: int = 100
    eval_batches: int = 8  # validation batches (of batch_size sequences)
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    beta: float = 0.1  # dpo: the strength of the pull toward the reference
    nll_weight: float = 0.0  # dpo: weight of the chosen side's NLL added to the loss (RPO; 0: plain DPO)
    reference: str = ""  # dpo, rl: the reference model ("": init_from)
    teacher: str = ""  # distill: the teacher checkpoint (the same vocabulary as the student)
    soft_loss: str = "forward_kl"  # distill: forward_kl | reverse_kl | jsd
    jsd_beta: float = 0.5  # distill: the generalized JSD's interpolation (0: forward KL, 1: reverse KL)
    temperature: float = 1.0  # distill: the soft targets' temperature τ (the soft loss is scaled by τ²)
    alpha: float = 0.5  # distill: the soft loss's weight (1 − alpha on the data's cross-entropy)
    alpha_rule: str = "fixed"  # distill: fixed | linear (alpha → alpha_end over the run) | confidence (per token)
    alpha_end: float = 0.5  # distill: where `linear` ends
    teacher_topk: int = 0  # distill on token shards: the teacher's top-k precomputed into a cache (0: on the fly)
    teacher_cache: str = ""  # distill: the top-k cache directory, shareable between runs ("": OUT/teacher_topk)
    on_policy: float = 0.0  # distill on chat data: the fraction of micro-batches answered by the student (GKD's λ)
    sample_temperature: float = 1.0  # distill on-policy, rl: the policy's sampling temperature
    max_new_tokens: int = 64  # distill on-policy, rl: the answer length cap
    group_size: int = 8  # rl: answers per prompt (G); batch_size counts answers, so a step has batch_size / G prompts
    loss_type: str = "dapo"  # rl: dapo (token mean over the batch) | grpo (per-answer token mean) | dr_grpo
    clip_low: float = 0.2  # rl: the ratio's clip below, 1 - clip_low
    clip_high: float = 0.2  # rl: the ratio's clip above, 1 + clip_high (DAPO's clip-higher: 0.28)
    scale_rewards: str = "group"  # rl: group (advantages over the group's std) | none (Dr. GRPO)
    kl_coef: float = 0.0  # rl: β of the k3 KL penalty to the reference (0: no reference model is loaded)
    old_logps: str = "sampler"  # rl: the ratio's denominator: sampler (the policy that sampled) | learner
    #                             (the learner's, detached, with a truncated importance weight for the sampler's gap)
    is_cap: float = 2.0  # rl, old_logps=learner: the importance weight's cap
    reward: str = "exact"  # rl: the verifier (exact | number | arithmetic | python[:MIN_CHARS] | module:function),
    #                        or one per prompt set, comma-separated
    dynamic_sampling: bool = True  # rl: replace groups whose rewards are all equal (no signal) with fresh prompts
    dynamic_rounds: int = 3  # rl: candidate prompts per needed group (rounds of replacement)
    pass_band: str = ""  # rl: LO,HI: train on prompts whose measured pass rate p has LO < p < HI ("": all)
    profile_every: int = 0  # rl: re-measure pass rates of a slice of the pool every N steps (0: only from rollouts)
    profile_prompts: int = 0  # rl: the slice's size (0: the whole pool)
    curriculum: str = ""  # rl: a numeric record field (e.g. a tier) whose levels unlock from the easiest
    curriculum_fraction: float = 0.5  # rl: every level is open after this fraction of the steps
    max_staleness: int = 0  # rl: how many optimizer steps older than the learner a sample's policy may be (0: sync)
    sync_every: int = 1  # rl: weights go to the samplers every K steps (K - 1 <= max_staleness)
    rollout_workers: int = 0  # rl under torchrun: processes that only sample (ranks 1..W; rank 0 learns)
    fast_rollouts: bool = True  # rl: sample with herd.fast's native decode step (else the eager model)

    def __post_init__(self) -> None:
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}"),
            (self.seq_len > 0, "seq_len must be > 0"),
            (self.vocab_size >= 0, "vocab_size must be >= 0"),
            (self.batch_size > 0, "batch_size must be > 0"),
            (self.micro_batch_size >= 0, "micro_batch_size must be >= 0"),
            (self.steps > 0, "steps must be > 0"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (0 < self.decay_fraction <= 1, "decay_fraction must be in (0, 1]"),
            (self.parametrization in ("metap", "standard"), "parametrization must be metap or standard"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.eval_batches >= 1, "eval_batches must be >= 1"),
            (self.beta > 0 and self.nll_weight >= 0, "beta must be > 0 and nll_weight >= 0"),
            (0 <= self.alpha <= 1 and 0 <= self.alpha_end <= 1, "alpha and alpha_end must be in [0, 1]"),
            (0 <= self.jsd_beta <= 1 and self.temperature > 0, "jsd_beta must be in [0, 1] and temperature > 0"),
            (self.teacher_topk >= 0 and 0 <= self.on_policy <= 1, "teacher_topk must be >= 0, on_policy in [0, 1]"),
            (self.sample_temperature >= 0 and self.max_new_tokens > 0,
             "sample_temperature must be >= 0 and max_new_tokens > 0"),
            (self.ckpt_every > 0 and self.eval_every > 0 and self.log_every > 0, "*_every must be > 0"),
            (self.group_size >= 1 and self.dynamic_rounds >= 1, "group_size and dynamic_rounds must be >= 1"),
            (self.loss_type in ("dapo", "grpo", "dr_grpo"), "loss_type must be dapo, grpo or dr_grpo"),
            (self.scale_rewards in ("group", "none"), "scale_rewards must be group or none"),
            (self.old_logps in ("sampler", "learner"), "old_logps must be sampler or learner"),
            (0 <= self.clip_low < 1 and self.clip_high >= 0 and self.is_cap > 0,
             "clip_low must be in [0, 1), clip_high >= 0 and is_cap > 0"),
            (self.kl_coef >= 0 and self.profile_every >= 0 and self.profile_prompts >= 0,
             "kl_coef, profile_every and profile_prompts must be >= 0"),
            (0 < self.curriculum_fraction <= 1, "curriculum_fraction must be in (0, 1]"),
            (self.max_staleness >= 0 and self.sync_every >= 1 and self.rollout_workers >= 0,
             "max_staleness and rollout_workers must be >= 0, sync_every >= 1"),
            (self.objective != "rl" or self.sample_temperature > 0, "rl samples: sample_temperature must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "train config") -> TrainConfig:
        return cls(**cls.values(raw, where))

    @classmethod
    def values(cls, raw: dict[str, Any], where: str = "train config") -> dict[str, Any]:
        """The typed values of the fields `raw` names; an unknown key or a wrong type is an error naming it."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values = {}
        for key, value in raw.items():
            kind = type(getattr(cls(), key))
            try:
                values[key] = kind(value) if kind is not bool else _as_bool(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key}={value!r} is not a {kind.__name__}") from None
        return values

    @classmethod
    def file_values(cls, path: str | Path) -> dict[str, Any]:
        """The typed values a JSON config file sets (only those it names)."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read train config {path}: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a train config is a JSON object")
        return cls.values(raw, str(path))

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls(**cls.file_values(path))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(value)


# Fields that change the trajectory of a run; a resume with other values is refused.
TRAJECTORY_FIELDS = (
    "objective", "model", "init_from", "document_masking", "vocab_size",
    "seq_len", "batch_size", "steps", "lr", "min_lr_ratio", "warmup_steps", "schedule",
    "decay_fraction", "weight_decay", "beta1", "beta2", "eps", "grad_clip", "init_std", "parametrization",
    "metap_base", "seed", "precision", "router_bias_rate", "aux_loss_coef", "beta", "nll_weight", "reference",
    "teacher", "soft_loss", "jsd_beta", "temperature", "alpha", "alpha_rule", "alpha_end", "teacher_topk",
    "on_policy", "sample_temperature", "max_new_tokens", "group_size", "loss_type", "clip_low", "clip_high",
    "scale_rewards", "kl_coef", "old_logps", "is_cap", "reward", "dynamic_sampling", "dynamic_rounds", "pass_band",
    "profile_every", "profile_prompts", "curriculum", "curriculum_fraction", "max_staleness", "sync_every",
    "fast_rollouts",
)
