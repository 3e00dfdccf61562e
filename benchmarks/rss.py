"""Resident memory of this process from Linux's /proc, for the benchmarks' fresh-process memory tables.

`reset_peak()` restarts the high-water mark (VmHWM), which a child started by fork+exec otherwise inherits
from its parent and which would keep the setup's peak; `peak_mib()` then reads the peak since the reset.
"""
from __future__ import annotations


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    raise RuntimeError(f"cannot read {field} from /proc/self/status: the CPU memory tables need Linux")


def reset_peak() -> None:
    """Sets the peak resident set back to the current one (Linux >= 4.0, writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as err:
        raise RuntimeError(f"cannot reset the peak resident set ({err}); the CPU memory tables need Linux") from None


def current_mib() -> float:
    return _status_kib("VmRSS") / 1024


def peak_mib() -> float:
    """The peak resident set since the process started or since the last reset_peak()."""
    return _status_kib("VmHWM") / 1024


def time_steps(m, iters: int, dev) -> tuple[float, float, str]:
    """(seconds per step, peak MiB above the start, how the peak was measured) of `iters` calls of a method's
    step() after one warm-up step (counted in the peak, not in the time): CUDA's allocator on a GPU, else the RSS."""
    import time

    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
    else:
        reset_peak()
        base = current_mib()
    m.step(0)  # warm-up (allocator, lazy init)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for it in range(1, iters + 1):
        m.step(it)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    sec = (time.perf_counter() - t0) / iters
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_mib()) - base
    how = "cuda max_memory_allocated" if dev.type == "cuda" else "peak RSS over the steps minus RSS before"
    return sec, peak, how
