"""Fuzz over the command line: every option of every `ddtk` command (read from its argparse parser) given seeded bad
values must end in exit status 2 with a one-line error naming the option or the file, no traceback, nothing written.

Each command starts from a base command line that succeeds (checked first, tiny: digits, 1 image per class, 1 epoch);
one option at a time gets a bad value. Options are sorted into kinds by their declared type and destination; an
option no kind covers fails the test, so a new option gets fuzzed when it is added.
"""
import argparse
import contextlib
import io
import json
import random
import time
from pathlib import Path

import pytest
import torch

from dd.cli import COMMANDS, command_parser, main
from helpers import mlp_teacher_file

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 20
FLAGS_ONLY = (argparse._StoreTrueAction, argparse.BooleanOptionalAction)  # nothing to give a bad value to
INT_TYPES = {"positive_int", "non_negative_int", "seed_int", "int"}
FLOAT_TYPES = {"positive_float", "non_negative_float", "float"}
# destinations that name things (registries, devices, rows), files, directories, or KEY=VALUE lists
NAMES = {"dataset", "method", "model", "models", "eval_models", "teacher_model", "protocol", "protocols", "device",
         "rows", "baseline"}
FILES = {"synset", "config", "spec"}
DIRS = {"labels", "buffer", "data_root", "run_dir"}
ASSIGNMENTS = {"sets", "protocol_options", "model_options"}
HUGE_INVALID = {"seed": str(2**64), "ipc": str(10**9)}  # options for which a huge value is wrong, not just slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("fuzz"))


def make_world(root: Path) -> dict:
    """The files the base command lines read: a teacher checkpoint, a set recorded under the teacher protocol, a run
    directory, a label directory, a reproduce spec, and junk (an empty file, a text file, a plain directory)."""
    from dd.data import load_dataset
    from dd.eval import get_protocol
    from dd.synset import SyntheticSet

    ds = load_dataset("digits")
    net, teacher = mlp_teacher_file(root, ds)
    s = SyntheticSet.from_real(ds, 1, torch.Generator().manual_seed(0))
    s.meta["evaluation"] = {"protocol": get_protocol("teacher").to_dict(), "labels": None,
                            "teachers": [{"spec": str(teacher), "kind": "file", "sha256": None, "arch": "mlp"}]}
    synset = s.save(root / "set.safetensors")
    spec = root / "spec.json"
    spec.write_text(json.dumps({"kind": "paper", "rows": [{"id": "a", "method": "dm", "dataset": "digits", "ipc": 1,
                                                           "paper": {"value": 1.0, "source": "a test"}}]}))
    (root / "empty.bin").write_bytes(b"")
    (root / "text.txt").write_text("not what any option reads\n")
    (root / "plain").mkdir(exist_ok=True)
    return {"root": root, "teacher": teacher, "set": synset, "spec": spec, "labels": root / "labels",
            "run": root / "run"}


def base_commands(w) -> dict:
    """A command line per command that succeeds; `OUT` is replaced by a fresh directory per case."""
    dev = ["--device", "cpu"]
    return {
        "datasets": [], "models": [], "methods": [],
        "distill": ["--method", "dm", "--dataset", "digits", "--ipc", "1", "--iterations", "2", "--eval-runs", "0",
                    "--eval-every", "0", *dev, "--out", "OUT"],
        "buffer": ["--dataset", "digits", "--model", "mlp", "--experts", "1", "--epochs", "1", "--quiet", *dev,
                   "--out", "OUT"],
        "relabel": [w["set"], "--epochs", "1", "--batch-size", "5", "--topk", "2", *dev, "--out", "OUT"],
        "eval": [w["set"], "--epochs", "1", "--batch-size", "5", "--runs", "1", "--models", "mlp", "--no-baselines",
                 *dev, "--out", "OUT"],
        "show": [w["set"], "--out", "OUT/grid.png"],
        "plot": [w["run"], "--out", "OUT"],
        "export": [w["set"], "--format", "pt", "--out", "OUT"],
        "reproduce": [w["spec"], "--dry-run", "--out", "OUT"],
    }


def kind_of(action: argparse.Action) -> str:
    """How an option is fuzzed, from its declared type, choices and destination."""
    type_name = getattr(action.type, "__name__", None)
    if type_name in INT_TYPES:
        return "int"
    if type_name in FLOAT_TYPES:
        return "float"
    if action.choices:
        return "choice"
    dest = action.dest
    if dest == "out":
        return "out"
    if dest in ("teachers", "coreset_net"):
        return "teacher"
    if dest == "lr_search":
        return "floats"
    for kind, dests in (("name", NAMES), ("file", FILES), ("dir", DIRS), ("kv", ASSIGNMENTS)):
        if dest in dests:
            return kind
    raise AssertionError(f"option {action.option_strings or dest} ({action}) has no fuzz kind: add it to "
                         "tests/test_cli_fuzz.py")


def bad_values(kind: str, action: argparse.Action, w, rng: random.Random) -> list[str]:
    """Seeded bad values for one option of `kind`."""
    root = w["root"]
    junk = "".join(rng.choice("qwxz_") for _ in range(rng.randint(3, 8)))
    missing = str(root / f"missing-{junk}")
    if kind == "int":
        values = [junk, f"{rng.uniform(0.1, 9):.2f}", "nan", "", str(-rng.randint(1, 10**6))]
        if getattr(action.type, "__name__", "") == "positive_int":
            values.append("0")
        return values + ([HUGE_INVALID[action.dest]] if action.dest in HUGE_INVALID else [])
    if kind == "float":
        values = [junk, "nan", "inf", "-inf", "1e400", "", f"{-rng.uniform(0.01, 100):.3f}"]
        if getattr(action.type, "__name__", "") == "positive_float":
            values.append("0")
        if action.dest.endswith("_weight"):  # weights in [0, 1]
            values.append(f"{rng.uniform(1.01, 10):.2f}")
        return values
    if kind == "choice":
        return [junk, "", str(rng.randint(0, 9))]
    if kind == "floats":
        return [junk, "0", "nan", f"0.1,-{rng.randint(1, 9)}", "", ",,"]
    if kind == "kv":
        return [junk, f"{junk}=1", "=3", "lr=nan" if action.dest != "model_options" else "width=-1"]
    if kind == "name":
        return [junk, "", f"no_such_module_{junk}:thing", ",,"] + (["cuda:99"] if action.dest == "device" else [])
    if kind == "teacher":
        return [missing, f"{root}@abc", str(root / "plain"), str(root / "empty.bin"), str(root / "text.txt"),
                f"no_such_module_{junk}:thing", f"{w['teacher']}@2"]
    if kind == "file":
        return [missing, str(root / "plain"), str(root / "empty.bin"), str(root / "text.txt")]
    if kind == "dir":
        return [missing, str(root / "text.txt"), str(root / "plain")] if action.dest != "data_root" else \
            [missing, str(root / "text.txt")]
    if kind == "out":
        return [str(root / "text.txt") if action.dest == "out" else missing]
    raise AssertionError(kind)


def with_value(base: list, action: argparse.Action, value: str) -> list:
    """`base` with `action` given `value`: replacing its positional or its flag's value, else appended."""
    argv = [str(a) for a in base]
    if not action.option_strings:  # a positional: the first element
        return [value, *argv[1:]]
    for flag in action.option_strings:
        if flag in argv:
            i = argv.index(flag)
            return argv[:i] + [f"{flag}={value}"] + argv[i + 2:]
    return argv + [f"{action.option_strings[0]}={value}"]


def cases(w) -> list:
    rng = random.Random(SEED)
    out = []
    for name in COMMANDS:
        base = base_commands(w)[name]
        for action in command_parser(name)._actions:
            if isinstance(action, (argparse._HelpAction, *FLAGS_ONLY)):
                continue
            kind = kind_of(action)
            if kind == "out" and name == "show":
                out.append((name, action, with_value(base, action, str(w["root"] / "plain")), str(w["root"] / "plain")))
                continue
            for value in bad_values(kind, action, w, rng):
                if name == "reproduce" and action.dest in ("device", "data_root"):
                    continue  # --dry-run runs no command (--device) and reports missing data itself (exit 1)
                out.append((name, action, with_value(base, action, value), value))
    return out


def run_cli(argv: list, out: Path) -> tuple[int, str]:
    """`ddtk ARGV` in this process (OUT replaced by `out`): (exit status, stderr); an exception escaping main is what
    a user would see as a traceback."""
    argv = [str(out) + a[3:] if a == "OUT" or a.startswith("OUT/") else a for a in argv]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        except Exception as e:
            return 1, f"Traceback: {type(e).__name__}: {e}\n{err.getvalue()}"
    return rc, err.getvalue()


def keys_of(action: argparse.Action) -> list[str]:
    """How an error may name the option: a flag, or its name as a config key."""
    return [k for k in [*action.option_strings, action.dest, action.metavar] if k]


def problems_of(rc, err: str, out: Path, took: float, keys: list, value: str) -> list[str]:
    """What is wrong with one case's outcome (nothing when it was refused as it should be)."""
    problems = []
    if rc != 2:
        problems.append(f"exit {rc}")
    if "Traceback" in err:
        problems.append("traceback")
    line = next((ln for ln in err.splitlines() if "error:" in ln), "")
    if rc == 2 and not (any(k in line for k in keys) or (len(value) > 3 and value in line)):
        problems.append("message does not name the option or file")
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    if written:
        problems.append(f"wrote {len(written)} files")
    if took > 20:
        problems.append(f"took {took:.0f}s (refused after work started)")
    return problems


def test_fuzz_the_command_line(world, tmp_path):
    """Every base command line succeeds; every bad value of every option is refused with exit 2, one error line that
    names the option or the file, no traceback and nothing written; the count of cases and the failures are printed."""
    for name, base in base_commands(world).items():  # the bases are valid: refusals below come from the bad value
        rc, err = run_cli([name, *map(str, base)], world["run"] if name == "distill" else
                          (world["labels"] if name == "relabel" else tmp_path / f"base-{name}"))
        assert rc == 0, f"base command `ddtk {name}` failed: {err}"
    all_cases = cases(world)
    failures = []
    start = time.perf_counter()
    for i, (name, action, argv, value) in enumerate(all_cases):
        out = tmp_path / f"case{i}"
        t0 = time.perf_counter()
        rc, err = run_cli([name, *argv], out)
        problems = problems_of(rc, err, out, time.perf_counter() - t0, keys_of(action), value)
        if problems:
            line = next((ln for ln in err.splitlines() if "error:" in ln or "Traceback" in ln), err.strip()[-200:])
            failures.append(f"ddtk {name} {action.option_strings or action.dest}={value!r}: {', '.join(problems)}: {line}")
    elapsed = time.perf_counter() - start
    print(f"fuzz: {len(all_cases)} cases over {len(COMMANDS)} commands in {elapsed:.1f}s, {len(failures)} failed")
    assert len(all_cases) >= 200
    assert not failures, f"{len(failures)} of {len(all_cases)} cases failed:\n" + "\n".join(failures)
