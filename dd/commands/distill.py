"""`ddtk distill`: run any registered method (checkpointed, resumable) and evaluate the result."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub, name):
    from dd.cli import add_common, non_negative_int, positive_int
    from dd.eval.baselines import BASELINES

    p = sub.add_parser(name, help="distil a dataset into IPC images per class with a method")
    p.add_argument("--method", default=None, help="method name (see `ddtk methods`; default dm)")
    p.add_argument("--dataset", default=None, help="dataset: a registered name (default mnist10k), folder:PATH "
                   "(an ImageFolder tree PATH/{train,val}/<class>/*) or package.module:callable")
    p.add_argument("--ipc", type=positive_int, default=None, help="images per class (default 10)")
    p.add_argument("--buffer", default=None, help="expert-trajectory buffer directory (trajectory matching)")
    add_teacher_options(p)
    p.add_argument("--iterations", type=positive_int, default=None, help="outer iterations (default 1000)")
    p.add_argument("--config", default=None, help="JSON file of method options and run options ('run': {...})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method option, e.g. --set lr_img=100 (repeatable)")
    p.add_argument("--model", default=None, help="architecture to distil with (method option 'model')")
    p.add_argument("--eval-models", default=None, help="comma-separated architectures for the final report")
    p.add_argument("--eval-epochs", type=positive_int, default=None, help="epochs per evaluation run (default 1000)")
    p.add_argument("--eval-runs", type=non_negative_int, default=None,
                   help="fresh networks per final evaluation row (default 5; 0: no report)")
    p.add_argument("--eval-every", type=non_negative_int, default=None, help="validate every N iterations (0: never)")
    p.add_argument("--no-full-baseline", action="store_true", help="skip the full-data baseline row")
    p.add_argument("--baseline", dest="baselines", choices=list(BASELINES), action="append", default=None,
                   help="the baselines scored beside the set under its protocol and teacher (repeatable; default "
                        "random and full): herding, kcenter and forgetting select IPC real images per class")
    p.add_argument("--coreset-net", default=None, metavar="SPEC",
                   help="network of the coreset baselines (herding/kcenter features, forgetting's `ddtk buffer`); "
                        "default: the first --teacher, else --buffer, else a convnet-w32 trained on the training split")
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (optional extra; WANDB_MODE=offline works)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    add_common(p)
    return p


def add_teacher_options(p) -> None:
    """--teacher (repeatable) and --teacher-model: the options every command that reads teachers shares."""
    p.add_argument("--teacher", dest="teachers", action="append", default=[], metavar="SPEC",
                   help="a teacher: DIR or DIR@E (a `ddtk buffer` directory, expert E), a checkpoint file, or "
                        "package.module:callable (repeatable)")
    p.add_argument("--teacher-model", action="append", default=None,
                   help="architecture of checkpoint teachers that do not name it: once for all, or once per --teacher")


def check_teacher_model(teachers, teacher_model) -> None:
    """--teacher-model without --teacher would be ignored: refused (distill, eval and relabel share the options)."""
    if teacher_model and not teachers:
        raise ValueError("--teacher-model names the architecture of --teacher checkpoint files: give --teacher too")


# run options that have a flag of their own; the others are set in a --config file's "run" section
RUN_FLAGS = {"iterations": "--iterations", "eval_epochs": "--eval-epochs", "eval_runs": "--eval-runs",
             "eval_every": "--eval-every", "eval_models": "--eval-models", "baselines": "--baseline",
             "coreset_net": "--coreset-net"}


def check_set_keys(method: str, sets: dict) -> None:
    """--set sets method options: a run option (a RunConfig field) given there is refused saying where it goes."""
    from dataclasses import fields

    from dd.methods.driver import RunConfig, method_class

    method_keys = {f.name for f in fields(method_class(method).Config)}
    run_keys = {f.name for f in fields(RunConfig)}
    for key, value in sets.items():
        if key not in run_keys and key not in method_keys:
            raise ValueError(f"--set {key}={value}: method '{method}' has no option '{key}'; known: "
                             f"{', '.join(sorted(method_keys))}")
        if key in run_keys and key not in method_keys:
            where = (f"use {RUN_FLAGS[key]} {value}" if key in RUN_FLAGS
                     else f'put it in a --config file\'s "run" section, e.g. {{"run": {{"{key}": {value}}}}}')
            raise ValueError(f"--set {key}={value}: '{key}' is a run option, not an option of method '{method}'; "
                             f"{where}")


def safe_name(dataset: str) -> str:
    """A dataset name as one path component ('folder:/data/pets' -> 'folder__data_pets') for the default --out."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", dataset)


def read_config(path: str) -> dict:
    """A --config file's content: a JSON object (method options, "run": {...}); anything else is refused, naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config '{path}' {'is a directory' if p.is_dir() else 'does not exist'}; give a JSON "
                                "file of method options")
    try:
        loaded = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"--config '{path}' is not valid JSON ({e})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"--config '{path}' holds a JSON {type(loaded).__name__}; its top level must be an object of "
                         'method options, e.g. {"lr_img": 100, "run": {"iterations": 500}}')
    if not isinstance(loaded.get("run", {}), dict):
        raise ValueError(f"--config '{path}': \"run\" must be an object of run options, e.g. {{\"iterations\": 500}}")
    return loaded


def distill_arguments(args, config_data: dict | None = None) -> dict:
    """The keyword arguments of `dd.methods.distill` and `make_plan` that parsed `ddtk distill` options mean:
    command line > --config file > defaults. `config_data` stands in for the --config file's content when the caller
    already holds it (`ddtk reproduce` checks a run against its artifacts before it writes the file). `args` is not
    modified."""
    from dd.cli import data_options
    from dd.utils import parse_assignments

    args = argparse.Namespace(**vars(args))
    cfg: dict = {}
    run_cfg: dict = {}
    if args.config:
        loaded = dict(config_data) if config_data is not None else read_config(args.config)
        run_cfg.update(loaded.pop("run", {}))
        loaded.pop("notes", None)  # the config's sources and commands, for people
        for k in ("method", "dataset", "ipc", "buffer", "teachers", "teacher_model"):  # the command line wins over the file
            value = loaded.pop(k, None)
            if getattr(args, k) in (None, []):
                setattr(args, k, value)
        cfg.update(loaded)
    for k, default in (("method", "dm"), ("dataset", "mnist10k"), ("ipc", 10)):
        if getattr(args, k) is None:
            setattr(args, k, default)
    sets = parse_assignments(args.sets, "--set")
    check_set_keys(args.method, sets)
    cfg.update(sets)
    if args.model is not None:
        cfg["model"] = args.model
    for key, val in (("iterations", args.iterations), ("eval_epochs", args.eval_epochs), ("eval_runs", args.eval_runs),
                     ("eval_every", args.eval_every)):
        if val is not None:
            run_cfg[key] = val
    if args.eval_models is not None:
        from dd.commands.eval import parse_models

        run_cfg["eval_models"] = tuple(parse_models(args.eval_models, "--eval-models"))
    check_teacher_model(args.teachers, args.teacher_model)
    if args.no_full_baseline:
        run_cfg["baselines"] = tuple(b for b in run_cfg.get("baselines", ("random", "full")) if b != "full")
    if args.baselines:
        if args.no_full_baseline and "full" in args.baselines:
            raise ValueError("--no-full-baseline and --baseline full contradict each other: give one")
        run_cfg["baselines"] = tuple(args.baselines)
    if args.coreset_net:
        run_cfg["coreset_net"] = args.coreset_net
    run_cfg["wandb"] = args.wandb or run_cfg.get("wandb", False)
    out = args.out or f"runs/{args.method}_{safe_name(args.dataset)}_ipc{args.ipc}_seed{args.seed}"
    return dict(method=args.method, dataset=args.dataset, ipc=args.ipc, out=out, buffer=args.buffer,
                teachers=args.teachers or (), teacher_model=args.teacher_model, config=cfg, run=run_cfg,
                device=args.device, seed=args.seed, data_root=args.data_root, resume=not args.restart,
                data_options=data_options(args))


def run(args) -> int:
    from dd.methods import make_plan, run_plan

    plan = make_plan(**distill_arguments(args))  # everything resolved and checked before any data is read
    res = run_plan(plan)
    out = plan.out
    report = f" and {out / 'eval.md'}" if res.report is not None else " (no report: eval_runs is 0)"
    print(f"wrote {out / 'synset.safetensors'}, {out / 'synset.png'}{report}")
    return 0
