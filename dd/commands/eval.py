"""`ddtk eval`: score a synthetic set (or a baseline) with the harness, several architectures at once."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub, name):
    from dd.cli import add_common, positive_int
    from dd.commands.distill import add_teacher_options
    from dd.eval.baselines import BASELINES

    p = sub.add_parser(name, help="evaluate a synthetic set or a baseline under the standard protocol")
    p.add_argument("synset", nargs="?", help="a .safetensors synthetic set (or an MTT images_best.pt)")
    p.add_argument("--baseline", choices=list(BASELINES), action="append",
                   help="evaluate a baseline instead of (or beside) a set; repeatable. herding, kcenter and forgetting "
                        "select IPC real images per class (dd.coresets) from the training split only")
    p.add_argument("--coreset-net", default=None, metavar="SPEC",
                   help="the network whose penultimate features herding/kcenter read and whose `ddtk buffer` epochs "
                        "forgetting counts: DIR or DIR@E, a checkpoint, or module:callable (default: the first "
                        "--teacher, else the set's recorded teacher, else a convnet-w32 trained on the training split)")
    p.add_argument("--dataset", default=None, help="dataset (default: the set's own, else mnist10k); a registered "
                   "name, folder:PATH or package.module:callable")
    p.add_argument("--ipc", type=positive_int, default=None,
                   help="images per class for --baseline random/herding/kcenter/forgetting without a set")
    p.add_argument("--model", "--models", dest="models", default="convnet",
                   help="architecture(s), comma-separated, e.g. convnet-w32,mlp,lenet")
    p.add_argument("--full-epochs", type=int, default=None, help="epochs for the full-data baseline (default --epochs, else 30)")
    p.add_argument("--runs", type=int, default=5, help="fresh networks per row")
    p.add_argument("--no-baselines", action="store_true", help="with a set: do not add the random/full rows")
    p.add_argument("--zca", action="store_true",
                   help="ZCA-whiten the dataset (baselines, and sets that do not record it, e.g. an imported .pt)")
    p.add_argument("--scores", action="store_true",
                   help="add DD-Ranking scores (HLR, IOR, LRS, ARS) per architecture to the report (see dd.eval.scores)")
    p.add_argument("--lrs-weight", type=float, default=0.5, help="--scores: w in alpha = w IOR - (1 - w) HLR")
    p.add_argument("--ars-weight", type=float, default=0.5,
                   help="--scores: gamma in beta = gamma (gap with augmentation) + (1 - gamma) (gap without)")
    add_protocol_options(p)
    p.add_argument("--protocols", default=None, metavar="NAME,NAME",
                   help="several label regimes in one report, e.g. hard,teacher: every row under each protocol in "
                        "turn (the protocol options apply to each; the teacher protocol needs a teacher); instead of "
                        "--protocol")
    p.add_argument("--lr-search", default=None, metavar="LR,LR,...",
                   help="choose each architecture's lr among these on a validation split carved from the training data "
                        "(10%%, seed 0; never the test split), for the set and the random baseline alike, e.g. "
                        "0.001,0.005,0.01,0.05,0.1; a set's learned lr is one more candidate; full data keeps the "
                        "protocol lr")
    add_teacher_options(p)
    p.add_argument("--labels", default=None, help="a `ddtk relabel` directory: train on its stored teacher labels")
    add_common(p)
    return p


def add_protocol_options(p) -> None:
    """The evaluation protocol and its options (shared by eval and relabel)."""
    p.add_argument("--protocol", default=None,
                   help="hard (DC/MTT), soft (label distributions) or teacher (KD from --teacher); default: the one the "
                        "set records, else hard")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (protocol default: hard 1000, teacher 300)")
    p.add_argument("--lr", type=float, default=None, help="override the protocol lr (and ignore a learned lr)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=None)
    p.add_argument("--temperature", type=float, default=None, help="teacher protocol: softmax temperature T")
    p.add_argument("--teacher-bn", choices=["eval", "train"], default=None,
                   help="teacher protocol: BN with running statistics (eval) or each batch's own (train)")
    p.add_argument("--mix", choices=["none", "cutmix", "mixup"], default=None, help="teacher protocol: batch mixing")
    p.add_argument("--protocol-option", dest="protocol_options", action="append", default=[], metavar="KEY=VALUE",
                   help="any other protocol field, e.g. --protocol-option crop_scale=0.5,1 (repeatable)")


def parse_lr_list(text: str) -> list[float]:
    """'0.001,0.01,0.1' -> [0.001, 0.01, 0.1]; anything but positive numbers is an error naming --lr-search."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [float(t) for t in items]
    except ValueError:
        values = []
    if not values or any(not (v > 0 and v != float("inf")) for v in values):
        raise ValueError(f"--lr-search expects comma-separated positive learning rates, e.g. 0.001,0.01,0.1; got {text!r}")
    return values


def parse_models(text: str) -> list[str]:
    """--models 'a, b,c' -> ['a', 'b', 'c']."""
    return [a.strip() for a in text.split(",") if a.strip()]


def report_baselines(args) -> list[str]:
    """The baseline rows a report gets: --baseline (repeatable), else none with --no-baselines, else random and full."""
    return list(args.baseline or ([] if args.no_baselines else ["random", "full"]))


def protocol_from_args(args, recorded: dict | None = None, name: str | None = None):
    """The protocol `name`, else the one named on the command line, else the one a set records, else hard, with
    every option applied."""
    from dd.eval import Protocol, get_protocol
    from dd.methods.base import coerce_fields
    from dd.utils import parse_assignments

    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer,
                 "temperature": args.temperature, "teacher_bn": args.teacher_bn, "mix": args.mix}
    if args.lr is not None:
        overrides.update(lr=args.lr, use_learned_lr=False)
    overrides.update(coerce_fields(Protocol, parse_assignments(args.protocol_options, "--protocol-option")))
    base = name or args.protocol or (recorded if recorded else "hard")
    return get_protocol(base, **overrides)


def parse_protocols(args) -> list:
    """--protocols a,b -> [a, b] (each given once; get_protocol refuses unknown names); without it -> [None]
    (--protocol's rule)."""
    if args.protocols is None:
        return [None]
    if args.protocol is not None:
        raise ValueError("--protocol names one protocol and --protocols several: give one of them")
    names = [n.strip() for n in args.protocols.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--protocols expects distinct protocol names separated by commas, e.g. hard,teacher; got "
                         f"{args.protocols!r}")
    return names


def merge_reports(reports: list):
    """One report of several protocols' reports: every row in turn, the first one's meta with each protocol and
    the summed wall time."""
    from dd.eval.report import Report

    if len(reports) == 1:
        return reports[0]
    meta = dict(reports[0].meta)
    meta["protocols"] = [r.meta["protocol"] for r in reports]
    meta["wall_seconds"] = sum(r.meta["wall_seconds"] for r in reports)
    return Report([row for r in reports for row in r.rows], meta=meta)


def coreset_selector(args, synset, dataset, device, baselines):
    """One Selector shared by every protocol's report (embeddings computed once), reading --coreset-net, else the
    first --teacher, else the teacher the set records, else a network trained on the training split; None when no
    coreset baseline is asked for."""
    from dd.coresets import SELECTIONS, Selector

    if not set(SELECTIONS) & set(baselines):
        return None
    records = ((synset.meta.get("evaluation") or {}).get("teachers") or []) if synset is not None else []
    spec = args.coreset_net or (args.teachers[0] if args.teachers else None) or (records[0]["spec"] if records else None)
    model = args.teacher_model[0] if args.teacher_model and not args.coreset_net else None
    return Selector(dataset, spec, device=device, seed=args.seed, teacher_model=model)


def teacher_for(args, synset, dataset, device):
    """--teacher (several: an equal-weight committee), else the teacher(s) the set records; None when there is none."""
    from dd.teachers import Committee, open_teachers, teacher_from_records

    if args.teachers:
        members = open_teachers(args.teachers, args.teacher_model)
        for m in members:
            m.check_compatible(dataset.name, dataset.zca is not None)
        modules = [m.module(dataset, device) for m in members]
        return modules[0] if len(modules) == 1 else Committee(modules, [1.0 / len(modules)] * len(modules))
    evaluation = (synset.meta.get("evaluation") or {}) if synset is not None else {}
    if evaluation.get("teachers"):
        return teacher_from_records(evaluation["teachers"], dataset, device, evaluation.get("teacher_weights"))
    return None


def run(args) -> int:
    """`ddtk eval`, in one process or under torchrun: the runs are spread over the ranks (see `build_report`), rank 0
    prints and writes the report and the other ranks end quietly."""
    from dd.distributed import ProcessGroup
    from dd.utils import resolve_device

    group = ProcessGroup(resolve_device(args.device))
    try:
        return _run(args, group)
    finally:
        group.close()


def _run(args, group) -> int:
    from dd.cli import data_options
    from dd.data import DEFAULT_DATASET, load_dataset
    from dd.eval import build_report
    from dd.eval.harness import options_for_set
    from dd.synset import SyntheticSet
    from dd.utils import seed_everything

    seed_everything(args.seed)
    lr_search = parse_lr_list(args.lr_search) if args.lr_search is not None else None
    if lr_search and args.lr is not None:
        raise ValueError("--lr fixes the lr and --lr-search chooses it: give one (the full-data baseline's lr can be "
                         "set with --protocol-option lr=VALUE)")
    archs = parse_models(args.models)
    synset = SyntheticSet.load(args.synset) if args.synset else None
    if synset is None and not args.baseline:
        raise ValueError("give a synthetic set file or --baseline NAME")
    names = parse_protocols(args)
    if args.scores:
        from dd.eval.scores import check_weight

        if len(names) > 1:
            raise ValueError("--scores compares a set with its baselines under one protocol: give --protocol, not "
                             "--protocols")
        if synset is None:
            raise ValueError("--scores compares a synthetic set with its baselines: give the set file")
        check_weight(args.lrs_weight, "--lrs-weight")  # before any training
        check_weight(args.ars_weight, "--ars-weight")
    recorded = ((synset.meta.get("evaluation") or {}).get("protocol")) if synset is not None else None
    protocols = [protocol_from_args(args, recorded, n) for n in names]
    name = args.dataset or (synset.meta.get("dataset") if synset else None) or DEFAULT_DATASET
    zca = bool(synset.meta["zca"]) if synset is not None and "zca" in synset.meta else args.zca
    options = data_options(args)
    dataset = load_dataset(name, root=args.data_root, zca=zca,
                           **(options_for_set(name, synset.meta, options) if synset is not None else options))
    device = group.local_device()
    teachers = [teacher_for(args, synset, dataset, device) if p.labels == "teacher" else None for p in protocols]
    if any(p.labels == "teacher" and t is None for p, t in zip(protocols, teachers)):
        raise ValueError("the teacher protocol needs a teacher: pass --teacher SPEC (e.g. a `ddtk buffer` directory)")
    if args.labels and all(p.labels != "teacher" for p in protocols):
        raise ValueError("--labels holds teacher labels: use it with --protocol teacher (with --protocols, the teacher "
                         "protocol's rows read them)")
    baselines = report_baselines(args)
    if any(b not in ("full",) for b in baselines) and args.ipc is None and synset is None:
        raise ValueError(f"--baseline {next(b for b in baselines if b != 'full')} needs --ipc N")
    if synset is not None and args.synset and "wall_seconds" not in synset.meta:
        from dd.methods.driver import logged_seconds

        synset.meta["wall_seconds"] = logged_seconds(Path(args.synset).parent)  # the budget's time (None: no log)
    selector = coreset_selector(args, synset, dataset, device, baselines)
    reports = [build_report(synset, archs, p, args.runs, dataset=dataset, ipc=args.ipc, baselines=baselines,
                            full_epochs=args.full_epochs or args.epochs or 30,
                            full_runs=args.runs if args.baseline else 1, device=device, seed=args.seed, teacher=t,
                            labels=args.labels if p.labels == "teacher" else None, lr_search=lr_search, group=group,
                            progress=group.is_main, coreset_net=selector)
               for p, t in zip(protocols, teachers)]
    report = merge_reports(reports)
    protocol = protocols[0]
    if not group.is_main:
        return 0
    if args.scores:
        from dd.eval.scores import add_scores

        if group.world > 1:
            print(f"--scores: the report's runs were spread over {group.world} processes; the scores' further "
                  "evaluations run in this one (rank 0)")
        report = add_scores(report, synset, archs, protocol, args.runs, w=args.lrs_weight, gamma=args.ars_weight,
                            dataset=dataset, ipc=args.ipc, full_epochs=args.full_epochs or args.epochs or 30,
                            full_runs=args.runs if args.baseline else 1, device=device, seed=args.seed,
                            teacher=teachers[0], labels=args.labels)
    for r in report.rows:
        print(r)
    print()
    print(report.to_markdown())
    out = Path(args.out) if args.out else (Path(args.synset).parent if args.synset else None)
    if out is not None:
        j, m = report.save(out, stem="eval")
        print(f"wrote {j} and {m}")
    return 0
