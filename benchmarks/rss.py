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


def bench_args(doc: str, ipcs: str, buffer: str, buffer_help: str, worker, argv=None):
    """The memory benchmarks' command line: --ipcs, --iters, --device, --buffer, --md, and the hidden --worker/--ipc
    a measurement re-launches the script with (a fresh process, so each peak is its own). In worker mode `worker`
    (name, ipc, iters, device, buffer) -> dict is run and its JSON printed, and None is returned; else the args."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--ipcs", default=ipcs)
    p.add_argument("--iters", type=int, default=3, help="timed iterations per configuration (after one warm-up)")
    p.add_argument("--device", default="auto")
    p.add_argument("--buffer", default=buffer, help=buffer_help)
    p.add_argument("--md", default=None, help="also write the table to this markdown file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ipc", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.ipc, a.iters, a.device, a.buffer)))
        return None
    return a


def measure(script: str, name: str, ipc: int, iters: int, device: str, buffer=None) -> dict:
    """One configuration measured by `script --worker NAME` in a process of its own; its JSON line."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, script, "--worker", name, "--ipc", str(ipc), "--iters", str(iters), "--device", device]
    cmd += ["--buffer", str(buffer)] if buffer is not None else []
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{name} ipc {ipc} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def report(text: str, md) -> None:
    """Prints the table, and writes it to `md` (atomically) when given."""
    print(text)
    if md:
        from dd.utils import atomic_write_text

        atomic_write_text(md, text + "\n")
