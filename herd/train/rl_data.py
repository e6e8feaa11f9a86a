"""Where an RL run's batches come from: rollout tasks dispatched by policy version, run here or on rollout workers.

The schedule is a pure function of the step, so the run is the same whether its rollouts are made by the learner
itself or by workers running ahead of it, and a resumed run continues bit for bit:

- Step t trains on a batch sampled by policy version v(t) = K·⌊max(0, t − lag)/K⌋, with K = `sync_every` (weights
  reach the samplers every K steps) and lag = `max_staleness` − (K − 1). So t − v(t) ≤ `max_staleness`, the bound
  on how stale a sample may be. `max_staleness` 0 is the synchronous mode: every batch is sampled by the weights
  it trains.
- The moment version v exists (after v optimizer steps), the learner dispatches the tasks of every step t with
  v(t) = v: their prompts are chosen then, from the pool as it stands (`herd.train.prompt_pool`), and, every
  `profile_every` steps, a profile task re-measures a slice of the pool. Results are consumed in step order; the
  pool learns from each step's groups when that step is trained.
- Executors: without workers the learner (the main one, when several train under FSDP: it samples for all and
  broadcasts the result, the others wait, so add rollout workers rather than learners) runs each task as it is
  dispatched (on an inference copy refreshed to the
  current weights). Under torchrun with `rollout_workers` W, ranks 1…W are rollout workers and rank 0 the learner:
  tasks go to the workers in turn, each preceded by the version's weights when that worker lacks them, while the
  learner trains; it blocks only when the batch it needs is not back yet (its idle time is logged).
- Messages are JSON plus one flat float tensor, over torch.distributed point-to-point in a gloo group (the default
  group on CPU; on GPUs, where the default is NCCL, a gloo group beside it, the weights passing through host
  memory), each tagged with its sequence number on its channel, so nothing is pickled and order never depends on
  timing.
- A checkpoint waits for every dispatched task and stores the results not yet trained on with the pool's state, so a
  run killed at any point (a worker or the learner, e.g. `kill -9`) resumes from its last checkpoint and redoes the
  same steps; under `torchrun --max-restarts N` the restarted processes resume by themselves.

Shapes: N rows, S sequence length.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from herd.config import ConfigError, TextConfig
from herd.model import Transformer
from herd.tokenizer import Tokenizer
from herd.train import faults
from herd.train.batches import Batch
from herd.train.config import TrainConfig
from herd.train.policy_gradient import group_advantages
from herd.train.prompt_pool import PromptPool, parse_sets, read_set
from herd.train.rollouts import Result, Sampler, Task, run_task

log = logging.getLogger("herd")


def build_pool(config: TrainConfig, tokenizer: Tokenizer) -> PromptPool:
    max_prompt = config.seq_len - config.max_new_tokens
    if max_prompt < 1:
        raise ConfigError(f"seq_len {config.seq_len} leaves no room for a prompt after max_new_tokens "
                          f"{config.max_new_tokens}")
    sets = [read_set(path, weight, reward, tokenizer, max_prompt, config.curriculum)
            for path, weight, reward in parse_sets(config.data, config.reward)]
    band = None
    if config.pass_band:
        try:
            lo, hi = (float(x) for x in config.pass_band.split(","))
        except ValueError:
            raise ConfigError(f"pass_band is LO,HI (e.g. 0,0.9), got {config.pass_band!r}") from None
        if not 0 <= lo < hi <= 1:
            raise ConfigError(f"pass_band LO,HI needs 0 <= LO < HI <= 1, got {config.pass_band!r}")
        band = (lo, hi)
    return PromptPool(sets, config.seed, band, bool(config.curriculum), config.curriculum_fraction)


def sampler_slots(config: TrainConfig) -> int:
    """KV slots of a sampler: whole groups, up to 64 sequences (the native decode step's batch)."""
    prompts = config.batch_size // config.group_size
    return config.group_size * max(1, min(prompts, 64 // config.group_size))


def new_sampler(text: TextConfig, config: TrainConfig, device: torch.device) -> Sampler:
    with torch.device("meta"):
        model = Transformer(text)
    model.to_empty(device=device)
    model.init_buffers()
    return Sampler(model, sampler_slots(config), config.seq_len, fast=config.fast_rollouts)


def control_group() -> dist.ProcessGroup | None:
    """The group the RL messages travel in: the default one when it is gloo, else a gloo group of every process
    (collective: the learner and every worker call it once, first)."""
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


class Channel:
    """Ordered messages to and from one peer process: a JSON header and an optional flat fp32 tensor each."""

    def __init__(self, peer: int, group: dist.ProcessGroup | None = None) -> None:
        self.peer, self.group, self.sent, self.received = peer, group, 0, 0
        self._in_flight: list[tuple[list[Any], list[torch.Tensor]]] = []

    def send(self, header: dict[str, Any], tensor: torch.Tensor | None = None) -> None:
        """Queue a message (non-blocking; its buffers live until the peer has it)."""
        data = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
        sizes = torch.tensor([data.numel(), -1 if tensor is None else tensor.numel()], dtype=torch.int64)
        tag = 3 * self.sent
        self.sent += 1
        keep = [sizes, data] + ([tensor] if tensor is not None else [])
        works = [dist.isend(t, self.peer, group=self.group, tag=tag + i) for i, t in enumerate(keep)]
        self._in_flight.append((works, keep))
        self._in_flight = [(w, k) for w, k in self._in_flight if not all(x.is_completed() for x in w)]

    def recv(self) -> tuple[dict[str, Any], torch.Tensor | None]:
        tag = 3 * self.received
        self.received += 1
        sizes = torch.zeros(2, dtype=torch.int64)
        dist.recv(sizes, self.peer, group=self.group, tag=tag)
        data = torch.empty(int(sizes[0]), dtype=torch.uint8)
        dist.recv(data, self.peer, group=self.group, tag=tag + 1)
        tensor = None
        if sizes[1] >= 0:
            tensor = torch.empty(int(sizes[1]), dtype=torch.float32)
            dist.recv(tensor, self.peer, group=self.group, tag=tag + 2)
        return json.loads(bytes(data.numpy())), tensor

    def flush(self) -> None:
        for works, _ in self._in_flight:
            for work in works:
                work.wait()
        self._in_flight = []


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    from herd.train.checkpoints import full_model_state

    return {k: v for k, v in full_model_state(model).items() if v.is_floating_point()}


class LocalExecutor:
    """Runs each task on this process as it is dispatched, with the weights of that moment."""

    def __init__(self, sampler: Sampler, run: Any) -> None:
        self.sampler, self.run = sampler, run
        self._done: dict[tuple[str, int], Result] = {}
        self.busy_s = 0.0  # the learner's time spent sampling

    def submit(self, task: Task, weights: dict[str, torch.Tensor]) -> None:
        began = time.perf_counter()
        if self.sampler.version != task.version:
            self.sampler.load(weights, task.version)
        self._done[(task.kind, task.step)] = self.run(self.sampler, task)
        self.busy_s += time.perf_counter() - began

    def collect(self, kind: str, step: int) -> Result:
        if (kind, step) not in self._done:
            raise RuntimeError(f"no {kind} task of step {step} was dispatched")
        return self._done.pop((kind, step))

    def close(self, clean: bool = True) -> None:
        pass


class RemoteExecutor:
    """Sends tasks to rollout workers in turn (each preceded by its version's weights when the worker lacks them) and
    receives their results in each worker's order."""

    def __init__(self, workers: list[int]) -> None:
        group = control_group()
        self.channels = {w: Channel(w, group) for w in workers}
        self.version = {w: -1 for w in workers}
        self.expected: dict[int, deque[tuple[str, int]]] = {w: deque() for w in workers}
        self.where: dict[tuple[str, int], int] = {}
        self._arrived: dict[tuple[str, int], Result] = {}
        self._turn = 0
        self._flat: tuple[int, dict[str, Any], torch.Tensor] | None = None  # one version's weights, sent to all

    def submit(self, task: Task, weights: dict[str, torch.Tensor]) -> None:
        workers = list(self.channels)
        worker = workers[self._turn % len(workers)]
        self._turn += 1
        channel = self.channels[worker]
        if self.version[worker] != task.version:
            if self._flat is None or self._flat[0] != task.version:
                names = list(weights)
                flat = torch.cat([weights[k].detach().reshape(-1).float().cpu() for k in names])
                header = {"kind": "weights", "version": task.version, "names": names,
                          "shapes": [list(weights[k].shape) for k in names]}
                self._flat = (task.version, header, flat)
            channel.send(self._flat[1], self._flat[2])
            self.version[worker] = task.version
        channel.send({"kind": "task", "task": task.__dict__})
        key = (task.kind, task.step)
        self.expected[worker].append(key)
        self.where[key] = worker

    def collect(self, kind: str, step: int) -> Result:
        key = (kind, step)
        if key not in self.where:
            raise RuntimeError(f"no {kind} task of step {step} was dispatched")
        worker = self.where.pop(key)
        while key not in self._arrived:
            header, _ = self.channels[worker].recv()
            if header.get("kind") != "result":
                raise RuntimeError(f"rollout worker {worker} failed: {header.get('message', header)}")
            arrived = self.expected[worker].popleft()
            result = Result.from_dict(header["result"])
            if (result.kind, result.step) != arrived:
                raise RuntimeError(f"rollout worker {worker} answered {result.kind} {result.step}, expected {arrived}")
            self._arrived[arrived] = result
        return self._arrived.pop(key)

    def close(self, clean: bool = True) -> None:
        """Tell the workers to stop; after a clean run wait until they have the message (after an error, do not
        wait on peers that may be gone)."""
        for channel in self.channels.values():
            channel.send({"kind": "stop"})
        if clean:
            for channel in self.channels.values():
                channel.flush()


class RolloutData:
    """The trainer's data source for `objective="rl"`; see the module doc."""

    rows_per_sample = 1

    def __init__(self, config: TrainConfig, tokenizer: Tokenizer, text: TextConfig, rank: int, learners: int,
                 workers: list[int]) -> None:
        c = self.config = config
        if c.batch_size % c.group_size:
            raise ConfigError(f"batch_size {c.batch_size} (completions per step) must be a multiple of group_size "
                              f"{c.group_size}")
        if c.sync_every - 1 > c.max_staleness:
            raise ConfigError(f"weights every {c.sync_every} steps make samples up to {c.sync_every - 1} steps stale: "
                              f"raise max_staleness to at least that")
        self.tokenizer, self.text, self.rank, self.learners, self.workers = tokenizer, text, rank, learners, workers
        self.pool = build_pool(config, tokenizer)
        self.pad_id = text.pad_id if text.pad_id is not None and text.pad_id >= 0 else 0
        self.lag = c.max_staleness - (c.sync_every - 1)
        self.prompts_per_step = c.batch_size // c.group_size
        self.dispatched = -1  # the last step whose task is out
        self.next_step = 0  # the next step to train
        self.ready: dict[int, Result] = {}  # collected results of steps not yet trained
        self.profiles: dict[int, Result] = {}
        self.executor: LocalExecutor | RemoteExecutor | None = None
        self.metrics: dict[str, Any] = {}
        self.idle_s = 0.0
        self.completions = 0

    # ---- the schedule ----

    def version_for(self, step: int) -> int:
        k = self.config.sync_every
        return k * (max(0, step - self.lag) // k)

    def _run(self, sampler: Sampler, task: Task) -> Result:
        c = self.config
        return run_task(sampler, self.pool, self.tokenizer, task, group=c.group_size,
                        temperature=c.sample_temperature, max_new_tokens=c.max_new_tokens, seed=c.seed)

    def start(self, model: nn.Module, step: int, saved: dict[str, Any] | None) -> None:
        """Set up the executor; restore a resumed run's pool and pending results, else dispatch version `step`'s
        tasks."""
        if self.workers:
            self.executor = RemoteExecutor(self.workers)
        elif self.rank == 0:
            self.executor = LocalExecutor(new_sampler(self.text, self.config, self._device(model)), self._run)
        if saved is not None:
            self.pool.load_state_dict(saved["pool"])
            self.dispatched = int(saved["dispatched"])
            self.ready = {int(k): Result.from_dict(v) for k, v in saved["ready"].items()}
            self.profiles = {int(k): Result.from_dict(v) for k, v in saved["profiles"].items()}
            self.completions = int(saved.get("completions", 0))
            self.next_step = step
            return
        self.next_step = step
        self.advance(step, model)

    @staticmethod
    def _device(model: nn.Module) -> torch.device:
        return next(model.parameters()).device

    def advance(self, version: int, model: nn.Module) -> None:
        """Version `version` of the weights exists: dispatch the tasks it samples (collective over learners)."""
        c = self.config
        steps = [t for t in range(self.dispatched + 1, c.steps) if self.version_for(t) == version]
        if not steps:
            return
        weights = _weights(model)  # every learner takes part in gathering the full state
        if self.rank != 0:
            self.dispatched = steps[-1]
            return
        for t in steps:
            if c.profile_every and t % c.profile_every == 0:
                prompts = self.pool.profile_slice(c.profile_prompts)
                self.executor.submit(Task(t, version, "profile", [prompts], [len(prompts)], False), weights)
            candidates, quotas = self.pool.candidates(t, c.steps, self.prompts_per_step,
                                                      c.dynamic_rounds if c.dynamic_sampling else 1)
            self.executor.submit(Task(t, version, "rollout", candidates, quotas, c.dynamic_sampling), weights)
            self.dispatched = t

    def _fetch(self, step: int) -> None:
        """Wait for step `step`'s results (its profile first, when it has one) and keep them until it trains."""
        if self.config.profile_every and step % self.config.profile_every == 0:
            self.profiles[step] = self.executor.collect("profile", step)
        self.ready[step] = self.executor.collect("rollout", step)

    def _collect(self, step: int) -> Result:
        """Step `step`'s rollout result (waiting for it), with its profile applied to the pool first."""
        if step not in self.ready:
            began = time.perf_counter()
            self._fetch(step)
            self.idle_s += time.perf_counter() - began
        profile = self.profiles.pop(step, None)
        if profile is not None:
            self.pool.update(profile.tried)
        return self.ready.pop(step)

    def _shared_result(self, step: int) -> Result:
        """The step's result on every learner (the main one collects it and broadcasts it as JSON)."""
        result = self._collect(step) if self.rank == 0 else None
        if self.learners == 1:
            return result
        payload = [json.dumps(result.to_dict()) if result is not None else None]
        dist.broadcast_object_list(payload, src=0)  # a JSON string, between this run's own learner processes
        return result if result is not None else Result.from_dict(json.loads(payload[0]))

    # ---- batches ----

    def micro_batches(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[Batch]:
        result = self._shared_result(step)
        self.next_step = step + 1
        self.pool.update(result.tried)
        self.metrics = self._metrics(step, result)
        rows = self._rows(result)
        self.completions += sum(t["n"] for t in result.tried)
        per_rank = math.ceil(len(rows) / world)
        mine = rows[rank * per_rank : (rank + 1) * per_rank]
        n_micro = math.ceil(per_rank / micro)
        return [self._batch(mine[i * micro : (i + 1) * micro]) for i in range(n_micro)]

    def _rows(self, result: Result) -> list[tuple[list[int], list[int], list[float], float]]:
        """(prompt, completion, sampler log-probabilities, advantage) per trained row, groups in dispatch order."""
        rows = []
        for g in result.groups:
            advantages = group_advantages(torch.tensor([g["rewards"]]), self.config.scale_rewards)[0].tolist()
            prompt_set, local = self.pool.locate(g["prompt"])
            for completion, logps, advantage in zip(g["completions"], g["logps"], advantages, strict=True):
                rows.append((prompt_set.prompts[local], completion, logps, advantage))
        return rows

    def _batch(self, rows: list[tuple[list[int], list[int], list[float], float]]) -> Batch:
        """Rows padded to the longest; only completion tokens are targets. No rows: one empty row (counts nothing),
        so that every learner runs as many forwards as the others."""
        if not rows:
            rows = [([self.pad_id, self.pad_id], [], [], 0.0)]
        length = max(len(p) + len(c) for p, c, _, _ in rows)
        tokens_NS = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        targets_NS = torch.zeros(len(rows), length - 1, dtype=torch.bool)
        behaviour_NS = torch.zeros(len(rows), length - 1)
        for n, (prompt, completion, logps, _) in enumerate(rows):
            ids = prompt + completion
            tokens_NS[n, : len(ids)] = torch.tensor(ids)
            targets_NS[n, len(prompt) - 1 : len(ids) - 1] = True
            behaviour_NS[n, len(prompt) - 1 : len(ids) - 1] = torch.tensor(logps, dtype=torch.float32)
        return Batch(tokens_NS, targets_NS=targets_NS, advantages_N=torch.tensor([r[3] for r in rows]),
                     behaviour_NS=behaviour_NS)

    def _metrics(self, step: int, result: Result) -> dict[str, Any]:
        """Rollout metrics over every group the policy sampled for the step (kept or dropped)."""
        tried, g = result.tried, self.config.group_size
        n = sum(t["n"] for t in tried)
        if not n:
            return {}
        from herd.data.filter import pass_at_k

        mean = sum(t["reward"] for t in tried) / n
        out = {"reward": mean, "reward_std": math.sqrt(max(0.0, sum(t["reward_sq"] for t in tried) / n - mean * mean)),
               "pass@1": sum(t["passed"] for t in tried) / n,
               f"pass@{g}": float(np.mean([pass_at_k(t["n"], t["passed"], g) for t in tried])),
               "completion_length": sum(t["length"] for t in tried) / n,
               "eot_fraction": sum(t["eot"] for t in tried) / n,
               "groups_kept": len(result.groups), "groups_dropped": len(tried) - len(result.groups),
               "staleness": step - result.version,
               "idle_s": round(self.idle_s + getattr(self.executor, "busy_s", 0.0), 3)}  # learner time not training
        out.update({f"band_{k}": v for k, v in self.pool.occupancy().items()} if self.pool.band else {})
        if self.pool.curriculum:
            out["level"] = self.pool.unlocked(step, self.config.steps)
        return out

    # ---- resume ----

    def state_dict(self) -> dict[str, Any]:
        """The pool, and every dispatched result not yet trained on (waiting for those still out)."""
        if self.rank == 0:
            for t in range(self.next_step, self.dispatched + 1):
                if t not in self.ready:
                    self._fetch(t)
        return {"pool": self.pool.state_dict(), "dispatched": self.dispatched, "completions": self.completions,
                "ready": {str(k): v.to_dict() for k, v in sorted(self.ready.items())},
                "profiles": {str(k): v.to_dict() for k, v in sorted(self.profiles.items())}}

    def fingerprint(self) -> dict[str, Any]:
        return self.pool.fingerprint()

    def validation(self, n: int) -> Batch:
        raise NotImplementedError("RL has no validation batches; evaluate with `herd eval answers`")

    def close(self, clean: bool = True) -> None:
        if self.executor is not None:
            self.executor.close(clean)


def worker_loop(config: TrainConfig, tokenizer: Tokenizer, text: TextConfig, device: torch.device) -> None:
    """A rollout worker: receive weights and tasks from the learner (rank 0), send back results, until told to stop."""
    channel = Channel(0, control_group())
    pool = build_pool(config, tokenizer)
    sampler = new_sampler(text, config, device)
    while True:
        header, tensor = channel.recv()
        if header["kind"] == "stop":
            break
        if header["kind"] == "weights":
            state, offset = {}, 0
            for name, shape in zip(header["names"], header["shapes"], strict=True):
                size = math.prod(shape)
                state[name] = tensor[offset : offset + size].view(shape).to(device)
                offset += size
            sampler.load(state, int(header["version"]))
            continue
        task = Task(**header["task"])
        faults.maybe_fail("rollout", task.step)
        try:
            result = run_task(sampler, pool, tokenizer, task, group=config.group_size,
                              temperature=config.sample_temperature, max_new_tokens=config.max_new_tokens,
                              seed=config.seed)
        except Exception as err:  # the learner raises it, naming the worker (a reward function's bug, say)
            channel.send({"kind": "error", "message": f"{type(err).__name__}: {err}"})
            raise
        channel.send({"kind": "result", "result": result.to_dict()})
    channel.flush()
