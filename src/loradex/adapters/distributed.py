"""Training across processes: `loradex train` under `torchrun` (or `accelerate launch`) runs data-parallel (DDP).

Started by a launcher, each process reads its place from the environment variables the launcher sets
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`: PyTorch's env:// rendezvous) and joins one
process group: NCCL on GPUs, gloo on CPUs. Every process builds the same examples and the same shuffled order
each epoch (same seed); each step's global batch of `batch_size` rows is split between the processes, row i to
process i mod world, and DistributedDataParallel averages the LoRA gradients, so every process holds the same
weights after every step. The order is padded to a whole number of global batches by repeating its first rows
(as `torch.utils.data.DistributedSampler` pads), so every process takes the same number of steps. Every process
computes the held-out loss (the same number on each, so they stop early together); only rank 0 writes
checkpoints, the best adapter and the result, and registers the adapter. Without a launcher, world = 1 and
nothing of this runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Dist", "current"]


@dataclass(frozen=True)
class Dist:
    """This process's place: `rank` in 0..`world`-1, `local_rank` on its machine, and the device it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    def device(self, torch) -> Any:
        return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")

    def wrap(self, model, torch) -> Any:
        """`model` in DistributedDataParallel when world > 1 (its forward averages gradients), else itself."""
        if self.world == 1:
            return model
        ids = [self.local_rank] if torch.cuda.is_available() else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard(self, rows: list, batch_size: int) -> list:
        """This process's rows of `rows` (one epoch, in order): padded to whole global batches, then every
        world-th row. Raises ValueError when `batch_size` is not a multiple of the world size."""
        if self.world == 1:
            return rows
        if batch_size % self.world:
            raise ValueError(f"--batch-size {batch_size} is the global batch: it must be a multiple of the "
                             f"{self.world} processes")
        pad = -len(rows) % batch_size
        padded = rows + [rows[i % len(rows)] for i in range(pad)]
        return padded[self.rank :: self.world]

    def sum(self, value: float, torch) -> float:
        """`value` summed over every process."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def barrier(self, torch) -> None:
        if self.world > 1:
            torch.distributed.barrier()


_CURRENT: Dist | None = None


def current() -> Dist:
    """This process's `Dist`, joining the launcher's process group on first use (world 1 without a launcher).
    Raises RuntimeError when the launcher's variables are incomplete."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CURRENT = Dist()
        return _CURRENT
    import torch

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend=backend)
    _CURRENT = Dist(rank, world, local)
    return _CURRENT
