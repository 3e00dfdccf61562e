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
