"""Data-parallel training with torch.distributed, launched by ``torchrun``.

Each process holds full copies of the networks and a shard of every global batch; after
each backward pass the gradients are averaged over processes (all-reduce), so N processes
with global batch B take the same steps as one process with batch B (all normalisations
are per sample). Backend: gloo on CPU, nccl on CUDA. Without torchrun (no ``WORLD_SIZE``
in the environment) everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InputError


@dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process and the device it computes on."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """``auto`` -> the local CUDA device if any, else CPU; ``cuda`` -> ``cuda:<local rank>``
    (each torchrun process on its own GPU); ``cpu`` or a fixed ``cuda:K`` (only in a single
    process) as given; other device types (mps, xpu, ...) are refused."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"device {name!r}: expected auto, cpu, cuda or cuda:K") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":  # e.g. mps, xpu: untested, and mps lacks float64, which the OOD features use
        raise InputError(f"device {name!r}: expected auto, cpu, cuda or cuda:K ({device.type} is not supported)")
    if not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available")
    if device.index is not None and world > 1:
        raise InputError(f"device {name!r}: with {world} processes each takes its own GPU; "
                         "pass --device cuda")
    return device if device.index is not None else torch.device(f"cuda:{local_rank}")


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init(device_name: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launched_rank()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local, world)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, device)


def shutdown(info: DistInfo) -> None:
    """Leave the process group :func:`init` joined (nothing for a single process)."""
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(module: torch.nn.Module, info: DistInfo) -> None:
    """All-reduce the mean of ``module``'s gradients over processes (one flat buffer)."""
    if info.world == 1:
        return
    # parameters without a gradient (the same on every process: the same graph) stay without
    # one, so the optimiser skips them as it does in one process
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= info.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def mean_over_processes(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor of loss values over processes (for logging). The reduction runs on
    ``info.device`` (NCCL reduces CUDA tensors only); the result is on ``values``' device."""
    if info.world == 1:
        return values
    summed = values.to(info.device, copy=True)
    dist.all_reduce(summed)
    return (summed / info.world).to(values.device)


def gather_to_main(obj: object, info: DistInfo) -> list | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank 0, None on the others (pickled in memory
    only; only rank 0 receives the others' objects: a checkpoint's image pools run to GBs)."""
    if info.world == 1:
        return [obj]
    out = [None] * info.world if info.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(info: DistInfo) -> None:
    """Wait until every process gets here (nothing for a single process)."""
    if info.world > 1:
        dist.barrier()
