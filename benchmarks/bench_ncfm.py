"""Seconds per iteration and peak memory of NCFM (with and without its sampling net) against DM and MTT, in one run.

Same machine, dataset (mnist10k), distillation model (convnet-w32) and IPC for every method, each (method, IPC)
in a fresh subprocess: peak memory is the resident set's high-water mark over the steps (Linux VmHWM, reset after
setup) or torch.cuda.max_memory_allocated (CUDA). NCFM and MTT read one expert buffer (--buffer; a 1-expert, 3-epoch
one is recorded once when it is missing: neither method's per-iteration cost depends on its contents). Every method
runs its bench options (the experiments/*_mnist10k_ipc*.json configs: DM and NCFM 256 real images per class; MTT its
presets for the IPC), so the ratios are those of the bench table's runs.

    .venv/bin/python benchmarks/bench_ncfm.py [--ipcs 1,10] [--iters 3] [--device auto] [--md out.md]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import rss
from bench_datadam import ensure_buffer  # the same small timing buffer, recorded once for both

DATASET, MODEL = "mnist10k", "convnet-w32"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUFFER = ROOT / "runs" / "bench_cache" / "mtt_buffer_mnist10k_convnet-w32"
METHODS = {"dm": ("dm", {}), "mtt": ("mtt", {"max_start_epoch": 0}), "ncfm": ("ncfm", {}),
           "ncfm+psi": ("ncfm", {"sampling_net": True})}


def bench_options(name: str, ipc: int) -> dict:
    """The method's options in the bench config for this IPC (experiments/<method>_mnist10k_ipc<ipc>.json), if any."""
    method, extra = METHODS[name]
    path = ROOT / "experiments" / f"{method}_{DATASET}_ipc{ipc}.json"
    cfg = json.loads(path.read_text()) if path.exists() else {}
    opts = {k: v for k, v in cfg.items() if k not in ("method", "dataset", "ipc", "run", "notes", "buffer", "teachers")}
    return {**opts, "model": MODEL, **extra}


def worker(name: str, ipc: int, iters: int, device: str, buffer: str) -> dict:
    """Builds the method, one warm-up step, then `iters` timed steps; returns seconds/iteration and peak memory."""
    from dd.data import load_dataset
    from dd.methods import METHODS as REGISTRY
    from dd.methods import build_method
    from dd.utils import resolve_device

    dev = resolve_device(device)
    method = METHODS[name][0]
    opts = bench_options(name, ipc)
    if method == "mtt":
        opts["max_start_epoch"] = 0  # the short timing buffer has epochs 0..3 only
        opts["expert_epochs"] = min(int(opts.get("expert_epochs") or 2), 2)
    needs_buffer = REGISTRY.get(method).buffers[0] > 0
    m = build_method(method, load_dataset(DATASET), ipc, opts, buffers=[buffer] if needs_buffer else [], device=dev)
    sec, peak, how = rss.time_steps(m, iters, dev)
    return {"method": name, "ipc": ipc, "sec_per_it": sec, "peak_mib": peak, "device": str(dev), "options": opts,
            "memory": how}


def table(rows: dict, ipcs: list[int], iters: int) -> str:
    first = rows[(ipcs[0], "ncfm")]
    lines = [f"NCFM vs DM and MTT on {DATASET}, {MODEL}, device {first['device']}, {iters} timed iterations after one "
             f"warm-up (peak memory: {first['memory']})", "",
             "| IPC | method | s/it | peak MiB | s/it ratio NCFM/this | memory ratio NCFM/this |", "|---|---|---|---|---|---|"]
    for ipc in ipcs:
        ref = rows[(ipc, "ncfm")]
        for name in METHODS:
            r = rows[(ipc, name)]
            lines.append(f"| {ipc} | {name} | {r['sec_per_it']:.3f} | {r['peak_mib']:.0f} | "
                         f"{ref['sec_per_it'] / r['sec_per_it']:.2f} | {ref['peak_mib'] / max(r['peak_mib'], 1e-9):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = rss.bench_args(__doc__, "1,10", str(DEFAULT_BUFFER), "expert buffer of NCFM and MTT (recorded when missing)",
                       worker, argv)
    if a is None:
        return 0
    buffer = ensure_buffer(Path(a.buffer), a.device)
    ipcs = [int(x) for x in a.ipcs.split(",")]
    rows = {}
    for ipc in ipcs:
        for name in METHODS:
            rows[(ipc, name)] = rss.measure(__file__, name, ipc, a.iters, a.device, buffer)
            print(json.dumps(rows[(ipc, name)]), flush=True)
    text = table(rows, ipcs, a.iters)
    rss.report(text, a.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
