"""`ddtk plot`: PNG plots of a run directory (training curves, validation accuracy, cross-architecture report)."""
from __future__ import annotations


def add_parser(sub, name):
    p = sub.add_parser(name, help="plot a run's loss curves, validation accuracy and cross-architecture report as PNGs")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a `ddtk distill --out` directory (metrics.jsonl, eval.json), or an eval.json / metrics.jsonl file")
    p.add_argument("--out", default=None, help="directory for the PNGs (default: the directory read)")
    return p


def run(args) -> int:
    from dd.plots import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(f"wrote {path}")
    return 0
