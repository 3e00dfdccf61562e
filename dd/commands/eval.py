"""`dd eval`: score a synthetic set (or a baseline) with the harness, several architectures at once."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub, name):
    from dd.cli import add_common

    p = sub.add_parser(name, help="evaluate a synthetic set or a baseline under the standard protocol")
    p.add_argument("synset", nargs="?", help="a .safetensors synthetic set (or an MTT images_best.pt)")
    p.add_argument("--baseline", choices=["random", "full"], action="append",
                   help="evaluate a baseline instead of (or beside) a set; repeatable")
    p.add_argument("--dataset", default=None, help="dataset (default: the set's own, else mnist10k)")
    p.add_argument("--ipc", type=int, default=None, help="images per class for --baseline random")
    p.add_argument("--model", "--models", dest="models", default="convnet",
                   help="architecture(s), comma-separated, e.g. convnet-w32,mlp,lenet")
    p.add_argument("--protocol", default="hard", help="hard (DC/MTT), soft (label distributions)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (protocol default 1000)")
    p.add_argument("--full-epochs", type=int, default=None, help="epochs for the full-data baseline (default --epochs, else 30)")
    p.add_argument("--lr", type=float, default=None, help="override the protocol lr (and ignore a learned lr)")
    p.add_argument("--runs", type=int, default=5, help="fresh networks per row")
    p.add_argument("--no-baselines", action="store_true", help="with a set: do not add the random/full rows")
    p.add_argument("--zca", action="store_true", help="ZCA-whiten the dataset (baselines only; sets record their own)")
    add_common(p)
    return p


def run(args) -> int:
    from dd.data import DEFAULT_DATASET, load_dataset
    from dd.eval import build_report, get_protocol
    from dd.synset import SyntheticSet
    from dd.utils import seed_everything

    seed_everything(args.seed)
    overrides = {"epochs": args.epochs}
    if args.lr is not None:
        overrides.update(lr=args.lr, use_learned_lr=False)
    protocol = get_protocol(args.protocol, **overrides)
    archs = [a.strip() for a in args.models.split(",") if a.strip()]
    synset = SyntheticSet.load(args.synset) if args.synset else None
    if synset is None and not args.baseline:
        raise ValueError("give a synthetic set file or --baseline random|full")
    name = args.dataset or (synset.meta.get("dataset") if synset else None) or DEFAULT_DATASET
    zca = bool(synset.meta.get("zca")) if synset is not None else args.zca
    dataset = load_dataset(name, root=args.data_root, zca=zca)
    baselines = args.baseline or ([] if args.no_baselines else ["random", "full"])
    if "random" in baselines and args.ipc is None and synset is None:
        raise ValueError("--baseline random needs --ipc N")
    report = build_report(synset, archs, protocol, args.runs, dataset=dataset, ipc=args.ipc, baselines=baselines,
                          full_epochs=args.full_epochs or args.epochs or 30, full_runs=args.runs if args.baseline else 1,
                          device=args.device, seed=args.seed)
    for r in report.rows:
        print(r)
    print()
    print(report.to_markdown())
    out = Path(args.out) if args.out else (Path(args.synset).parent if args.synset else None)
    if out is not None:
        j, m = report.save(out, stem="eval")
        print(f"wrote {j} and {m}")
    return 0
