"""Seconds per iteration and peak memory of DataDAM at IPC 1/10/50, as ratios to trajectory matching (MTT).

Same machine, dataset (mnist10k), distillation model (convnet-w32) and IPC for both methods. Each
(method, IPC) runs in a fresh subprocess: peak memory is the resident set's high-water mark over the steps
(Linux VmHWM, reset after setup; tracemalloc does not see torch's allocator) or torch.cuda.max_memory_allocated (CUDA).
MTT needs an expert buffer: a 1-expert, 3-epoch one is recorded once into --buffer (its contents do not
change MTT's per-iteration cost, which depends on syn_steps and the set size; max_start_epoch is set to 0
so the short buffer suffices). When `mtt` is not registered the script says so and reports DataDAM alone.

    .venv/bin/python benchmarks/bench_datadam.py [--ipcs 1,10,50] [--iters 3] [--device auto] [--md out.md]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import rss

DATASET, MODEL = "mnist10k", "convnet-w32"
DEFAULT_BUFFER = Path(__file__).resolve().parent.parent / "runs" / "bench_cache" / "mtt_buffer_mnist10k_convnet-w32"


def worker(method: str, ipc: int, iters: int, device: str, buffer: str | None) -> dict:
    """Builds the method, one warm-up step, then `iters` timed steps; returns seconds/iteration and peak memory."""
    from dd.data import load_dataset
    from dd.methods import METHODS
    from dd.methods import build_method
    from dd.utils import resolve_device

    dev = resolve_device(device)
    ds = load_dataset(DATASET)
    cls = METHODS.get(method)
    opts = {"model": MODEL}
    if method == "mtt":
        opts["max_start_epoch"] = 0
    m = build_method(method, ds, ipc, opts, buffers=[buffer] if cls.buffers[0] else [], device=dev)
    sec, peak, how = rss.time_steps(m, iters, dev)
    return {"method": method, "ipc": ipc, "sec_per_it": sec, "peak_mib": peak, "device": str(dev),
            "memory": how}


def ensure_buffer(path: Path, device: str) -> Path:
    """Records the small timing buffer once (reused by later runs)."""
    if (path / "manifest.json").exists():
        return path
    from dd.buffers.config import BufferConfig
    from dd.buffers.recorder import record_buffer

    print(f"recording a 1-expert, 3-epoch {MODEL} buffer on {DATASET} into {path} (once) ...", flush=True)
    record_buffer(BufferConfig(dataset=DATASET, model=MODEL, experts=1, epochs=3), path, device=device, progress=False)
    return path


def main(argv=None) -> int:
    a = rss.bench_args(__doc__, "1,10,50", str(DEFAULT_BUFFER), "MTT expert buffer (recorded here when missing)",
                       worker, argv)
    if a is None:
        return 0

    from dd.methods import METHODS

    have_mtt = "mtt" in METHODS
    buffer = ensure_buffer(Path(a.buffer), a.device) if have_mtt else None
    rows = []
    for ipc in [int(x) for x in a.ipcs.split(",")]:
        dam = rss.measure(__file__, "datadam", ipc, a.iters, a.device, None)
        mtt = rss.measure(__file__, "mtt", ipc, a.iters, a.device, buffer) if have_mtt else None
        rows.append((ipc, dam, mtt))
        print(json.dumps({"ipc": ipc, "datadam": dam, "mtt": mtt}), flush=True)
    lines = [f"DataDAM vs MTT on {DATASET}, {MODEL}, device {rows[0][1]['device']}, {a.iters} timed iterations "
             f"(peak memory: {rows[0][1]['memory']})", "",
             "| IPC | DataDAM s/it | MTT s/it | time ratio DataDAM/MTT | DataDAM peak MiB | MTT peak MiB | memory ratio |",
             "|---|---|---|---|---|---|---|"]
    for ipc, dam, mtt in rows:
        if mtt is None:
            lines.append(f"| {ipc} | {dam['sec_per_it']:.3f} | absent | - | {dam['peak_mib']:.0f} | absent | - |")
        else:
            lines.append(f"| {ipc} | {dam['sec_per_it']:.3f} | {mtt['sec_per_it']:.3f} | "
                         f"{dam['sec_per_it'] / mtt['sec_per_it']:.2f} | {dam['peak_mib']:.0f} | {mtt['peak_mib']:.0f} | "
                         f"{dam['peak_mib'] / max(mtt['peak_mib'], 1e-9):.2f} |")
    if not have_mtt:
        lines += ["", "trajectory matching (`mtt`) is not registered in this checkout: no ratios were computed"]
    text = "\n".join(lines)
    rss.report(text, a.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
