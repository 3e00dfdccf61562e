"""A spec row planned: its distill config, inputs, eval options and the `ddtk` commands that are equivalent to it,
shrunk with --smoke as each method class declares; what a row needs from disk before anything runs."""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

from dd.reproduce.spec import EvalSpec, Row, Spec, SpecError, _check_keys


# --smoke: every row shrunk to seconds (buffers: 1 expert x 1 epoch; distill: 2 iterations, no validation; eval:
# 1 epoch, 1 run); a method's own options are shrunk as its class declares (Method.smoke, see smoke_config)
SMOKE_BUFFER = {"experts": 1, "epochs": 1}
SMOKE_RUN = {"iterations": 2, "eval_every": 0}
SMOKE_EVAL = {"epochs": 1, "runs": 1}


@dataclass
class Context:
    """One reproduce invocation: where it writes, how it was asked to run, where it reports."""

    spec: Spec
    out: Path
    smoke: bool = False
    device: str = "auto"
    data_root: Optional[str] = None
    log: Callable[[str], None] = print

    def buffer_dir(self, name: str) -> Path:
        return self.out / "buffers" / name

    def row_dir(self, row: Row) -> Path:
        return self.out / "rows" / row.id

    def distill_config_path(self, row: Row) -> Path:
        return self.row_dir(row) / "distill.json"

    def distill_dir(self, row: Row) -> Path:
        return self.row_dir(row) / "distill"

    def eval_dir(self, row: Row) -> Path:
        return self.row_dir(row) / "eval"

    def common_argv(self) -> list[str]:
        """--device and --data-root, only when they differ from the commands' defaults."""
        return ((["--device", self.device] if self.device != "auto" else [])
                + (["--data-root", self.data_root] if self.data_root else []))


def command_text(name: str, argv: list[str]) -> str:
    """The command as typed at a shell."""
    return shlex.join(["ddtk", name, *argv])


def _buffer_argv(recipe: dict, out: Path, where: str, smoke: bool = False) -> list[str]:
    """`ddtk buffer` arguments for a recipe (keys: the command's option names with '_', e.g. weight_decay, dsa,
    model_options, expert_kind), parsed once to refuse unknown options and bad values before anything runs."""
    from dd.cli import command_parser

    _check_keys(recipe, set(_option_flags("buffer")) | {"notes"}, where)
    options = {k: v for k, v in recipe.items() if k != "notes"}
    if smoke:
        options.update({k: min(int(options.get(k) or v), v) for k, v in SMOKE_BUFFER.items()})
    argv = _to_argv("buffer", options) + ["--out", str(out)]
    try:
        command_parser("buffer").parse_args(argv)
    except SystemExit:
        raise SpecError(f"{where}: `{command_text('buffer', argv)}` does not parse (see the message above)") from None
    return argv


def _option_flags(command: str) -> dict[str, Any]:
    """dest -> argparse action of a command's options (what a recipe may set), without the run-level ones."""
    from dd.cli import command_parser

    skip = {"help", "out", "device", "data_root"}
    return {a.dest: a for a in command_parser(command)._actions if a.option_strings and a.dest not in skip}


def _to_argv(command: str, options: dict) -> list[str]:
    """{dest: value} -> command-line arguments, through the command's own option table."""
    import argparse

    actions = _option_flags(command)
    argv: list[str] = []
    for dest, value in options.items():
        action = actions[dest]
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif isinstance(action, argparse._AppendAction):
            items = [f"{k}={_text(v)}" for k, v in value.items()] if isinstance(value, dict) else list(value)
            for item in items:
                argv += [flag, _text(item)]
        elif value is not None:
            argv += [flag, _text(value)]
    return argv


def _text(value: Any) -> str:
    """A value as the command line spells it (lists comma-separated, booleans true/false, JSON objects as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def distill_config(row: Row, smoke: bool) -> dict:
    """The row's whole `ddtk distill --config` file: its config file, then the row's options and run options, the
    evaluation settings (used when the method relabels at the end; the report itself is `ddtk eval`'s), shrunk with
    --smoke. Inputs are given on the command line, so the file's own buffer/teachers entries are dropped."""
    from dd.methods.driver import method_class

    base = {k: v for k, v in row.base.items() if k not in ("notes", "buffer", "teachers", "run")}
    cfg = {**base, **row.options, "method": row.method, "dataset": row.dataset, "ipc": row.ipc}
    if row.teacher_model is not None:
        cfg["teacher_model"] = row.teacher_model
    run = {**row.base.get("run", {}), **row.run}
    ev = row_eval(row, smoke)
    run.update(eval_models=list(ev.archs), eval_runs=0, eval_options=dict(ev.options))
    if ev.epochs is not None:
        run["eval_epochs"] = ev.epochs
    if smoke:
        run.update({k: min(int(run.get(k, v)), v) if k == "iterations" else v for k, v in SMOKE_RUN.items()})
        cfg = smoke_config(method_class(row.method), cfg)
    source = f" from {row.config_path.name}" if row.config_path else ""
    spec = Path(row.spec).name  # the file's name only: the notes are for people (and no machine's directories)
    cfg["notes"] = f"written by ddtk reproduce for row '{row.id}' of {spec}{source}{' (smoke)' if smoke else ''}"
    cfg["run"] = run
    return cfg


def smoke_config(cls: type, cfg: dict) -> dict:
    """`cfg` with the options the method class declares in `smoke` shrunk: each to the smaller of its value (the
    config's, else the field's default) and the declared one (an unset or None value takes the declared one); an
    option left at its default is written only when it changes. A declared name that is not a Config field raises."""
    from dataclasses import MISSING

    defaults = {f.name: None if f.default is MISSING else f.default for f in fields(cls.Config)}
    out = dict(cfg)
    for key, small in cls.smoke.items():
        if key not in defaults:
            raise ValueError(f"method '{cls.name}' declares smoke option '{key}', which is not a field of "
                             f"{cls.Config.__name__}; declare only its own options in {cls.__name__}.smoke")
        current = out.get(key, defaults[key])
        new = small if current is None else min(current, small)
        if key in out or new != current:
            out[key] = new
    return out


def row_eval(row: Row, smoke: bool) -> EvalSpec:
    """The row's EvalSpec with its architectures filled in (the method's resolved model when none is given) and
    shrunk with --smoke."""
    from dataclasses import replace

    ev = row.eval
    if not ev.archs:  # baseline rows always have them (load_spec)
        ev = replace(ev, archs=(_resolved_model(row),))
    if smoke:
        ev = replace(ev, **SMOKE_EVAL)
    return ev


def _resolved_model(row: Row) -> str:
    """The architecture the row's method distils with after its presets (what the driver reports on by default)."""
    from dd.methods.base import Inputs
    from dd.methods.driver import method_class

    values = {k: v for k, v in {**row.base, **row.options}.items()
              if k not in ("notes", "buffer", "teachers", "run", "method", "dataset", "ipc", "teacher_model")}
    return method_class(row.method).resolve_config(values, row.dataset, row.ipc, Inputs()).model


def input_specs(row: Row, ctx: Context) -> tuple[Optional[str], list[str]]:
    """(buffer, teachers) as the distill command gets them: recipe names become OUT/buffers/NAME (keeping '@E'),
    anything else (a path, a module:callable) is passed as written; the row's entries win over its config file's."""
    def resolve(spec: str) -> str:
        name, at, expert = spec.rpartition("@") if "@" in spec else (spec, "", "")
        return f"{ctx.buffer_dir(name)}{at}{expert}" if name in ctx.spec.buffers else spec

    buffer = row.buffer or row.base.get("buffer")
    teachers = row.teachers or list(row.base.get("teachers", []))
    return (resolve(buffer) if buffer else None), [resolve(str(t)) for t in teachers]


def recipes_of(row: Row, spec: Spec) -> list[str]:
    """The spec's buffer recipes a row needs (its buffer and the teachers that name one), in order, once each."""
    names = [row.buffer] + [str(t).rpartition("@")[0] or str(t) for t in row.teachers]
    return [n for n in dict.fromkeys(names) if n and n in spec.buffers]


def distill_argv(row: Row, ctx: Context, restart: bool = False) -> list[str]:
    """`ddtk distill` arguments of a row (its config file holds every option)."""
    buffer, teachers = input_specs(row, ctx)
    argv = ["--config", str(ctx.distill_config_path(row))]
    argv += ["--buffer", buffer] if buffer else []
    for t in teachers:
        argv += ["--teacher", t]
    argv += ["--seed", str(row.seed), *ctx.common_argv(), "--out", str(ctx.distill_dir(row))]
    return argv + (["--restart"] if restart else [])


def eval_argv(row: Row, ctx: Context, labels: Optional[str] = None) -> list[str]:
    """`ddtk eval` arguments of a row: its set (or the baseline) under the row's protocol, architectures and runs."""
    ev = row_eval(row, ctx.smoke)
    if row.baseline:
        argv = ["--baseline", row.method, "--dataset", row.dataset] + (["--ipc", str(row.ipc)] if row.ipc else [])
    else:
        argv = [str(ctx.distill_dir(row) / "synset.safetensors")]
        argv += [a for b in ev.baselines for a in ("--baseline", b)] if ev.baselines else ["--no-baselines"]
    argv += ["--models", ",".join(ev.archs), "--runs", str(ev.runs)]
    argv += ["--epochs", str(ev.epochs)] if ev.epochs is not None else []
    argv += ["--protocol", ev.protocol] if ev.protocol else []
    for k, v in ev.options.items():
        argv += ["--protocol-option", f"{k}={_text(v)}"]
    argv += ["--lr-search", _text(list(ev.lr_search))] if ev.lr_search else []
    argv += ["--labels", labels] if labels else []
    return argv + ["--seed", str(row.seed), *ctx.common_argv(), "--out", str(ctx.eval_dir(row))]


def run_command(name: str, argv: list[str], log: Callable[[str], None]) -> None:
    """Runs `ddtk NAME ARGV` in this process, parsed by the command's own parser; a failure raises."""
    from dd.cli import command_parser

    log(f"$ {command_text(name, argv)}")
    args = command_parser(name).parse_args(argv)
    code = int(args._run(args) or 0)
    if code:
        raise RuntimeError(f"`{command_text(name, argv)}` exited with status {code}")


def _input_path(spec: str) -> Path:
    """The file or directory behind a buffer/teacher spec (DIR@E names DIR)."""
    return Path(spec.rpartition("@")[0] if "@" in spec and not Path(spec).exists() else spec)


def _is_path_like(spec: str) -> bool:
    """A teacher spec that names a file or directory (not package.module:callable)."""
    return not (":" in spec and not spec.endswith((".pt", ".pth", ".safetensors", ".ckpt", ".bin")))


def _input_present(spec: str) -> bool:
    """Is an input the spec does not record itself (a weights file, a buffer made elsewhere) on disk?"""
    return not _is_path_like(spec) or _input_path(spec).exists()


def missing_inputs(rows: list[Row], ctx: Context) -> list[str]:
    """Every dataset directory and external teacher/buffer file the rows need and this machine lacks, one line
    each, naming the rows that need it (nothing is loaded)."""
    from dd.data import DATASETS, missing_files

    needs: dict[str, list[str]] = {}
    for row in rows:
        datasets = [row.dataset] + [ctx.spec.buffers[n].get("dataset", "mnist10k") for n in recipes_of(row, ctx.spec)]
        for name in dict.fromkeys(datasets):
            needs.setdefault(name, []).append(row.id)
    lines = []
    for name, ids in needs.items():
        absent = missing_files(name, ctx.data_root)
        if absent:
            lines.append(f"dataset {name} ({DATASETS.help(name)}): missing {', '.join(absent)}; needed by "
                         f"{', '.join(dict.fromkeys(ids))}; put it there or pass --data-root")
    absent_inputs: dict[str, list[str]] = {}
    for row in rows:
        if row.baseline:
            continue
        buffer, teachers = input_specs(row, ctx)
        own = {str(ctx.buffer_dir(n)) for n in recipes_of(row, ctx.spec)}
        for spec in [buffer, *teachers]:
            if spec and str(_input_path(spec)) not in own and not _input_present(spec):
                absent_inputs.setdefault(spec, []).append(row.id)
    for spec, ids in absent_inputs.items():
        lines.append(f"input {spec} does not exist; needed by {', '.join(ids)} (a file the spec expects you to have: "
                     "see those rows' notes)")
    return lines
