"""Training checkpoints: everything a killed run needs to continue exactly where it was.

- One directory per checkpoint, `step-00000100/`: `model.safetensors` (full, unsharded state),
  `optimizer.safetensors` (AdamW moments and step counts by parameter name, and the RNG states)
  and `state.json` (step, data position, configs, the optimizer's param groups). No pickle.
- Full (gathered) state dicts make a checkpoint independent of the number of processes that
  wrote it: one written by 2 processes loads in 1, and the other way round.
- Atomic: the main process writes into a hidden temporary directory, syncs the files, and only
  then renames it to `step-N`; a directory without `state.json` is never a checkpoint, so a
  kill during a save leaves the previous checkpoint as the latest. The oldest beyond `keep` are
  then deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from herd.train import faults
from herd.train.parallel import World, barrier

log = logging.getLogger("herd")
PREFIX = "step-"


class ResumeError(RuntimeError):
    """A checkpoint that cannot continue this run (another model, other data, a damaged file)."""


def checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state on CPU (on the main process; others get an empty dict when sharded)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save(root: str | os.PathLike, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
         state: dict[str, Any], world: World, keep: int) -> Path:
    """Write checkpoint `step` (collective: every process calls it) and prune old ones."""
    root = Path(root)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=options)
    final = root / f"{PREFIX}{step:08d}"
    if world.is_main:
        tmp = root / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write_tensors(tmp / "model.safetensors", {k: v.contiguous() for k, v in model_sd.items()})
        faults.maybe_fail("save", step)
        tensors, scalars = _flatten_optimizer(optim_sd["state"])
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        _write_tensors(tmp / "optimizer.safetensors", tensors)
        body = {**state, "step": step, "optimizer_scalars": scalars, "param_groups": optim_sd["param_groups"]}
        _write_text(tmp / "state.json", json.dumps(body, indent=1))
        if final.exists():  # a checkpoint of this step from an earlier life of the run
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        for old in checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(world)
    return final


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG state from checkpoint `path`; returns its state.json."""
    try:
        state = json.loads((path / "state.json").read_text())
        model_sd = load_file(path / "model.safetensors")
        tensors = load_file(path / "optimizer.safetensors")
    except (OSError, ValueError) as err:
        raise ResumeError(f"{path}: cannot read checkpoint: {err}") from None
    options = StateDictOptions(full_state_dict=True)
    expected = set(model.state_dict())
    if set(model_sd) != expected:
        diff = sorted(set(model_sd) ^ expected)[:5]
        raise ResumeError(f"{path}: model tensors differ from this run's model: {', '.join(diff)}")
    set_model_state_dict(model, model_sd, options=options)
    optim_sd = {"state": _unflatten_optimizer(tensors, state["optimizer_scalars"]),
                "param_groups": state["param_groups"]}
    set_optimizer_state_dict(model, optimizer, optim_sd, options=options)
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available() and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


def remove_partial(root: str | os.PathLike) -> None:
    """Delete temporary directories left by a save that was killed."""
    for tmp in Path(root).glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _flatten_optimizer(state: dict[str, dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for name, entry in state.items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{name}.{key}"] = value.contiguous()
            else:
                scalars[f"{name}.{key}"] = value
    return tensors, scalars


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for flat, value in [*((k.removeprefix("state."), v) for k, v in tensors.items() if k.startswith("state.")),
                        *scalars.items()]:
        name, key = flat.rsplit(".", 1)
        state.setdefault(name, {})[key] = value
    return state


def _write_tensors(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(file))
    _fsync(file)


def _write_text(file: Path, text: str) -> None:
    file.write_text(text)
    _fsync(file)


def _fsync(file: Path) -> None:
    with open(file, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
