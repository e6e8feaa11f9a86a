"""`herd train` and `herd sft`: one trainer, its data source and objective chosen by the config.

- Data: token windows of `herd data prepare` shards (pretraining, `herd.train.batches.TokenWindows`), or
  chat conversations packed with their loss masks (fine-tuning, `herd.train.chat_data`). Objective:
  next-token cross-entropy over the counted targets (`herd.train.objectives`). Starting point: a fresh
  initialisation, or `init_from` (a checkpoint's architecture and weights, a fresh optimizer).

- The model is built on every process from the same seed, then prepared from outside in one
  place: activation checkpointing, torch.compile per block, FSDP2 sharding (in that order).
- Initialisation and per-group AdamW settings come from `herd.train.metap` (MetaP by default, or the
  standard parametrization); every group's LR follows `herd.train.schedule`; gradients are clipped
  by global norm; bf16 autocast is optional.
- The loss of a step is the mean over all of its counted targets, whatever the split into processes
  and micro-batches: every micro-batch's sum is divided by the step's total count.
- Every `ckpt_every` steps a full checkpoint (`herd.train.checkpoints`); `resume=True` continues
  from the latest one, truncating log lines written after it, so the logged curve is the same as
  that of an uninterrupted run.
- At the end the model is written in herd's HF format to `out/model`, with the tokenizer beside
  it, so `herd generate --model out/model` and transformers can load it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import herd
from herd.checkpoint import read_config
from herd.config import PRESETS, ConfigError, TextConfig, VisionConfig
from herd.data.shards import TokenShards
from herd.files import write_text_atomic
from herd.model import Transformer
from herd.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from herd.train import checkpoints, faults, metap
from herd.train.balance import RouterBalance
from herd.train.batches import TokenWindows
from herd.train.chat_data import ChatData, ImageSpec, chat_splits, is_chat_data
from herd.train.config import TRAJECTORY_FIELDS, TrainConfig
from herd.train.objectives import Distill, NextToken, Preference, reference_logps
from herd.train.on_policy import OnPolicy
from herd.train.pair_data import PairData, pair_splits
from herd.train.parallel import World, all_reduce_sum, barrier, close_world, init_world, shard
from herd.train.policy_gradient import PolicyGradient
from herd.train.rl_data import RolloutData
from herd.train.schedule import lr_multiplier
from herd.train.teacher_cache import TopKCache, topk_logps

log = logging.getLogger("herd")
TOPK_PART = 256  # windows per file of a teacher's top-k cache


def model_config(config: TrainConfig, tokenizer: Tokenizer | None) -> TextConfig:
    """The text config to train: the `init_from` checkpoint's, a preset or a config file, with the data's
    special ids."""
    if config.init_from:
        text = read_config(config.init_from).text
        if config.vocab_size and config.vocab_size != text.vocab_size:
            raise ConfigError(f"vocab_size {config.vocab_size} differs from {config.init_from}'s {text.vocab_size}")
    elif config.model in PRESETS:
        text = PRESETS[config.model].text
    elif Path(config.model).exists():
        text = read_config(config.model).text
    else:
        raise ConfigError(f"model {config.model!r} is neither a preset ({', '.join(PRESETS)}) nor a path")
    if config.vocab_size:
        text = text.replace(vocab_size=config.vocab_size)
    if tokenizer is not None:
        if tokenizer.n_words > text.vocab_size:
            raise ConfigError(f"the data's tokenizer has {tokenizer.n_words:,} ids but the model has a vocabulary "
                              f"of {text.vocab_size:,}; prepare the data with a matching tokenizer")
        text = text.replace(bos_id=tokenizer.bos_id, eos_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id)
    # A checkpoint's learned selection bias stays part of its routing (frozen when balancing is off).
    keep = bool(config.init_from) and text.router_bias
    return text.replace(router_bias=keep or (bool(config.router_bias_rate) and text.n_experts > 0))


def _checkpoint_activations(block: nn.Module) -> None:
    # Overriding the instance's forward keeps parameter names unchanged (no wrapper module).
    forward = block.forward
    block.forward = lambda *args, **kwargs: torch.utils.checkpoint.checkpoint(
        forward, *args, use_reentrant=False, **kwargs)


def _grad_norm(model: nn.Module, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else math.inf)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


class _Log:
    """log.jsonl: one record per step (and per evaluation), appended and flushed as it goes."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            path.unlink(missing_ok=True)
        elif path.exists():  # drop what a killed run logged after its last checkpoint
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            write_text_atomic(path, "".join(line + "\n" for line in kept))
        self._file = open(path, "a")  # noqa: SIM115 - open for the whole run

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) training; returns a summary: steps, losses, tokens, time, output paths.

    With `rollout_workers` (RL under torchrun), rank 0 is the learner and ranks 1…W only sample
    (`herd.train.rl_data.worker_loop`); their summary says `is_main` False."""
    world = init_world()
    try:
        if config.objective == "rl" and config.rollout_workers:
            if world.size != config.rollout_workers + 1:
                raise ConfigError(f"{config.rollout_workers} rollout workers need {config.rollout_workers + 1} "
                                  f"processes (one learner), got {world.size}")
            if world.rank > 0:
                return _rollout_worker(config, world)
            world = dataclasses.replace(world, size=1, owns_group=False)  # the learner alone
        return _Trainer(config, world, progress).run(resume)
    finally:
        close_world(world)


def _rl_start(config: TrainConfig) -> tuple[Tokenizer, TextConfig]:
    """The tokenizer and text config an RL run's learner and rollout workers share: the `init_from` checkpoint's."""
    if not config.init_from:
        raise ConfigError("RL starts from a model: pass --init-from CHECKPOINT")
    tokenizer = load_tokenizer(config.init_from)
    return tokenizer, model_config(config, tokenizer)


def _rollout_worker(config: TrainConfig, world: World) -> dict[str, Any]:
    from herd.train.rl_data import worker_loop

    worker_loop(config, *_rl_start(config), world.device)
    return {"is_main": False}


class _Trainer:
    def __init__(self, config: TrainConfig, world: World, progress: bool) -> None:
        c = self.config = config
        self.world, self.progress = world, progress
        self.out = Path(c.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.vision: VisionConfig | None = None  # the checkpoint's vision tower, when the data has images
        if not c.data:
            raise ConfigError("no data: pass --data DIR (a directory written by `herd data prepare`)"
                              if c.objective == "lm" else "no data: pass --data FILE.jsonl (or a directory)")
        self.train_data: TokenWindows | ChatData | PairData | OnPolicy | RolloutData
        self.val_data: TokenWindows | ChatData | PairData | None
        chat = c.objective in ("sft", "dpo") or (c.objective == "distill" and is_chat_data(c.data))
        if c.objective == "rl":
            self.tokenizer, self.text = _rl_start(c)
            workers = list(range(1, c.rollout_workers + 1)) if c.rollout_workers else []
            self.train_data, self.val_data = RolloutData(c, self.tokenizer, self.text, world.rank, world.size,
                                                         workers), None
        elif chat:
            if not c.init_from:
                raise ConfigError("post-training starts from a model: pass --init-from CHECKPOINT")
            if c.teacher_topk:
                raise ConfigError("a precomputed teacher (--teacher-topk) is keyed by token-shard windows; "
                                  "distillation on chat data runs the teacher on the fly")
            self.tokenizer: Tokenizer | None = load_tokenizer(c.init_from)
            self.text = model_config(c, self.tokenizer)
            if c.objective == "dpo":
                self.train_data, self.val_data = pair_splits(c.data, self.tokenizer, c.seq_len, c.seed)
            else:  # SFT reads images when the checkpoint has a vision tower (kept frozen)
                vision = read_config(c.init_from).vision if c.objective == "sft" else None
                self.train_data, self.val_data = chat_splits(c.data, self.tokenizer, c.seq_len, c.seed,
                                                             ImageSpec.of(vision) if vision else None)
                if self.train_data.has_images or (self.val_data is not None and self.val_data.has_images):
                    self.vision = vision
            if c.on_policy:
                if world.size > 1:
                    raise ConfigError("on-policy distillation samples with the model being trained: run it on one "
                                      "process")
                self.train_data = OnPolicy(self.train_data, c.on_policy, c.sample_temperature, c.max_new_tokens,
                                           c.seed)
        else:
            if c.on_policy:
                raise ConfigError("on-policy distillation has the student answer chat questions: pass chat JSONL "
                                  "as --data")
            shards = TokenShards(c.data, "train")
            self.tokenizer = self._tokenizer(shards)
            self.text = model_config(c, self.tokenizer)
            bos = self.text.bos_id if c.document_masking else None
            self.train_data = TokenWindows(shards, c.seq_len, c.seed, bos)
            val = TokenShards(c.data, "val")
            self.val_data = TokenWindows(val, c.seq_len, c.seed, bos, "val") if len(val) > c.seq_len else None
        bf16 = c.precision == "bfloat16"
        self.objective: NextToken | Preference | Distill | PolicyGradient
        if c.objective == "rl":
            reference = self._frozen(c.reference or c.init_from) if c.kl_coef else None
            self.objective = PolicyGradient(c.loss_type, c.clip_low, c.clip_high, c.sample_temperature, c.kl_coef,
                                            reference, c.old_logps, c.is_cap, c.max_new_tokens, bf16)
        elif c.objective == "dpo":
            self.objective = Preference(c.beta, c.nll_weight, bf16)
        elif c.objective == "distill":  # a precomputed teacher is attached in run(), once the top-k exist
            self.objective = Distill(None if c.teacher_topk else self._teacher(), c.soft_loss, c.alpha, c.alpha_rule,
                                     c.alpha_end, c.jsd_beta, c.temperature, bf16)
        else:
            self.objective = NextToken(bfloat16=bf16, accuracy=c.objective == "sft")
        per_rank, rem = divmod(c.batch_size, world.size)
        self.micro = c.micro_batch_size or per_rank
        if rem or per_rank % self.micro:
            raise ConfigError(f"batch_size {c.batch_size} must split into {world.size} process(es) × micro-batches "
                              f"of {self.micro}")
        self.tokens_per_step = c.batch_size * c.seq_len * self.train_data.rows_per_sample

    def _teacher(self) -> nn.Module:
        """The frozen teacher, whole on every process (it is not sharded)."""
        if not self.config.teacher:
            raise ConfigError("distillation needs a teacher: pass --teacher CHECKPOINT")
        teacher = self._frozen(self.config.teacher)
        if teacher.config.vocab_size != self.text.vocab_size:
            raise ConfigError(f"the teacher {self.config.teacher} has a vocabulary of {teacher.config.vocab_size:,} "
                              f"and the student {self.text.vocab_size:,}: distillation needs the same tokenizer")
        return teacher

    def _frozen(self, path: str) -> nn.Module:
        """A checkpoint as a frozen fp32 model, whole on every process (a teacher, a reference)."""
        model = herd.load(path, dtype=torch.float32, text_only=True)
        model.requires_grad_(False)
        return model.to(self.world.device)

    @staticmethod
    def _tokenizer(shards: TokenShards) -> Tokenizer | None:
        source = shards.manifest.get("tokenizer", {}).get("path")
        try:
            return load_tokenizer(source)
        except TokenizerError as err:
            log.warning("the data's tokenizer cannot be loaded (%s); the model is saved without one", err)
            return None

    def _build(self) -> nn.Module:
        c, device = self.config, self.world.device
        with torch.device("meta"):
            model = Transformer(self.text, self.vision)
        model.to_empty(device=device)
        self.plan = metap.rules(model, c.parametrization, c.init_std, c.metap_base)
        metap.init_weights(model, self.plan, generator=torch.Generator(device).manual_seed(c.seed))
        if c.init_from:
            self._init_from(model)
        if model.vision is not None:  # the tower and its projection stay as the checkpoint has them
            model.vision.requires_grad_(False)
        model.train()
        self.balance = RouterBalance(model, c.router_bias_rate, c.aux_loss_coef)
        for block in model.layers:
            if c.activation_checkpointing:
                _checkpoint_activations(block)
            if c.compile:
                block.compile()
        return shard(model, self.world)

    @torch.no_grad()
    def _init_from(self, model: nn.Module) -> None:
        """The weights of `init_from` (read through herd's loader: HF or Meta format, checked key by key)."""
        source = herd.load(self.config.init_from, dtype=torch.float32, text_only=self.vision is None).state_dict()
        target = model.state_dict()
        missing = sorted(set(target) - set(source))
        if missing:
            raise ConfigError(f"{self.config.init_from} has no {', '.join(missing[:4])}"
                              + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""))
        for name, param in target.items():
            param.copy_(source[name])
        log.info("initialised from %s", self.config.init_from)

    def run(self, resume: bool) -> dict[str, Any]:
        c, world = self.config, self.world
        model = self._build()
        groups = metap.param_groups(model, self.plan, c.lr, c.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps,
                                      fused=True)  # one kernel per step, CPU and GPU; the loop version is 7x slower
        self._saved: dict[str, Any] = {}
        start = self._resume(model, optimizer) if resume else 0
        if world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpoints.remove_partial(self.ckpt_dir)
            _write_json(self.out / "config.json", {"train": c.to_dict(), "model": dataclasses.asdict(self.text)})
        if c.objective == "dpo":
            self._reference()
        if isinstance(self.objective, Distill) and c.teacher_topk:
            self.objective.cache = self._teacher_topk()
        if isinstance(self.train_data, OnPolicy):
            self.train_data.policy = model
        rl, clean = isinstance(self.train_data, RolloutData), False
        try:
            if rl:
                self.train_data.start(model, start, self._saved.get("rollouts"))
            summary = self._loop(model, optimizer, start, resume)
            clean = True
            return summary
        finally:
            if rl:
                self.train_data.close(clean)

    def _loop(self, model: nn.Module, optimizer: torch.optim.Optimizer, start: int, resume: bool) -> dict[str, Any]:
        c, world = self.config, self.world
        rl = isinstance(self.train_data, RolloutData)
        logbook = _Log(self.out / "log.jsonl", start if resume else None, world.is_main)
        bar = tqdm(total=c.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.progress and world.is_main))
        summary: dict[str, Any] = {"start_step": start, "is_main": world.is_main}
        if rl:
            self.rl_tokens = int(self._saved.get("rl_tokens", 0))
            tokens_before, completions_before = self.rl_tokens, self.train_data.completions
        began = time.perf_counter()
        for timed_steps, step in enumerate(range(start, c.steps), start=1):
            record = self._step(model, optimizer, step)
            elapsed = time.perf_counter() - began
            tokens = record["tokens"] - tokens_before if rl else timed_steps * self.tokens_per_step
            record["tokens_per_s"] = round(tokens / elapsed, 1)
            done = step + 1
            if rl:  # the weights of version `done` exist: dispatch what they sample
                record["samples_per_s"] = round((self.train_data.completions - completions_before) / elapsed, 2)
                self.train_data.advance(done, model)
            if done % c.eval_every == 0 or done == c.steps:
                record["val_loss"] = self._evaluate(model)
            logbook.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            if done % c.log_every == 0 or done == c.steps or "val_loss" in record:
                eta = (c.steps - done) * elapsed / timed_steps
                val = f" val {record['val_loss']:.4f}" if record.get("val_loss") is not None else ""
                if rl and "reward" in record:
                    val += f" reward {record['reward']:.3f} pass@1 {record['pass@1']:.3f}"
                line = (f"step {done}/{c.steps} loss {record['loss']:.4f}{val} lr {record['lr']:.2e} "
                        f"{record['tokens_per_s']:.0f} tok/s eta {eta:.0f}s")
                if world.is_main and self.progress:
                    bar.write(line, file=sys.stderr)
                elif world.is_main:
                    log.info(line)
            if done % c.ckpt_every == 0 or done == c.steps:
                checkpoints.save(self.ckpt_dir, done, model, optimizer, self._state(done), world, c.keep_checkpoints)
            summary.update(loss=record["loss"], val_loss=record.get("val_loss", summary.get("val_loss")))
        bar.close()
        logbook.close()
        summary.update(steps=c.steps, tokens=self.rl_tokens if rl else c.steps * self.tokens_per_step,
                       seconds=time.perf_counter() - began)
        summary["model_dir"] = str(self._export(model, summary))
        self.balance.detach()
        return summary

    def _step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> dict[str, Any]:
        c, world = self.config, self.world
        multiplier = lr_multiplier(step, c)
        if isinstance(self.objective, Distill):
            self.objective.progress = step / c.steps  # alpha's schedule
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * multiplier
        micro_batches = self.train_data.micro_batches(step, c.batch_size, world.rank, world.size, self.micro)
        count = all_reduce_sum(torch.tensor(float(sum(self.objective.count(b) for b in micro_batches)),
                                            dtype=torch.float64), world)
        # Gradients are averaged over processes (FSDP), so each process's sums are scaled by its count.
        scale = world.size / max(float(count), 1.0)
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            if world.size > 1:  # reduce-scatter gradients once, after the last micro-batch
                model.set_requires_gradient_sync(i == len(micro_batches) - 1)
            out = self.objective.sums(model, batch.to(world.device))
            aux = self.balance.aux_loss()
            loss = out["loss"] * scale
            (loss if aux is None else loss + aux / len(micro_batches)).backward()
            self.balance.end_micro_batch()
            for name, value in out.items():
                sums[name] = sums.get(name, 0) + value.detach().double()
        faults.maybe_fail("step", step + 1)
        grad_norm = _grad_norm(model, c.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loads = self.balance.end_step(lambda t: all_reduce_sum(t, world))
        denominators = {name: max(float(count), 1.0) for name in sums}
        if isinstance(self.objective, PolicyGradient) and "tokens" in sums:  # its metrics are token means
            tokens = float(all_reduce_sum(sums.pop("tokens"), world))
            self.rl_tokens += int(tokens)
            denominators.update({name: max(tokens, 1.0) for name in self.objective.PER_TOKEN})
        means = {name: float(all_reduce_sum(value, world)) / denominators[name] for name, value in sums.items()}
        record = {"step": step + 1, "loss": means.pop("loss", 0.0), "lr": optimizer.param_groups[0]["lr"],
                  "grad_norm": round(grad_norm, 5), "tokens": (step + 1) * self.tokens_per_step, **loads}
        if isinstance(self.objective, PolicyGradient):
            record.update(tokens=self.rl_tokens, **self.train_data.metrics)
        record.update({name: round(v, 5) for name, v in means.items()})
        if c.objective == "sft":
            record["supervised_tokens"] = int(count)
        return record

    def _reference(self) -> None:
        """Every pair's log-probabilities under the reference model, computed once and kept beside the run
        (`reference_logps.safetensors`, keyed by the reference and the data), then attached to the data."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        c, world = self.config, self.world
        source = c.reference or c.init_from
        splits = {"train": self.train_data, **({"val": self.val_data} if self.val_data is not None else {})}
        key = json.dumps({"reference": str(Path(source).resolve()), "precision": c.precision,
                          **{name: data.fingerprint() for name, data in splits.items()}}, sort_keys=True)
        path = self.out / "reference_logps.safetensors"
        if path.exists():
            with safe_open(path, "pt") as f:
                if f.metadata().get("key") == key:
                    for name, data in splits.items():
                        data.reference_N2 = f.get_tensor(name)
                    return
        reference = herd.load(source, dtype=torch.float32, text_only=True).to(world.device)
        for data in splits.values():
            data.reference_N2 = reference_logps(reference, data.all_pairs(self.micro), c.precision == "bfloat16",
                                                progress=self.progress and world.is_main)
        del reference
        if world.is_main:
            tmp = path.with_name(path.name + ".tmp")
            save_file({name: data.reference_N2.contiguous() for name, data in splits.items()}, tmp,
                      metadata={"key": key})
            os.replace(tmp, path)
        log.info("reference log-probabilities of %s for %s", source, ", ".join(
            f"{len(data)} {name} pairs" for name, data in splits.items()))

    def _teacher_topk(self) -> TopKCache:
        """The teacher's top-k over every window this run reads (its steps' and the validation's), computed for
        those the cache lacks (split between processes), then attached to the objective; see `teacher_cache`."""
        from herd.eval.scoring import checkpoint_fingerprint

        c, world = self.config, self.world
        splits = {"train": self.train_data, **({"val": self.val_data} if self.val_data is not None else {})}
        key = {"teacher": checkpoint_fingerprint(c.teacher) if c.teacher else "", "seq_len": c.seq_len,
               "k": c.teacher_topk, "precision": c.precision, "document_masking": c.document_masking,
               "data": {name: data.fingerprint() for name, data in splits.items()}}
        cache = TopKCache(c.teacher_cache or self.out / "teacher_topk", key)
        needed = {"train": [self.train_data.windows.window_of(s) for s in range(c.steps * c.batch_size)]}
        if self.val_data is not None:
            needed["val"] = self.val_data.windows.validation_windows(c.eval_batches * c.batch_size)
        missing = {split: cache.missing(split, windows)[world.rank :: world.size] for split, windows in needed.items()}
        barrier(world)  # every process has listed what is missing before any of them writes
        total = sum(len(windows) for windows in missing.values())
        if total:
            teacher = self._teacher()
            bar = tqdm(total=total, desc="teacher top-k", unit="window", disable=not (self.progress and world.is_main))
            for split, windows in missing.items():
                for i in range(0, len(windows), TOPK_PART):
                    part, ids, logps = windows[i : i + TOPK_PART], [], []
                    for j in range(0, len(part), self.micro):
                        batch = splits[split].batch(part[j : j + self.micro]).to(world.device)
                        ids_NSK, logps_NSK = topk_logps(teacher, batch.tokens_NS, batch.documents_NS, c.teacher_topk,
                                                        c.precision == "bfloat16")
                        ids.append(ids_NSK.cpu())
                        logps.append(logps_NSK.cpu())
                        bar.update(len(batch))
                    cache.write(split, part, torch.cat(ids), torch.cat(logps))
            bar.close()
            del teacher
        barrier(world)
        cache.refresh()
        log.info("teacher top-%d of %s: %d windows computed here, %d in %s", c.teacher_topk, c.teacher or "the cache",
                 total, len(cache.index), cache.dir)
        return cache

    @torch.no_grad()
    def _evaluate(self, model: nn.Module) -> float | None:
        if self.val_data is None:
            return None
        c, world = self.config, self.world
        windows = self.val_data.validation(c.eval_batches * c.batch_size)
        per_rank = len(windows) // world.size
        if per_rank == 0:
            return None
        mine = windows.slice(world.rank * per_rank, (world.rank + 1) * per_rank)
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=world.device)  # the loss's sum, its count
        for i in range(0, per_rank, self.micro):
            part = mine.slice(i, i + self.micro).to(world.device)
            total[0] += self.objective.sums(model, part)["loss"].double()
            total[1] += self.objective.count(part)
        model.train()
        loss_sum, count = all_reduce_sum(total, world).tolist()
        return round(loss_sum / max(count, 1.0), 6)

    def _state(self, step: int) -> dict[str, Any]:
        state = {"train": self.config.to_dict(), "data": self.train_data.fingerprint(), "samples_seen":
                 step * self.config.batch_size, "world_size": self.world.size}
        if isinstance(self.train_data, RolloutData):
            state.update(rollouts=self.train_data.state_dict(), rl_tokens=self.rl_tokens)
        return state

    def _resume(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        found = checkpoints.checkpoints(self.ckpt_dir)
        if not found:
            log.info("no checkpoint in %s: starting from step 0", self.ckpt_dir)
            return 0
        latest = found[-1]
        with open(latest / "state.json") as f:
            saved = json.load(f)
        before = saved["train"]
        defaults = TrainConfig()  # a field newer than the checkpoint had its default then
        changed = [f"{k}={before.get(k)!r}" for k in TRAJECTORY_FIELDS
                   if before.get(k, getattr(defaults, k)) != getattr(self.config, k)]
        if changed:
            raise checkpoints.ResumeError(f"{latest}: the run was started with other settings: {', '.join(changed)} "
                                          "(start a new --out, or resume with the same settings)")
        if saved["data"] != self.train_data.fingerprint():
            raise checkpoints.ResumeError(f"{latest}: the checkpoint was trained on other data ({saved['data']})")
        state = checkpoints.load(latest, model, optimizer)
        self._saved = state
        log.info("resumed from %s (step %d, written by %d process(es))", latest, state["step"], state["world_size"])
        return int(state["step"])

    def _export(self, model: nn.Module, summary: dict[str, Any]) -> Path:
        """Write the final model in herd's HF format (main process) with its tokenizer and a summary."""
        state = checkpoints.full_model_state(model)
        target = self.out / "model"
        if self.world.is_main:
            with torch.device("meta"):
                final = Transformer(self.text, self.vision)
            final.load_state_dict(state, assign=True)
            final.init_buffers()
            herd.save(final, target)
            if self.tokenizer is not None:
                source = Path(self.tokenizer.source)
                name = "tokenizer.json" if source.suffix == ".json" else "tokenizer.model"
                shutil.copyfile(source, target / f".{name}.tmp")
                os.replace(target / f".{name}.tmp", target / name)
            _write_json(target / "training.json", {k: v for k, v in summary.items() if k != "model_dir"})
        return target


def _write_json(path: Path, content: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(content, indent=1) + "\n")
