"""torchrun / DistributedDataParallel plumbing, on torch's own primitives.

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address; :func:`setup` turns that into a process group (NCCL on GPUs, gloo on the CPU) and the
device this rank trains on. Past one machine, torchrun's ``--nnodes``/``--rdzv-endpoint`` do the
rest; prunekit adds nothing of its own.

Pruning decisions must be the same on every rank. prunekit takes them on every rank from weights
that DDP keeps identical, then makes sure: :func:`broadcast_module` copies rank 0's parameters and
buffers (masks included) to the others, and :func:`check_same_structure` refuses to go on if a cut
left the ranks with different shapes (which would otherwise hang the next all-reduce).

Outside torchrun everything here is a no-op:

>>> world()
(0, 1)
>>> all_sum(3.0)
3.0
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from prunekit.errors import PruningError

__all__ = ["world", "is_main", "setup", "wrap", "unwrap", "broadcast_module", "check_same_structure",
           "all_sum", "barrier", "shutdown"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def setup(device: str | torch.device | None = None) -> torch.device:
    """Join the process group torchrun describes (if any, and not joined yet); return this rank's device.

    ``device``: ``None`` picks ``cuda:LOCAL_RANK`` where CUDA is visible, else the CPU.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None and size > 1:
            dev = torch.device(f"cuda:{local}")
    if size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def wrap(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks (DDP broadcasts rank 0's state
    on construction), else ``model`` itself."""
    if world()[1] == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers (non-persistent ones, e.g. masks, included) to every rank."""
    if world()[1] == 1:
        return
    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, src)


def check_same_structure(model: nn.Module, where: str = "model") -> None:
    """Raise ``PruningError`` on every rank unless all ranks hold the same parameter and buffer shapes."""
    if world()[1] == 1:
        return
    mine = [(n, tuple(t.shape)) for n, t in [*model.named_parameters(), *model.named_buffers()]]
    every: list = [None] * world()[1]
    dist.all_gather_object(every, mine)
    for rank, theirs in enumerate(every):
        if theirs != mine:
            diff = next((a, b) for a, b in zip(mine, theirs, strict=False) if a != b) if len(mine) == len(theirs) \
                else (len(mine), len(theirs))
            raise PruningError(where, "keep the ranks in step", f"rank {rank} holds different shapes after a "
                               f"cut ({diff}); pruning decisions must come from identical weights on every rank")


def all_sum(value: float) -> float:
    """``value`` summed over the ranks (``all_reduce``)."""
    if world()[1] == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
