"""The process group: one process per GPU under `torchrun`, or a single process with everything a no-op.

The training loop codes against `DistContext` alone, so the single-device and the multi-device paths are the same
code: `ctx.all_reduce_sum` is the identity and `ctx.barrier` returns at once when `ctx.enabled` is False. Under
`torchrun` each process reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from its environment; CUDA
runs use NCCL on `cuda:LOCAL_RANK`, CPU runs use gloo (which is how the tests exercise it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ppar_core.errors import PparError
from ppar_core.runtime import resolve_device

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistContext:
    """Who this process is in the run and where it computes.

    rank: global index 0..world_size-1. local_rank: index on this machine (its GPU). device: where this process puts
    its model and batches. enabled: whether a process group exists (False for a plain single-process run).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    enabled: bool

    @property
    def is_main(self) -> bool:
        """True on the one process that logs, evaluates and writes checkpoints (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process reaches this point (e.g. rank 0 finished writing a checkpoint)."""
        if not self.enabled:
            return
        if dist.get_backend() == "nccl":
            # Naming the device avoids NCCL guessing it (and warning) before the first collective.
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum `t` over all processes, in place, and return it (the same tensor; the identity when disabled).

        t: any shape and dtype, on `self.device` (NCCL needs CUDA tensors). Callers that must keep their local value
        pass a clone.
        """
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_object(self, obj: Any, *, src: int = 0) -> Any:
        """Return rank `src`'s `obj` on every process (e.g. a run folder name chosen by rank 0).

        obj must be picklable; it travels only between the processes of this run, never through a file.
        """
        if not self.enabled:
            return obj
        holder = [obj if self.rank == src else None]
        device = self.device if self.device.type == "cuda" else None
        dist.broadcast_object_list(holder, src=src, device=device)
        return holder[0]


def init_distributed(device_spec: str = "auto") -> DistContext:
    """Join the process group that `torchrun` describes in the environment, or make a single-process context.

    Without WORLD_SIZE in the environment, or with WORLD_SIZE=1, nothing is initialised and the context is disabled,
    on `resolve_device(device_spec)`. Otherwise each process takes `cuda:LOCAL_RANK` with NCCL when the resolved
    device is CUDA, or the CPU with gloo.
    """
    env = {key: os.environ.get(key) for key in _ENV_KEYS}
    world_size = _env_int(env, "WORLD_SIZE", default=1)
    if world_size <= 1:
        return DistContext(rank=0, world_size=1, local_rank=0, device=resolve_device(device_spec), enabled=False)

    missing = [key for key in _ENV_KEYS if not env[key] and key != "LOCAL_RANK"]
    if missing:
        raise PparError(
            f"WORLD_SIZE={world_size} is set but {', '.join(missing)} is not: launch with torchrun, or unset "
            "WORLD_SIZE for a single-process run."
        )
    rank = _env_int(env, "RANK", default=0)
    local_rank = _env_int(env, "LOCAL_RANK", default=rank)
    if not 0 <= rank < world_size:
        raise PparError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size}): launch with torchrun.")

    device = resolve_device(device_spec)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise PparError(
                f"LOCAL_RANK={local_rank} needs GPU cuda:{local_rank} but this machine has {count}: start at most "
                f"{count} processes per machine (torchrun --nproc-per-node {count})."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # so NCCL and every bare .cuda() in libraries use this process's GPU
        backend = "nccl"
    else:
        backend = "gloo"

    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, enabled=True)


def cleanup_distributed(ctx: DistContext) -> None:
    """Leave the process group at the end of a run (a no-op for a disabled context)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _env_int(env: dict[str, str | None], key: str, *, default: int) -> int:
    value = env.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise PparError(f"Environment variable {key}={value!r} is not an integer: launch with torchrun.") from None
