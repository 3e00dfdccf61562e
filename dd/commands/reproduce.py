"""`ddtk reproduce SPEC`: rebuild one table (buffers -> distill -> eval for every row) and write it beside the
paper's numbers; artifacts that already match are reused, interrupted ones resume (logic: dd/reproduce.py)."""
from __future__ import annotations


def add_parser(sub, name):
    from dd.cli import positive_int

    p = sub.add_parser(name, help="rebuild a table of results from a spec (experiments/tables/*.json)",
                       description="Runs `ddtk buffer`, `ddtk distill` and `ddtk eval` for every row of SPEC, reusing "
                                   "artifacts that match and resuming interrupted ones, and writes OUT/table.md and "
                                   "OUT/table.json: our number beside the paper's, the difference, the protocol and "
                                   "the wall times. Rerun the same command to resume.")
    p.add_argument("spec", help="a table spec, e.g. experiments/tables/bench_mnist10k.json")
    p.add_argument("--rows", default=None, metavar="ID,...", help="only these rows (comma-separated ids)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the commands and what each would do (run, resume, reuse), check that the data and "
                        "input files are present (naming what is missing; exit status 1 then); write nothing")
    p.add_argument("--out", default=None,
                   help="output directory (default runs/reproduce/SPEC_NAME, with -smoke appended for --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="shrink every row to seconds (1 expert x 1 epoch per buffer, 2 iterations without validation, "
                        "1 evaluation epoch x 1 run): checks the whole pipeline, not the numbers")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... or auto, for every command it runs")
    p.add_argument("--data-root", default=None, help="where the datasets' files are (default: the spec's, else .)")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="run N buffers or rows at once, each in its own process (on a CPU each gets cores / N torch "
                        "threads; on one GPU they share it); rows start in spec order as their buffers are ready")
    return p


def run(args) -> int:
    from dd.lock import command_line
    from dd.reproduce import reproduce

    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows is not None else None
    if rows == []:
        raise ValueError(f"--rows expects comma-separated row ids, got {args.rows!r}")
    return reproduce(args.spec, rows=rows, out=args.out, dry_run=args.dry_run, smoke=args.smoke, device=args.device,
                     data_root=args.data_root, command=command_line(),
                     jobs=args.jobs)
