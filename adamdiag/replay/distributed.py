"""Variants split across processes under ``torchrun`` (WORLD_SIZE/RANK set): each rank replays its share
(batched, on its own device), rank 0 gathers the curves, analyses and prints.

gloo on CPU, nccl on CUDA when every local rank has a GPU of its own (NCCL refuses two ranks on one
GPU; ranks that share a GPU talk over gloo, which is enough: only small Python objects travel).
Every rank resolves the same inputs (entry point, checkpoint, log), so they agree on the variant list
without talking; they exchange only status, curves and the exit code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

# A rank that never arrives (crashed before the first collective) must not hang the others forever.
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_size: int = 1  # ranks on this node (torchrun's LOCAL_WORLD_SIZE)

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(env: dict[str, str] | None = None) -> World:
    """WORLD_SIZE/RANK/LOCAL_RANK as torchrun sets them; a single process otherwise."""
    env = dict(os.environ) if env is None else env
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
        local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    except ValueError:
        return World()
    if size <= 1:
        return World()
    return World(size, rank, local, local_size)


def choose_backend(device_type: str, world: World, gpu_count: int) -> str:
    """nccl when the ranks run on CUDA and each rank on this node has its own GPU, gloo otherwise.

    >>> choose_backend("cuda", World(2, 0, 0, 2), 1), choose_backend("cuda", World(2, 0, 0, 2), 2)
    ('gloo', 'nccl')
    """
    return "nccl" if device_type == "cuda" and gpu_count >= world.local_size else "gloo"


def shard(n: int, size: int, rank: int) -> list[int]:
    """Variant indices for ``rank``: round robin, so the original (index 0) is on rank 0 and the work
    is balanced when K is not a multiple of the world size."""
    return list(range(rank, n, size))


def merge(parts: list[list[tuple[int, T]]], n: int) -> list[T]:
    """Put (index, item) pairs from every rank back in variant order; every index exactly once."""
    out: list[Any] = [None] * n
    seen = set()
    for part in parts:
        for i, item in part:
            if i in seen or not 0 <= i < n:
                raise ValueError(f"variant {i} reported twice or out of range")
            seen.add(i)
            out[i] = item
    if len(seen) != n:
        raise ValueError(f"missing variants: {sorted(set(range(n)) - seen)}")
    return out


class Group:
    """A process group for the replay; a no-op for a single process."""

    def __init__(self, world: World, device_type: str) -> None:
        self.world = world
        self._own = False
        if not world.distributed:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            import torch

            gpus = torch.cuda.device_count() if device_type == "cuda" else 0
            dist.init_process_group(backend=choose_backend(device_type, self.world, gpus), timeout=TIMEOUT)
            self._own = True

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.world.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """rank 0's ``obj`` on every rank."""
        if not self.world.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self._own:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._own = False
