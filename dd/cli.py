"""The `ddtk` command line (also `python -m dd`): one module per subcommand under dd/commands/ (add_parser and run).

The console script is not called `dd`, which would shadow the POSIX disk-copy utility in an activated environment.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module under dd.commands; adding a command is adding one module and one line here
COMMANDS = {
    "datasets": "dd.commands.listing",
    "models": "dd.commands.listing",
    "methods": "dd.commands.listing",
    "eval": "dd.commands.eval",
    "show": "dd.commands.show",
    "buffer": "dd.commands.buffer",
    "distill": "dd.commands.distill",
    "relabel": "dd.commands.relabel",
    "plot": "dd.commands.plot",
    "export": "dd.commands.export",
    "reproduce": "dd.commands.reproduce",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddtk", description="dataset distillation toolkit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        p = mod.add_parser(sub, name)
        p.set_defaults(_run=mod.run)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand alone (its options without the `ddtk NAME` prefix); `ddtk reproduce` parses the
    commands it runs with it, so they mean exactly what they mean typed at a shell."""
    if name not in COMMANDS:
        raise KeyError(f"unknown command '{name}'; known: {', '.join(COMMANDS)}")
    sub = argparse.ArgumentParser(prog="ddtk").add_subparsers(dest="command")
    mod = importlib.import_module(COMMANDS[name])
    p = mod.add_parser(sub, name)
    p.set_defaults(_run=mod.run, command=name)
    return p


def add_common(p: argparse.ArgumentParser) -> None:
    """--device, --seed, --out, --data-root: the options every job shares."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... or auto (CUDA when present)")
    p.add_argument("--seed", type=int, default=0, help="seed for every random draw of the job")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--data-root", default=None, help="where the dataset's files are (not needed for mnist10k/digits)")


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (e.g. --ipc): refused at parse time, naming the option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ddtk {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
