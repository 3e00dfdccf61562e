"""`ddtk datasets`, `ddtk models`, `ddtk methods`: what the registries hold."""
from __future__ import annotations


def add_parser(sub, name):
    helps = {"datasets": "list the registered datasets", "models": "list the registered models",
             "methods": "list the registered distillation methods"}
    return sub.add_parser(name, help=helps[name])


def run(args) -> int:
    if args.command == "datasets":
        from dd.data import DATASETS as reg
    elif args.command == "models":
        from dd.models import MODELS as reg
    else:
        from dd.methods import METHODS as reg
    width = max(len(n) for n in reg.names())
    for n in reg.names():
        options = reg.get(n).options if args.command == "datasets" else None  # a dataset's declared options
        said = f" [options: {', '.join(f'{k}={v}' for k, v in options.items())}]" if options else ""
        print(f"{n:<{width}}  {reg.help(n)}{said}")
    return 0
