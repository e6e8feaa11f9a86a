"""Rollouts: the policy answers prompts G times each, a verifier scores the answers.

- `Sampler`: an inference copy of the policy (laid out by `herd.fast.optimize`, decoded by `FastDecode` through the
  continuous-batching scheduler), refreshed in place from the learner's weights and tagged with their version (the
  number of optimizer steps behind them). A new version drops the cached prompt prefixes.
- A prompt is prefilled once and its G samples decode in G slots (`Scheduler.submit(n=G)`). Sample j of the group
  draws with seed + j, the seed a function of (run seed, step, prompt), so a task gives the same answers on any
  process, alone or among others.
- `run_task` carries out a `Task`: a rollout (each set's quota of groups from its candidates; with dynamic sampling,
  a group whose rewards are all equal has no signal and is replaced by the set's next candidate, DAPO's dynamic
  sampling) or a profile (G answers to each listed prompt, to measure pass rates). Every group sampled is reported
  in `tried` (pass counts, reward and length sums), which is what the pool's filter and the step's metrics read; only
  kept groups are trained on.
- Tasks and results are plain JSON-able data, so they travel between processes as bytes (no pickle).

Shapes: V vocab.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from herd.chat import parse_assistant
from herd.data.filter import message_text
from herd.infer.kv_pool import KVPool
from herd.infer.sampling import SamplingParams
from herd.infer.scheduler import Scheduler
from herd.infer.steps import FastDecode
from herd.tokenizer import Tokenizer
from herd.train.prompt_pool import PromptPool

PASS = 1.0  # a sample passes when its reward reaches this (full credit)


@dataclass
class Task:
    step: int  # the optimizer step whose batch this is
    version: int  # the policy version that must sample it
    kind: str  # "rollout" | "profile"
    candidates: list[list[int]]  # per prompt set, global prompt indices in order (profile: one list)
    quotas: list[int]  # per set, the groups wanted (profile: every candidate)
    dynamic: bool = True  # replace groups without signal


@dataclass
class Result:
    step: int
    version: int
    kind: str
    groups: list[dict[str, Any]] = field(default_factory=list)  # kept: prompt, completions, logps, rewards, finish
    tried: list[dict[str, Any]] = field(default_factory=list)  # every group sampled: prompt, passed, n, sums

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Result:
        return cls(**raw)


def group_seed(seed: int, step: int, prompt: int, kind: str) -> int:
    """The seed of a group's sample 0 (sample j draws with seed + j); a profile's samples are 2^30 away from a
    rollout's, so the two never share a draw."""
    return (seed * 1_000_003 + step * 65_537 + prompt * 131 + ((1 << 30) if kind == "profile" else 0)) % (1 << 31)


class Sampler:
    """The policy's inference copy; see the module doc."""

    def __init__(self, model: nn.Module, slots: int, context: int, *, fast: bool = True) -> None:
        from herd import fast as fast_paths

        self.model = fast_paths.optimize(model.eval()) if fast else model.eval()
        self.step = FastDecode(self.model) if fast else None
        self.pool = KVPool(self.model.config, slots, context, self.model.tok_embeddings.weight.dtype,
                           self.model.tok_embeddings.weight.device)
        self.targets = self.model.state_dict()  # views: a fused weight's parts write into it
        self.version = -1

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Copy the learner's weights (a state dict of the plain model) in, as `version`."""
        missing = [k for k in state if k not in self.targets]
        if missing:
            raise KeyError(f"the sampler has no {', '.join(missing[:3])}")
        for name, value in state.items():
            self.targets[name].copy_(value)
        self.version = version

    def scheduler(self) -> Scheduler:
        """A scheduler over the sampler's pool with no cached prefixes (they may be an older version's)."""
        return Scheduler(self.model, self.pool, self.step, prefill_chunk=512)


def _sample_groups(sampler: Sampler, pool: PromptPool, tokenizer: Tokenizer, prompts: list[int], group: int,
                   params: SamplingParams, seed: int, step: int, kind: str) -> list[dict[str, Any]]:
    """G answers to each prompt, scored: one dict per prompt (in order)."""
    scheduler = sampler.scheduler()
    groups, of_request = [], {}
    for prompt in prompts:
        prompt_set, local = pool.locate(prompt)
        request = scheduler.submit(prompt_set.prompts[local],
                                   dataclasses.replace(params, seed=group_seed(seed, step, prompt, kind)), n=group)
        of_request[request] = len(groups)
        groups.append({"prompt": prompt, "completions": [[] for _ in range(group)],
                       "logps": [[] for _ in range(group)], "finish": [""] * group})
    while scheduler.has_work():
        for event in scheduler.step():
            g = groups[of_request[event.request]]
            g["completions"][event.sample].append(event.token)
            g["logps"][event.sample].append(event.sampling_logprob)
            if event.finish_reason is not None:
                g["finish"][event.sample] = event.finish_reason
    for g in groups:
        prompt_set, local = pool.locate(g["prompt"])
        rewards = []
        for tokens in g["completions"]:
            text = message_text({"content": parse_assistant(tokenizer, tokens).content})
            rewards.append(float(prompt_set.verifier(text, prompt_set.references[local])))
        g["rewards"] = rewards
    return groups


def _summary(g: dict[str, Any], eot_id: int) -> dict[str, Any]:
    return {"prompt": g["prompt"], "passed": sum(r >= PASS for r in g["rewards"]), "n": len(g["rewards"]),
            "reward": sum(g["rewards"]), "reward_sq": sum(r * r for r in g["rewards"]),
            "length": sum(len(c) for c in g["completions"]),
            "eot": sum(bool(c) and c[-1] == eot_id for c in g["completions"])}


def run_task(sampler: Sampler, pool: PromptPool, tokenizer: Tokenizer, task: Task, *, group: int,
             temperature: float, max_new_tokens: int, seed: int) -> Result:
    """Carry out a rollout or profile task with the sampler's weights (which must be the task's version)."""
    if sampler.version != task.version:
        raise RuntimeError(f"task for step {task.step} needs policy version {task.version}; the sampler holds "
                           f"{sampler.version}")
    params = SamplingParams(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens, sampling_logprobs=True)
    result = Result(task.step, task.version, task.kind)
    if task.kind == "profile":
        groups = _sample_groups(sampler, pool, tokenizer, task.candidates[0], group, params, seed, task.step, "profile")
        result.tried = [_summary(g, tokenizer.eot_id) for g in groups]
        return result
    kept: list[list[dict[str, Any]]] = [[] for _ in task.quotas]
    next_candidate = [0] * len(task.quotas)
    while True:
        wanted = []  # (set, prompt) of this round
        for i, quota in enumerate(task.quotas):
            n = quota - len(kept[i])
            take = task.candidates[i][next_candidate[i] : next_candidate[i] + n]
            next_candidate[i] += len(take)
            wanted += [(i, p) for p in take]
        if not wanted:
            break
        groups = _sample_groups(sampler, pool, tokenizer, [p for _, p in wanted], group, params, seed, task.step,
                                "rollout")
        for (i, _), g in zip(wanted, groups, strict=True):
            result.tried.append(_summary(g, tokenizer.eot_id))
            if not task.dynamic or len(set(g["rewards"])) > 1:
                kept[i].append(g)
        if not task.dynamic:
            break
    result.groups = [g for groups in kept for g in groups]
    return result
