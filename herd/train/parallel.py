"""Processes and devices for training: torchrun's environment, FSDP2 sharding, collectives.

- One code path for every world size: a single process gets a one-member gloo group over an
  in-memory store, so the collectives and the full-state-dict checkpoint code are the same.
- Under torchrun each block, then the root, is wrapped with FSDP2 `fully_shard`: parameters,
  gradients and optimizer state are sharded over the processes (gloo on CPU, NCCL on GPU).
- Every process builds the full model from the same seed before sharding, so a run starts from
  the same weights whatever the number of processes.
- Processes that torchrun restarts (`--max-restarts`) form their group under a prefix of their restart
  count: the agent's store outlives them and still holds the previous group's addresses.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device
    owns_group: bool = True  # False when the caller had set up torch.distributed already

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join torchrun's process group (or make a one-process group) and pick this process's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=30)
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if size > 1 and restart:
            # torchrun restarted the processes: the agent's store still holds the last life's addresses, so this
            # life's group keeps its keys apart
            store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
            dist.init_process_group(backend, store=dist.PrefixStore(f"herd-restart-{restart}", store), rank=rank,
                                    world_size=world_size, timeout=timeout)
        elif size > 1:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device, owns_group=owns_group)


def close_world(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(model: nn.Module, world: World) -> nn.Module:
    """FSDP2 over the processes: each block is one unit of all-gather / reduce-scatter."""
    if world.size == 1:
        return model
    from torch.distributed.fsdp import fully_shard

    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The sum over processes of a (small) tensor; the input is left unchanged."""
    if world.size == 1:
        return tensor.clone()
    out = tensor.detach().to(world.device, copy=True)
    dist.all_reduce(out)
    return out.to(tensor.device)


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
