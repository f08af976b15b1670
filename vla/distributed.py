"""Data-parallel training under torchrun: the process's rank, the process group (NCCL on GPUs, gloo on CPU), the
DDP wrapper over trainable weights, and the small collectives the loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, preference: str) -> torch.device:
        if preference != "auto":
            return torch.device(preference)
        return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> Distributed:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE and join the process group (NCCL on GPUs, gloo on CPU)."""
    env = Distributed(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                      int(os.environ.get("WORLD_SIZE", 1)))  # fmt: skip
    if env.world_size > 1 and not dist.is_initialized():
        device = env.device(device_preference)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return env


def gather(obj: Any, env: Distributed) -> list[Any]:
    """Every rank's `obj`, in rank order (a collective: all ranks must call it)."""
    if env.world_size == 1:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def average_over_ranks(values: list[float], env: Distributed, device: torch.device) -> list[float]:
    if env.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)  # SUM: gloo has no AVG
    return (tensor / env.world_size).tolist()


def wrap_ddp(model: nn.Module, env: Distributed, device: torch.device) -> nn.Module:
    """DDP over the trainable parameters only: frozen weights are identical on every rank by construction (same
    checkpoint or same seed), so they are neither broadcast nor all-reduced. Adapters on modules the forward never
    runs (the towers' last blocks) get no gradient, hence find_unused_parameters (as the official script)."""
    if env.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    frozen = [n for n, p in model.named_parameters() if not p.requires_grad] + [n for n, _ in model.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(model, frozen)
    device_ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=device_ids, find_unused_parameters=True, gradient_as_bucket_view=True)
