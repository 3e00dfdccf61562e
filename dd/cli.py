"""The `ddtk` command line (also `python -m dd.cli`, what torchrun launches): one module per subcommand under
dd/commands/ (add_parser and run).

The console script is not called `dd`, which would shadow the POSIX disk-copy utility in an activated environment.
"""
from __future__ import annotations

import argparse
import importlib
import math
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
    """--device, --seed, --out, --data-root and how images are read: the options every job shares."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... or auto (CUDA when present)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed for every random draw of the job")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--data-root", default=None, help="where the dataset's files are (not needed for mnist10k/digits)")
    g = p.add_argument_group("image trees (imagenet, its subsets, tinyimagenet, folder:PATH)")
    g.add_argument("--res", type=positive_int, default=None,
                   help="side of the square images an ImageNet tree or folder:PATH is read at (imagenet 64, subsets 128, "
                        "folder 64; a set's own resolution when evaluating it)")
    g.add_argument("--file-backed-above", dest="file_backed_above_mib", type=non_negative_float, default=None,
                   metavar="MIB", help="decode images on demand from their files when the decoded dataset would exceed "
                                       "MIB MiB in memory (default 2048; 0: always file-backed)")
    g.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="leave out (with a warning naming each) image files that cannot be decoded, instead of stopping")
    g.add_argument("--data-workers", dest="workers", type=non_negative_int, default=None, metavar="N",
                   help="processes decoding a file-backed dataset (and threads decoding a tree into memory); "
                        "default: the CPU count, at most 8; 0 decodes in the main process")


def data_options(args: argparse.Namespace) -> dict:
    """The image-reading options given on the command line, as load_dataset keyword arguments (unset ones left out)."""
    keys = ("res", "file_backed_above_mib", "skip_bad_images", "workers")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def non_negative_float(text: str) -> float:
    """argparse type of finite sizes and weights that may be 0 (e.g. --file-backed-above, --weight-decay)."""
    return _float_at_least(text, 0.0, strict=False)


def positive_float(text: str) -> float:
    """argparse type of finite numbers that must be > 0 (learning rates, temperatures): nan, inf, 0, -1 refused."""
    return _float_at_least(text, 0.0, strict=True)


def _float_at_least(text: str, bound: float, strict: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None
    if not math.isfinite(value) or value < bound or (strict and value == bound):
        raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {bound:g}, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type of counts where 0 means 'none' or 'never' (e.g. --eval-every, --data-workers)."""
    return _int_between(text, 0, None, "a non-negative integer")


def seed_int(text: str) -> int:
    """argparse type of --seed: an integer torch can seed with (0 <= seed < 2**63)."""
    return _int_between(text, 0, 2**63 - 1, "an integer between 0 and 2**63 - 1")


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (e.g. --ipc): refused at parse time, naming the option."""
    return _int_between(text, 1, None, "a positive integer")


def _int_between(text: str, lo: int, hi: int | None, what: str) -> int:
    """The integer `text` when lo <= it <= hi (hi None: no upper bound); else an ArgumentTypeError saying `what`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects {what}, got {text!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


# commands whose --out is a file (the others write into a directory)
OUT_IS_FILE = {"show"}


def check_paths(args: argparse.Namespace) -> None:
    """--out of a command that writes a directory must not be an existing file (of `ddtk show`: not a directory), and
    --data-root must be a directory (`reproduce --dry-run` reports a missing one itself): refused before any work."""
    from pathlib import Path

    root = getattr(args, "data_root", None)
    dry_run = getattr(args, "dry_run", False)
    if root is not None and not dry_run and not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"--data-root '{root}' is not a directory; give the directory that holds the datasets")
    out = getattr(args, "out", None)
    if out is not None and args.command not in OUT_IS_FILE and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out '{out}' is a file; give a directory (new or existing)")
    if out is not None and args.command in OUT_IS_FILE and Path(out).is_dir():
        raise ValueError(f"--out '{out}' is a directory; give the path of the file to write")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_paths(args)
        return int(args._run(args) or 0)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ddtk {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
