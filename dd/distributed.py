"""torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a single process; one helper for every job."""
from __future__ import annotations

import datetime
import os
from typing import Mapping, Sequence

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

    def share(self, n: int, mine: Mapping[int, Sequence[float]], width: int) -> torch.Tensor:
        """The (n, width) float64 table of jobs 0..n-1, each rank having filled the rows in `mine` (its jobs), on
        every rank.

        Gathered with `sum` over zeros elsewhere, which is exact (x + 0 == x; a NaN a job reports stays NaN); a count
        column checks that every job was filled by exactly one rank, so a dealing bug is an error, not a wrong table.
        """
        table = torch.zeros(n, width + 1, dtype=torch.float64)
        for i, values in mine.items():
            if len(values) != width:
                raise ValueError(f"job {i} reported {len(values)} values, the table has {width} per job")
            table[i, :width] = torch.tensor([float(v) for v in values], dtype=torch.float64)
            table[i, width] = 1.0
        table = self.sum(table)
        counts = table[:, width]
        wrong = [i for i in range(n) if counts[i] != 1]
        if wrong:
            raise RuntimeError(f"jobs {wrong[:10]} were filled by {[int(counts[i]) for i in wrong[:10]]} ranks; every "
                               f"job must be filled by exactly one of the {self.world}")
        return table[:, :width]

    def close(self) -> None:
        if self.owned:
            self.dist.destroy_process_group()
            self.owned = False


def deal(costs: Sequence[float], world: int) -> list[list[int]]:
    """Jobs 0..len(costs)-1 dealt to `world` ranks by estimated cost: each job, costliest first (ties: lower index
    first), goes to the rank with the least cost so far (ties: fewer jobs, then lower rank), so ranks finish close
    together.

    The result depends only on (costs, world) and every rank computes it alike, with no communication; each rank's
    list is in job order, and every job is in exactly one list. Equal costs give round-robin.
    """
    if world < 1:
        raise ValueError(f"cannot deal jobs to {world} ranks")
    bad = [i for i, c in enumerate(costs) if not (c >= 0 and c != float("inf"))]
    if bad:
        raise ValueError(f"job costs must be finite and non-negative; jobs {bad[:10]} are "
                         f"{[costs[i] for i in bad[:10]]}")
    load = [0.0] * world
    hands: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        rank = min(range(world), key=lambda r: (load[r], len(hands[r]), r))
        hands[rank].append(i)
        load[rank] += costs[i]
    return [sorted(h) for h in hands]
