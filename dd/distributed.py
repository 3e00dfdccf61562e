"""torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a single process; one helper for every job."""
from __future__ import annotations

import datetime
import os

import torch


class ProcessGroup:
    """rank/world from torchrun's environment; gloo on CPU, NCCL on CUDA; a no-op in a single process.

    The group is created here only when none exists yet, and destroyed by `close()` only if it was.
    """

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        self.owned = False
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(hours=72))
            self.owned = True

    @classmethod
    def single(cls) -> "ProcessGroup":
        """One process, whatever the environment says (for methods built outside a torchrun job)."""
        g = cls.__new__(cls)
        import torch.distributed as dist

        g.dist, g.world, g.rank, g.local_rank, g.device, g.owned = dist, 1, 0, 0, torch.device("cpu"), False
        return g

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_device(self) -> torch.device:
        """This rank's device: cuda:LOCAL_RANK under torchrun on CUDA, else the configured one."""
        if self.world > 1 and self.device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return self.device

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (exact for tensors each rank fills on disjoint entries, zeros elsewhere)."""
        if self.world == 1:
            return t
        comm = t.to(self.local_device()) if self.device.type == "cuda" else t.clone()
        self.dist.all_reduce(comm)
        return comm.to(t.device)

    def close(self) -> None:
        if self.owned:
            self.dist.destroy_process_group()
            self.owned = False
