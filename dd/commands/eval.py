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
    p.add_argument("--full-epochs", type=positive_int, default=None, help="epochs for the full-data baseline (default --epochs, else 30)")
    p.add_argument("--runs", type=positive_int, default=5, help="fresh networks per row")
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
    from dd.cli import positive_float, positive_int

    p.add_argument("--protocol", default=None,
                   help="hard (DC/MTT), soft (label distributions), teacher (KD from --teacher) or a user's "
                        "package.module:callable returning a dd.eval.rules.ProtocolRule; default: the one the set "
                        "records, else hard")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (protocol default: hard 1000, teacher 300)")
    p.add_argument("--lr", type=positive_float, default=None, help="override the protocol lr (and ignore a learned lr)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="training batch size")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=None)
    p.add_argument("--temperature", type=positive_float, default=None, help="teacher protocol: softmax temperature T")
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


def parse_models(text: str, option: str = "--models") -> list[str]:
    """--models 'a, b,c' -> ['a', 'b', 'c'], each a known model (checked before any data is read)."""
    from dd.models import check_model

    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise ValueError(f"{option} expects comma-separated model names (see `ddtk models`), got {text!r}")
    return [check_model(n, option) for n in names]


def report_baselines(args) -> list[str]:
    """The baseline rows a report gets: --baseline (repeatable), else none with --no-baselines, else random and full."""
    return list(args.baseline or ([] if args.no_baselines else ["random", "full"]))


def protocol_overrides(args) -> dict:
    """The protocol options given on the command line, as dd.eval.plan.resolve_protocol's keyword arguments."""
    from dd.utils import parse_assignments

    return dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
                temperature=args.temperature, teacher_bn=args.teacher_bn, mix=args.mix,
                options=parse_assignments(args.protocol_options, "--protocol-option"),
                names={k: "--" + k.replace("_", "-") for k in ("epochs", "lr", "batch_size", "optimizer",
                                                                "temperature", "teacher_bn", "mix")})


def protocol_from_args(args, recorded: dict | None = None, name: str | None = None):
    """The protocol `name`, else the one named on the command line, else the one a set records, else hard, with
    every option applied."""
    from dd.eval.plan import resolve_protocol

    return resolve_protocol(name if name is not None else args.protocol, recorded, **protocol_overrides(args))


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


def eval_plan(args):
    """argv -> dd.eval.plan.EvalPlan: every option checked and every input opened, no data read."""
    from dd.cli import data_options
    from dd.commands.distill import check_teacher_model
    from dd.eval.plan import make_eval_plan
    from dd.eval.scores import check_weight

    check_teacher_model(args.teachers, args.teacher_model)
    check_weight(args.lrs_weight, "--lrs-weight")  # with or without --scores
    check_weight(args.ars_weight, "--ars-weight")
    lr_search = parse_lr_list(args.lr_search) if args.lr_search is not None else None
    if lr_search and args.lr is not None:
        raise ValueError("--lr fixes the lr and --lr-search chooses it: give one (the full-data baseline's lr can be "
                         "set with --protocol-option lr=VALUE)")
    archs = parse_models(args.models)
    if args.synset is None and not args.baseline:
        raise ValueError("give a synthetic set file or --baseline NAME")
    defaults = {}
    if args.synset:
        from dd.methods.driver import logged_seconds

        defaults["wall_seconds"] = logged_seconds(Path(args.synset).parent)  # the budget's time (None: no log)
    names = [args.protocol if n is None else n for n in parse_protocols(args)]  # None: the set's recorded one
    return make_eval_plan(args.synset, archs, names, args.runs, dataset=args.dataset, zca=args.zca,
                          ipc=args.ipc, baselines=report_baselines(args),
                          full_epochs=args.full_epochs or args.epochs or 30,
                          full_runs=args.runs if args.baseline else 1, teachers=args.teachers,
                          teacher_model=args.teacher_model, labels=args.labels, lr_search=lr_search,
                          scores=(args.lrs_weight, args.ars_weight) if args.scores else None, seed=args.seed,
                          data_root=args.data_root, data_options=data_options(args), coreset_net=args.coreset_net,
                          protocol_overrides=protocol_overrides(args), set_defaults=defaults)


def _run(args, group) -> int:
    from dd.eval.run import evaluate

    report = evaluate(eval_plan(args), group)
    if report is None:  # a rank > 0 under torchrun
        return 0
    for r in report.rows:
        print(r)
    print()
    print(report.to_markdown())
    out = Path(args.out) if args.out else (Path(args.synset).parent if args.synset else None)
    if out is not None:
        j, m = report.save(out, stem="eval")
        print(f"wrote {j} and {m}")
    return 0
