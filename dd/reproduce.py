"""`ddtk reproduce SPEC`: one table of results (a paper's, or the CPU bench) rebuilt from nothing by one command.

A spec (JSON, `experiments/tables/`) names the rows of one table. A row is a method run on a dataset at an IPC
(a config file from `experiments/` and/or inline options; its expert buffer or teachers named by recipe, so rows
share them), how the result is scored (protocol, architectures, epochs, runs, baselines) and the number it is
compared with (the paper's, with its source; or, for the CPU bench, the number recorded in the repository). For every
row the command runs the `ddtk buffer` -> `ddtk distill` -> `ddtk eval` commands a person would type: they are
printed, parsed by the same parsers and run in this process, each writing its own directory under OUT:

  OUT/buffers/NAME/              one per buffer recipe, shared by every row that names it
  OUT/rows/ID/distill.json       the row's whole config (what `ddtk distill --config` reads)
  OUT/rows/ID/distill/           the distill output (synset.safetensors, checkpoint, metrics.jsonl, config.json)
  OUT/rows/ID/eval/              the row's report (eval.json, eval.md)
  OUT/state.json                 wall times, and which set file each report was computed from
  OUT/table.md, OUT/table.json   ours beside the paper's number, the difference, the protocol and the wall times

An artifact that exists and matches is reused rather than recomputed: a buffer whose manifest records the recipe's
config hash; a distill output whose config.json identity (dd.methods.driver.run_identity) and set metadata match
the run; a report computed from the same set (its tensors' recorded sha256) with the same protocol, architectures,
runs and baselines. A partial buffer or distill resumes (both commands resume); a distill made with other settings
starts over (`--restart`); a buffer recorded with other settings is refused with the differences named (it may have
taken hours: delete it or rename the recipe). The paths of buffers and teachers are part of a run's identity, so use
the same --out (as the same path) to reuse a previous run's artifacts.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import shlex
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

from dd.teachers import split_spec
from dd.utils import atomic_write_json, atomic_write_text, to_jsonable

BASELINE_ROWS = {"random": "random-real", "full": "full"}  # row methods that only evaluate -> their report row names
SPEC_KEYS = {"title", "kind", "notes", "seed", "data_root", "eval", "buffers", "rows"}
ROW_KEYS = {"id", "method", "dataset", "ipc", "config", "options", "run", "buffer", "teachers", "teacher_model",
            "eval", "paper", "recorded", "seed", "notes"}
EVAL_KEYS = {"protocol", "archs", "epochs", "runs", "options", "baselines", "lr_search"}
KINDS = ("bench", "paper")
PENDING = "not finished yet"  # what table.json and table.md say of a selected row a --jobs run is still on
# run options that only change how often a run saves or what it prints, never its result
CADENCE = {"checkpoint_minutes", "checkpoint_every", "progress", "wandb", "wandb_project"}
# --smoke: every row shrunk to seconds (buffers: 1 expert x 1 epoch; distill: 2 iterations, no validation, short inner
# loops and small real batches; eval: 1 epoch, 1 run); method options are shrunk only where the method has them
SMOKE_BUFFER = {"experts": 1, "epochs": 1}
SMOKE_RUN = {"iterations": 2, "eval_every": 0}
SMOKE_METHOD = {"syn_steps": 2, "expert_epochs": 1, "batch_real": 16, "prior_iterations": 2, "prior_epochs": 1,
                "prior_ipc": 1}
SMOKE_EVAL = {"epochs": 1, "runs": 1}


# ----------------------------------------------------------------------------------------------- the spec

@dataclass(frozen=True)
class EvalSpec:
    """How a row is scored: `ddtk eval` options (None/empty: the protocol the set records, the command's defaults)."""

    protocol: Optional[str] = None
    archs: tuple[str, ...] = ()
    epochs: Optional[int] = None
    runs: int = 5
    options: dict = field(default_factory=dict)
    baselines: tuple[str, ...] = ()
    lr_search: tuple[float, ...] = ()


@dataclass
class Row:
    """One row of a table, as the spec gives it (paths resolved, config file read)."""

    id: str
    method: str
    dataset: str
    ipc: Optional[int]
    config_path: Optional[Path]
    base: dict  # the config file's content ({} without one)
    options: dict
    run: dict
    buffer: Optional[str]
    teachers: list
    teacher_model: Any
    eval: EvalSpec
    paper: Optional[dict]
    recorded: Optional[dict]
    seed: int
    notes: str = ""
    spec: str = ""  # the spec file it comes from (named in the configs it writes)

    @property
    def baseline(self) -> bool:
        """A random-real or full-data row: evaluated only, nothing distilled."""
        return self.method in BASELINE_ROWS


@dataclass
class Spec:
    path: Path
    title: str
    kind: str
    notes: str
    data_root: Optional[str]
    buffers: dict  # recipe name -> `ddtk buffer` options (option dest -> value)
    rows: list


class SpecError(ValueError):
    """A spec file that cannot be run as written; the message names the file, the row and the fix."""


def load_spec(path: str | Path) -> Spec:
    """Reads and checks a spec: known keys, unique row ids, known methods, config files that exist and agree with
    their rows, buffer recipes that parse as `ddtk buffer` options, and a number with a source for every paper row."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no spec file '{path}'; the specs are in experiments/tables/")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SpecError(f"{path} is not valid JSON ({e})") from e
    _check_keys(data, SPEC_KEYS, str(path))
    kind = data.get("kind", "paper")
    if kind not in KINDS:
        raise SpecError(f"{path}: kind must be one of {KINDS}, got {kind!r}")
    buffers = data.get("buffers", {})
    for name, recipe in buffers.items():
        _buffer_argv(recipe, Path("OUT") / name, where=f"{path}: buffer recipe '{name}'")  # parses, or says why not
    defaults = data.get("eval", {})
    _check_keys(defaults, EVAL_KEYS, f"{path}: eval")
    rows = [_row(d, i, path, defaults, int(data.get("seed", 0)), kind, buffers) for i, d in enumerate(data.get("rows", []))]
    if not rows:
        raise SpecError(f"{path} names no rows")
    ids = [r.id for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SpecError(f"{path}: row ids must be unique; repeated: {', '.join(dup)}")
    return Spec(path, data.get("title", path.stem), kind, data.get("notes", ""), data.get("data_root"), buffers, rows)


def _check_keys(d: dict, known: set, where: str) -> None:
    if not isinstance(d, dict):
        raise SpecError(f"{where} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")


def _row(d: dict, index: int, spec_path: Path, eval_defaults: dict, seed: int, kind: str, buffers: dict) -> Row:
    """One spec row, checked (see load_spec)."""
    label = d.get("id", "no id") if isinstance(d, dict) else repr(d)
    where = f"{spec_path}: row {index + 1} ({label})"
    _check_keys(d, ROW_KEYS, where)
    for key in ("id", "method", "dataset"):
        if not isinstance(d.get(key), str) or not d[key]:
            raise SpecError(f"{where}: '{key}' is required (a non-empty string)")
    method, config_path, base = d["method"], None, {}
    if d.get("config"):
        config_path = (spec_path.parent / d["config"]).resolve()
        if not config_path.is_file():
            raise SpecError(f"{where}: config '{d['config']}' not found (looked for {config_path}; config paths are "
                            "relative to the spec file)")
        base = json.loads(config_path.read_text())
        for key in ("method", "dataset"):
            if base.get(key) not in (None, d[key]):
                raise SpecError(f"{where}: the row says {key} '{d[key]}' but its config {config_path.name} says "
                                f"'{base[key]}'; use a config of this {key}")
    if method not in BASELINE_ROWS:
        from dd.methods.driver import method_class

        try:
            method_class(method)
        except KeyError as e:
            raise SpecError(f"{where}: {e.args[0]}") from None
    ipc = d.get("ipc", base.get("ipc"))
    if method != "full" and (isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1):
        raise SpecError(f"{where}: 'ipc' must be a positive integer, got {ipc!r}")
    paper, recorded = d.get("paper"), d.get("recorded")
    for name, value in (("paper", paper), ("recorded", recorded)):
        if value is not None and (not isinstance(value, dict) or not isinstance(value.get("value"), (int, float))
                                  or not value.get("source")):
            raise SpecError(f"{where}: '{name}' must be null or {{\"value\": number, \"source\": \"where it is "
                            f"published\"}}, got {value!r}")
    if kind == "paper" and paper is None:
        raise SpecError(f"{where}: a paper spec needs the paper's number and its source in every row: "
                        '"paper": {"value": ..., "source": "..."}')
    for name in [d.get("buffer")] + [split_spec(t)[0] for t in d.get("teachers", [])]:
        if name and name not in buffers and _looks_like_recipe(name):
            raise SpecError(f"{where}: '{name}' is neither a buffer recipe of this spec ({', '.join(buffers) or 'none'}) "
                            "nor a path")
    ev = _eval_spec(d.get("eval", {}), eval_defaults, base, where)
    if method in BASELINE_ROWS and not ev.archs:
        raise SpecError(f"{where}: a {method} row trains nothing of its own to take an architecture from: give "
                        'eval.archs (here or in the spec\'s "eval")')
    return Row(d["id"], method, d["dataset"], ipc if method != "full" else None, config_path, base,
               dict(d.get("options", {})), dict(d.get("run", {})), d.get("buffer"), list(d.get("teachers", [])),
               d.get("teacher_model"), ev, paper, recorded, int(d.get("seed", seed)), d.get("notes", ""),
               str(spec_path))


def _looks_like_recipe(name: str) -> bool:
    """A bare name (no path separator, no module:callable, no file suffix) can only mean a recipe of the spec."""
    return "/" not in name and ":" not in name and "." not in name


def _eval_spec(row_eval: dict, defaults: dict, base: dict, where: str) -> EvalSpec:
    """The row's eval options: the row's > its config file's run section (eval_models, eval_epochs, eval_runs,
    eval_options) > the spec's defaults > the command's defaults. Baselines come from the row or the spec only (a
    config's baselines are about its own report; the table decides which baselines it shows)."""
    _check_keys(row_eval, EVAL_KEYS, f"{where}: eval")
    run = base.get("run", {})
    from_config = {k: v for k, v in (("archs", run.get("eval_models")), ("epochs", run.get("eval_epochs")),
                                     ("runs", run.get("eval_runs")), ("options", run.get("eval_options")))
                   if v is not None}
    merged = {**defaults, **from_config, **row_eval}
    bad = [b for b in merged.get("baselines", []) if b not in BASELINE_ROWS]
    if bad:
        raise SpecError(f"{where}: eval baselines must be among {sorted(BASELINE_ROWS)}, got {bad}")
    return EvalSpec(merged.get("protocol"), tuple(merged.get("archs", ())), merged.get("epochs"),
                    int(merged.get("runs", 5)), dict(merged.get("options", {})), tuple(merged.get("baselines", ())),
                    tuple(float(v) for v in merged.get("lr_search", ())))


def select_rows(spec: Spec, ids: Optional[list[str]]) -> list[Row]:
    """The rows named by --rows (in the spec's order), or all of them."""
    if not ids:
        return list(spec.rows)
    known = {r.id for r in spec.rows}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise SpecError(f"--rows: no row {', '.join(repr(i) for i in unknown)} in {spec.path}; its rows: "
                        f"{', '.join(r.id for r in spec.rows)}")
    return [r for r in spec.rows if r.id in ids]


# ----------------------------------------------------------------------------------------------- the commands

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
        known = {f.name for f in fields(method_class(row.method).Config)}
        for key, small in SMOKE_METHOD.items():
            if key in known:
                cfg[key] = small if cfg.get(key) is None else min(cfg[key], small)
        if cfg.get("relabel_epochs"):
            cfg["relabel_epochs"] = 1
    source = f" from {row.config_path.name}" if row.config_path else ""
    cfg["notes"] = f"written by ddtk reproduce for row '{row.id}' of {row.spec}{source}{' (smoke)' if smoke else ''}"
    cfg["run"] = run
    return cfg


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
        name, expert = split_spec(spec)
        return f"{ctx.buffer_dir(name)}{'' if expert is None else f'@{expert}'}" if name in ctx.spec.buffers else spec

    buffer = row.buffer or row.base.get("buffer")
    teachers = row.teachers or list(row.base.get("teachers", []))
    return (resolve(buffer) if buffer else None), [resolve(str(t)) for t in teachers]


def recipes_of(row: Row, spec: Spec) -> list[str]:
    """The spec's buffer recipes a row needs (its buffer and the teachers that name one), in order, once each."""
    names = [row.buffer] + [split_spec(t)[0] for t in row.teachers]
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


# ----------------------------------------------------------------------------------------------- what exists already

class State:
    """OUT/state.json: what reproduce knows about its artifacts beyond what they record themselves (wall times, the
    run a distill directory was started for, the set each report was computed from); written atomically."""

    FORMAT = "dd-reproduce-state/1"

    def __init__(self, path: Path):
        self.path = path
        self.data = self._read() if path.is_file() else {"format": self.FORMAT, "buffers": {}, "rows": {}}

    def _read(self) -> dict:
        """The file's content, checked against the sha256 it records of itself (a damaged file is refused)."""
        from dd.utils import sha256_bytes

        fix = "delete it: reproduce then checks every artifact again (wall times already recorded are lost)"
        try:
            data = json.loads(self.path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"reproduce state '{self.path}' is not valid JSON ({e}); {fix}") from None
        recorded = data.pop("sha256", None) if isinstance(data, dict) else None
        if not isinstance(data, dict) or (recorded is not None and
                                          recorded != sha256_bytes(json.dumps(data, sort_keys=True).encode())):
            raise ValueError(f"reproduce state '{self.path}' is damaged (its content does not match its sha256); {fix}")
        return data

    def get(self, *keys) -> Any:
        node = self.data
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    def put(self, value: Any, *keys) -> None:
        """Sets one entry and writes the file: re-read and rewritten under an flock on state.json.lock, so the
        processes of `--jobs N` (each writing its own rows' entries) never drop each other's."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.is_file():
                self.data = self._read()
            node = self.data
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
            from dd.utils import sha256_bytes

            data = to_jsonable(self.data)
            atomic_write_json(self.path, {**data, "sha256": sha256_bytes(json.dumps(data, sort_keys=True).encode())})


def buffer_status(name: str, ctx: Context) -> tuple[str, str]:
    """('reuse' | 'resume' | 'run', why) for a buffer recipe; a directory recorded with another config raises."""
    from dd.buffers.recorder import config_diff, config_sha256
    from dd.buffers.store import MANIFEST
    from dd.cli import command_parser
    from dd.commands.buffer import buffer_config

    out = ctx.buffer_dir(name)
    argv = _buffer_argv(ctx.spec.buffers[name], out, f"buffer recipe '{name}'", ctx.smoke)
    want = buffer_config(command_parser("buffer").parse_args(argv))
    manifest = out / MANIFEST
    if not manifest.is_file():
        return "run", "not recorded yet"
    have = json.loads(manifest.read_text())
    if have.get("config_sha256") != config_sha256(want):
        diff = config_diff(have.get("config", {}), to_jsonable(want.to_dict()))
        raise RuntimeError(f"buffer '{out}' was recorded with other settings than recipe '{name}' "
                           f"({'; '.join(diff)}); delete that directory to record it again, or give the recipe "
                           "another name")
    if have.get("complete"):
        return "reuse", f"manifest config {have['config_sha256'][:12]} matches"
    return "resume", f"{len(have.get('experts', []))} of {have.get('num_experts')} experts listed"


def _input_path(spec: str) -> Path:
    """The file or directory behind a buffer/teacher spec (DIR@E names DIR)."""
    return Path(split_spec(spec)[0])


def _is_path_like(spec: str) -> bool:
    """A teacher spec that names a file or directory (not package.module:callable)."""
    return not (":" in spec and not spec.endswith((".pt", ".pth", ".safetensors", ".ckpt", ".bin")))


def _input_present(spec: str) -> bool:
    """Is an input the spec does not record itself (a weights file, a buffer made elsewhere) on disk?"""
    return not _is_path_like(spec) or _input_path(spec).exists()


def distill_plan(row: Row, ctx: Context) -> dict:
    """What the row's distill command amounts to: the driver's keyword arguments (from the very parser and
    config reading of `ddtk distill`), with the config file's content given in memory."""
    from dd.cli import command_parser
    from dd.commands.distill import distill_arguments

    args = command_parser("distill").parse_args(distill_argv(row, ctx))
    return distill_arguments(args, config_data=distill_config(row, ctx.smoke))


def expected_identity(kwargs: dict) -> dict:
    """The identity the distill run will record (see dd.methods.driver.run_identity)."""
    from dd.methods.driver import run_identity

    keys = ("buffer", "teachers", "teacher_model", "config", "run", "seed", "data_options")
    return run_identity(kwargs["method"], kwargs["dataset"], kwargs["ipc"], **{k: kwargs[k] for k in keys})


def wanted_run(kwargs: dict) -> dict:
    """The run options the set must record (cadence options aside)."""
    from dd.methods.driver import run_config

    return {k: v for k, v in to_jsonable(asdict(run_config(kwargs["run"]))).items() if k not in CADENCE}


def set_header(path: Path) -> Optional[dict]:
    """A synthetic set's safetensors header (its JSON metadata and tensor digests) without reading the tensors."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return None


def set_fingerprint(path: Path) -> Optional[str]:
    """sha256 of a set's recorded tensor digests and metadata: changes whenever its content does."""
    header = set_header(path)
    if not header or "sha256" not in header:
        return None
    return hashlib.sha256((header["sha256"] + header.get("meta", "")).encode()).hexdigest()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True).encode()).hexdigest()


def distill_complete(out: Path, identity: dict, run: dict) -> bool:
    """Does `out` hold the finished set of this run: config.json with the same identity, and a set whose metadata
    records the same method, data, inputs, config and run options?"""
    header = set_header(out / "synset.safetensors")
    if header is None or not (out / "config.json").is_file():
        return False
    if json.loads((out / "config.json").read_text()) != identity:
        return False
    meta = json.loads(header.get("meta", "{}"))
    same = all(meta.get(k) == identity[k] for k in ("method", "ipc", "seed", "config", "inputs", "dataset"))
    recorded = {k: v for k, v in (meta.get("run") or {}).items() if k not in CADENCE}
    return same and recorded == run


def checkpoint_identity(path: Path) -> Optional[dict]:
    """The identity a distill checkpoint was written for (None when unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["identity"])
    except Exception:
        return None


def distill_status(row: Row, ctx: Context, state: State) -> tuple[str, str]:
    """('reuse' | 'resume' | 'restart' | 'run', why) for a row's distill step."""
    from dd.methods.driver import CHECKPOINT

    kwargs = distill_plan(row, ctx)
    recipes = recipes_of(row, ctx.spec)
    if any(buffer_status(n, ctx)[0] != "reuse" for n in recipes):  # a buffer in conflict raises, naming it
        return "run", "after its buffer/teachers are recorded"
    own = {str(ctx.buffer_dir(n)) for n in recipes}
    external = [p for p in [kwargs["buffer"], *kwargs["teachers"]] if p and split_spec(p)[0] not in own]
    if not all(_input_present(p) for p in external):
        return "run", "once its input files are there"
    identity, run = expected_identity(kwargs), wanted_run(kwargs)
    out = ctx.distill_dir(row)
    if distill_complete(out, identity, run):
        return "reuse", f"config.json identity {_digest(identity)[:12]} and the set's run options match"
    ckpt = out / CHECKPOINT
    if not ckpt.is_file():
        return "run", "no set or checkpoint yet"
    started = state.get("rows", row.id, "distill", "started") or {}
    if checkpoint_identity(ckpt) == identity and started == {"identity": _digest(identity), "iterations": run["iterations"]}:
        return "resume", "its checkpoint belongs to this run"
    return "restart", "its checkpoint was made with other settings (or by another command)"


def eval_expectation(row: Row, ctx: Context, set_meta: Optional[dict]) -> dict:
    """What the row's report must have been made with: protocol, architectures, runs, baselines, lr search."""
    from dd.cli import command_parser
    from dd.commands.eval import parse_models, protocol_from_args, report_baselines

    args = command_parser("eval").parse_args(eval_argv(row, ctx))
    recorded = ((set_meta or {}).get("evaluation") or {}).get("protocol")
    baselines = report_baselines(args)
    return to_jsonable({"protocol": protocol_from_args(args, recorded).to_dict(), "archs": parse_models(args.models),
                        "runs": args.runs, "rows": sorted(BASELINE_ROWS[b] for b in baselines),
                        "lr_search": [float(v) for v in row_eval(row, ctx.smoke).lr_search] or None})


def report_matches(path: Path, expected: dict, set_name: Optional[str]) -> bool:
    """Was eval.json made under the expected protocol, architectures, runs, baselines and lr search?"""
    if not path.is_file():
        return False
    report = json.loads(path.read_text())
    meta, rows = report.get("meta", {}), report.get("rows", [])
    archs = list(dict.fromkeys(r.get("arch") for r in rows))
    baselines = sorted({r.get("name") for r in rows if r.get("name") != set_name})
    if set_name is not None and not any(r.get("name") == set_name for r in rows):
        return False
    return (meta.get("protocol") == expected["protocol"] and meta.get("runs") == expected["runs"]
            and archs == expected["archs"] and baselines == expected["rows"]
            and meta.get("lr_search") == expected["lr_search"])


def eval_status(row: Row, ctx: Context, state: State) -> tuple[str, str]:
    """('reuse' | 'run', why) for a row's report."""
    synset = ctx.distill_dir(row) / "synset.safetensors"
    fingerprint = None if row.baseline else set_fingerprint(synset)
    if not row.baseline and fingerprint is None:
        return "run", "after its set is distilled"
    meta = None if row.baseline else json.loads(set_header(synset).get("meta", "{}"))
    expected = eval_expectation(row, ctx, meta)
    if state.get("rows", row.id, "eval", "set") != fingerprint:
        return "run", "no report of this set yet"
    if not report_matches(ctx.eval_dir(row) / "eval.json", expected, None if row.baseline else meta.get("method")):
        return "run", "no report with this protocol, architectures, runs and baselines"
    return "reuse", "eval.json was made from this set with the same protocol, architectures and runs"


# ----------------------------------------------------------------------------------------------- running a row

def ensure_buffer(name: str, ctx: Context, state: State) -> dict:
    """Records (or resumes, or reuses) one buffer recipe; returns its status record for the table."""
    status, why = buffer_status(name, ctx)
    argv = _buffer_argv(ctx.spec.buffers[name], ctx.buffer_dir(name), f"buffer recipe '{name}'", ctx.smoke)
    if status == "reuse":
        ctx.log(f"[buffer {name}] reused: {why}")
        return {"status": "reused", "seconds": state.get("buffers", name, "seconds"), "command": command_text("buffer", argv)}
    t0 = time.perf_counter()
    run_command("buffer", argv, ctx.log)
    seconds = time.perf_counter() - t0
    record = {"status": "resumed" if status == "resume" else "ran", "seconds": seconds,
              "command": command_text("buffer", argv), "finished": _now()}
    state.put(record, "buffers", name)
    return record


def ensure_distill(row: Row, ctx: Context, state: State) -> dict:
    """Distils a row (or resumes, restarts, reuses it); returns its status record for the table."""
    status, why = distill_status(row, ctx, state)
    if status == "reuse":
        ctx.log(f"[{row.id}] distill reused: {why}")
        return {**(state.get("rows", row.id, "distill") or {}), "status": "reused"}
    cfg = distill_config(row, ctx.smoke)
    atomic_write_text(ctx.distill_config_path(row), json.dumps(cfg, indent=2) + "\n")
    kwargs = distill_plan(row, ctx)
    identity = expected_identity(kwargs)
    state.put({"identity": _digest(identity), "iterations": wanted_run(kwargs)["iterations"]},
              "rows", row.id, "distill", "started")
    ctx.log(f"[{row.id}] distill: {status} ({why})")
    t0 = time.perf_counter()
    run_command("distill", distill_argv(row, ctx, restart=status == "restart"), ctx.log)
    record = {"status": {"resume": "resumed", "restart": "restarted"}.get(status, "ran"),
              "seconds": time.perf_counter() - t0, "finished": _now(),
              "started": state.get("rows", row.id, "distill", "started")}
    state.put(record, "rows", row.id, "distill")
    return record


def ensure_eval(row: Row, ctx: Context, state: State) -> dict:
    """Scores a row (or reuses its report); returns its status record for the table."""
    status, why = eval_status(row, ctx, state)
    if status == "reuse":
        ctx.log(f"[{row.id}] eval reused: {why}")
        return {**(state.get("rows", row.id, "eval") or {}), "status": "reused"}
    synset = ctx.distill_dir(row) / "synset.safetensors"
    labels = None
    if not row.baseline:
        labels = (json.loads(set_header(synset)["meta"]).get("evaluation") or {}).get("labels")
    t0 = time.perf_counter()
    run_command("eval", eval_argv(row, ctx, labels), ctx.log)
    record = {"status": "ran", "seconds": time.perf_counter() - t0, "finished": _now(),
              "set": None if row.baseline else set_fingerprint(synset)}
    state.put(record, "rows", row.id, "eval")
    return record


def row_result(row: Row, ctx: Context) -> dict:
    """The row's accuracies (percent) per architecture from its eval.json: the set (or baseline) and, when the
    report has it, the random-real baseline under the same protocol."""
    report = json.loads((ctx.eval_dir(row) / "eval.json").read_text())
    own = BASELINE_ROWS.get(row.method)
    ours, random_real = {}, {}
    for r in report["rows"]:
        entry = {"mean": 100 * r["mean"], "std": 100 * r["std"], "accs": [100 * a for a in r["accs"]],
                 "lr": (r.get("extra") or {}).get("lr")}
        if (own is None and r["name"] not in BASELINE_ROWS.values()) or r["name"] == own:
            ours[r["arch"]] = entry
        elif r["name"] == "random-real":
            random_real[r["arch"]] = entry
    protocol = report["meta"]["protocol"]
    return {"ours": ours, "random_real": random_real or None, "protocol": protocol.get("name"),
            "epochs": protocol.get("epochs"), "runs": report["meta"].get("runs")}


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------- the table

def table_entry(row: Row, ctx: Context, stages: dict, result: Optional[dict], error: Optional[str]) -> dict:
    """One row of table.json: what was run, what came out, what it is compared with."""
    ev = row_eval(row, ctx.smoke)
    primary = ev.archs[0]
    entry = {"id": row.id, "method": row.method, "dataset": row.dataset, "ipc": row.ipc, "archs": list(ev.archs),
             "primary_arch": primary, "paper": row.paper, "recorded": row.recorded, "stages": stages,
             "error": error, "notes": row.notes}
    if result is not None:
        entry.update(result)
        mine = result["ours"].get(primary)
        for key in ("paper", "recorded"):
            ref = getattr(row, key)
            entry[f"diff_{key}"] = (mine["mean"] - ref["value"]) if (mine and ref) else None
    return entry


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _acc(entry: Optional[dict]) -> str:
    return "" if not entry else f"{entry['mean']:.2f} ± {entry['std']:.2f}"


def _signed(value: Optional[float]) -> str:
    return "" if value is None else f"{value:+.2f}"


def render_markdown(spec: Spec, entries: list[dict], buffers: dict, meta: dict) -> str:
    """table.md: the rows (ours beside the paper's and the recorded number, the differences, protocol, wall
    times, whether each artifact was reused), then the buffers."""
    has_paper = any(e["paper"] for e in entries)
    has_recorded = any(e["recorded"] for e in entries)
    head = ["row", "method", "dataset", "IPC", "protocol", "ours (%)"]
    head += ["paper (%)", "Δ paper"] if has_paper else []
    head += ["recorded (%)", "Δ recorded"] if has_recorded else []
    head += ["random real, same protocol (%)", "source", "distill", "eval", "artifacts"]
    lines = [f"# {spec.title}", "",
             f"Produced by `{meta['command']}` on {meta['finished']} ({meta['device']}).", "",
             "Accuracy: last-epoch test accuracy of fresh networks, mean ± std over the runs, in percent; Δ is ours "
             "minus the reference on the first architecture. Wall times are those of the session that finished "
             "each step (a resumed step counts only its last session).", ""]
    if meta.get("smoke"):
        lines += ["**Smoke run**: every row shrunk to seconds (1 expert x 1 epoch, 2 iterations, 1 epoch x 1 run); "
                  "the numbers test the pipeline, not the methods.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        lines.append("| " + " | ".join(_cells(e, has_paper, has_recorded)) + " |")
    errors = [e for e in entries if e["error"]]
    if errors:
        lines += ["", "Failed rows:", ""] + [f"- `{e['id']}`: {e['error']}" for e in errors]
    if buffers:
        lines += ["", "## Buffers and teachers", "", "| recipe | status | wall time | command |", "|---|---|---|---|"]
        for name, b in buffers.items():
            lines.append(f"| {name} | {b.get('status', '?')} | {_duration(b.get('seconds'))} | `{b.get('command', '')}` |")
    if spec.notes:
        lines += ["", spec.notes]
    return "\n".join(lines) + "\n"


def _cells(e: dict, has_paper: bool, has_recorded: bool) -> list[str]:
    """One Markdown row of the table (see render_markdown)."""
    ours = e.get("ours") or {}
    if e["error"]:
        mine = "failed"
    elif len(ours) == 1:
        mine = _acc(next(iter(ours.values())))
    else:
        mine = "; ".join(f"{a}: {_acc(v)}" for a, v in ours.items())
    protocol = (f"{e['protocol']}, {e['epochs']} ep, {e['runs']} runs, {', '.join(e['archs'])}" if "protocol" in e
                else ", ".join(e["archs"]))
    if e.get("skipped"):
        mine = PENDING if e["skipped"] == PENDING else "not run"
    cells = [e["id"], e["method"], e["dataset"], "all" if e["ipc"] is None else str(e["ipc"]), protocol, mine]
    if has_paper:
        cells += [f"{e['paper']['value']:.1f}" if e["paper"] else "", _signed(e.get("diff_paper"))]
    if has_recorded:
        rec = e["recorded"]
        cells += [(f"{rec['value']:.2f}" + (f" ± {rec['std']:.2f}" if rec.get("std") is not None else "")) if rec else "",
                  _signed(e.get("diff_recorded"))]
    rr = e.get("random_real") or {}
    cells.append("; ".join(_acc(v) for v in rr.values()) if len(rr) <= 1 else
                 "; ".join(f"{a}: {_acc(v)}" for a, v in rr.items()))
    source = (e["paper"] or e["recorded"] or {}).get("source", "")
    stages = e["stages"]
    cells += [source, _duration((stages.get("distill") or {}).get("seconds")) if "distill" in stages else "—",
              _duration((stages.get("eval") or {}).get("seconds")),
              ", ".join(f"{k} {v.get('status', '?')}" for k, v in stages.items() if isinstance(v, dict))]
    return [c.replace("|", "\\|") for c in cells]


def write_table(ctx: Context, entries: list[dict], buffers: dict, meta: dict) -> tuple[Path, Path]:
    """OUT/table.json and OUT/table.md, atomically (rewritten after every row, so a long run shows its progress)."""
    j, m = ctx.out / "table.json", ctx.out / "table.md"
    atomic_write_json(j, to_jsonable({"spec": str(ctx.spec.path), "title": ctx.spec.title, "kind": ctx.spec.kind,
                                      **meta, "rows": entries, "buffers": buffers}))
    atomic_write_text(m, render_markdown(ctx.spec, entries, buffers, meta))
    return j, m


# ----------------------------------------------------------------------------------------------- data and inputs

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


# ----------------------------------------------------------------------------------------------- the command

def default_out(spec_path: Path, smoke: bool) -> Path:
    """runs/reproduce/<spec name>[-smoke]: smoke artifacts never mix with real ones."""
    return Path("runs") / "reproduce" / (spec_path.stem + ("-smoke" if smoke else ""))


def reproduce(spec_path: str | Path, rows: Optional[list[str]] = None, out: str | Path | None = None,
              dry_run: bool = False, smoke: bool = False, device: str = "auto", data_root: Optional[str] = None,
              command: Optional[str] = None, log: Callable[[str], None] = print, jobs: int = 1) -> int:
    """Runs (or with dry_run, describes) every selected row of a spec; returns the exit status (0: every row has
    its number; 1: something is missing or a row failed). See the module docstring."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    spec = load_spec(spec_path)
    selected = select_rows(spec, rows)
    ctx = Context(spec, Path(out) if out else default_out(spec.path, smoke), smoke, device,
                  data_root if data_root is not None else spec.data_root, log)
    for row in selected:  # every row's config is built and checked before anything runs
        _check_row_config(row, ctx)
    if dry_run:
        return describe(selected, ctx)
    missing = missing_inputs(selected, ctx)
    if missing:
        raise FileNotFoundError("cannot run: " + "; ".join(missing))
    from dd.lock import output_lock

    with output_lock(ctx.out, command=command):
        return _run_rows(selected, ctx, command or f"ddtk reproduce {spec.path}", jobs)


def _check_row_config(row: Row, ctx: Context) -> None:
    """Builds the row's distill config and eval options and checks them against the method's and the driver's
    option types (a typo in a spec fails now, not hours into a run)."""
    from dd.methods.base import config_from_dict
    from dd.methods.driver import RunConfig, method_class, run_config

    from dd.eval import Protocol
    from dd.methods.base import check_input_counts, coerce_fields

    try:
        coerce_fields(Protocol, row_eval(row, ctx.smoke).options)
        if not row.baseline:
            cls = method_class(row.method)
            cfg = distill_config(row, ctx.smoke)
            method = {k: v for k, v in cfg.items() if k not in ("method", "dataset", "ipc", "run", "notes", "teacher_model")}
            config_from_dict(cls.Config, method)
            run_config(config_from_dict(RunConfig, cfg["run"]))
            buffer, teachers = input_specs(row, ctx)
            check_input_counts(cls, int(buffer is not None), len(teachers))
    except ValueError as e:
        raise SpecError(f"{ctx.spec.path}: row '{row.id}': {e}") from None


def describe(rows: list[Row], ctx: Context) -> int:
    """--dry-run: what is missing, then every command with what it would do (run, resume, reuse); writes nothing."""
    log = ctx.log
    log(f"spec {ctx.spec.path}: {ctx.spec.title} ({len(rows)} of {len(ctx.spec.rows)} rows) -> {ctx.out}"
        + (" [smoke]" if ctx.smoke else ""))
    missing = missing_inputs(rows, ctx)
    log("missing:" if missing else "data: everything the rows read is present")
    for line in missing:
        log(f"  {line}")
    state = State(ctx.out / "state.json")
    log("buffers and teachers:")
    for name in dict.fromkeys(n for r in rows for n in recipes_of(r, ctx.spec)):
        argv = _buffer_argv(ctx.spec.buffers[name], ctx.buffer_dir(name), f"buffer recipe '{name}'", ctx.smoke)
        log(f"  [{_status_or_conflict(lambda: buffer_status(name, ctx))}] {command_text('buffer', argv)}")
    for row in rows:
        ref = row.paper or row.recorded
        log(f"row {row.id}: {row.method} on {row.dataset}" + (f", IPC {row.ipc}" if row.ipc else "")
            + (f"; compared with {ref['value']} ({ref['source']})" if ref else ""))
        if not row.baseline:
            status = _status_or_conflict(lambda: distill_status(row, ctx, state))
            log(f"  [{status}] {command_text('distill', distill_argv(row, ctx, restart=status.startswith('restart')))}")
            log(f"      {ctx.distill_config_path(row)}: {json.dumps(distill_config(row, ctx.smoke), sort_keys=True)}")
        log(f"  [{_status_or_conflict(lambda: eval_status(row, ctx, state))}] {command_text('eval', eval_argv(row, ctx))}")
    log(f"then: {ctx.out / 'table.md'} and {ctx.out / 'table.json'}")
    return 1 if missing else 0


def _existing_entry(row: Row, ctx: Context, state: State) -> dict:
    """The table entry of a row this invocation does not run: its numbers when every artifact exists and matches,
    else marked as not run."""
    try:
        ready = row.baseline or distill_status(row, ctx, state)[0] == "reuse"
        if ready and eval_status(row, ctx, state)[0] == "reuse":
            stages = {"eval": {**(state.get("rows", row.id, "eval") or {}), "status": "reused"}}
            if not row.baseline:
                stages["distill"] = {**(state.get("rows", row.id, "distill") or {}), "status": "reused"}
            return table_entry(row, ctx, stages, row_result(row, ctx), None)
    except Exception:  # noqa: BLE001 - a row outside --rows is only reported, never run or fixed
        pass
    return {**table_entry(row, ctx, {}, None, None), "skipped": "not in --rows and no matching artifacts"}


def _status_or_conflict(check: Callable[[], tuple[str, str]]) -> str:
    """'status: why' for the dry run; a conflict (e.g. a buffer recorded with other settings) is shown, not raised."""
    try:
        status, why = check()
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as e:
        return f"conflict: {e.args[0] if isinstance(e, KeyError) and e.args else e}"
    return f"{status}: {why}"


def _run_row(row: Row, ctx: Context, state: State, stages: dict) -> dict:
    """Distill (unless a baseline) and eval of one row whose buffers are recorded, each stage's record added to
    `stages` as it finishes (a failure leaves the ones done); the row's result."""
    if not row.baseline:
        stages["distill"] = ensure_distill(row, ctx, state)
    stages["eval"] = ensure_eval(row, ctx, state)
    return row_result(row, ctx)


def _run_rows(rows: list[Row], ctx: Context, command: str, jobs: int = 1) -> int:
    """Buffers -> distill -> eval for every row (`jobs` at a time, see _run_parallel); a failed row is reported in
    the table and the next row goes on. Rows left out by --rows are still listed: with their numbers when their
    artifacts are all there and match."""
    from dd.utils import resolve_device

    state = State(ctx.out / "state.json")
    meta = {"command": command, "device": f"--device {ctx.device}: {resolve_device(ctx.device)}",
            "smoke": ctx.smoke, "started": _now(), "finished": None, "jobs": jobs}
    buffers: dict[str, dict] = {}
    finished: dict[str, dict] = {}
    selected = {r.id for r in rows}

    def entries() -> list[dict]:
        out = []
        for row in ctx.spec.rows:
            if row.id in finished:
                out.append(finished[row.id])
            elif row.id in selected:
                out.append({**table_entry(row, ctx, {}, None, None), "skipped": PENDING})
            else:
                out.append(_existing_entry(row, ctx, state))
        return out

    def done(row: Row, stages: dict, result: Optional[dict], error: Optional[str]) -> None:
        if error:
            ctx.log(f"[{row.id}] failed: {error}")
        finished[row.id] = table_entry(row, ctx, stages, result, error)
        meta["finished"] = _now()
        write_table(ctx, entries(), buffers, meta)

    if jobs > 1:
        _run_parallel(rows, ctx, jobs, buffers, done)
    else:
        for row in rows:
            stages, result, error = {}, None, None
            try:
                for name in recipes_of(row, ctx.spec):
                    if name not in buffers:
                        buffers[name] = ensure_buffer(name, ctx, state)
                    stages[f"buffer {name}"] = buffers[name]
                result = _run_row(row, ctx, state, stages)
            except Exception as e:  # noqa: BLE001 - one row's failure is reported; the others still run
                error = f"{type(e).__name__}: {e}"
            done(row, stages, result, error)
    failures = sum(1 for e in finished.values() if e["error"])
    j, m = write_table(ctx, entries(), buffers, meta)
    ctx.log(m.read_text())
    ctx.log(f"wrote {m} and {j}" + (f"; {failures} row(s) failed" if failures else ""))
    return 1 if failures else 0


def _run_parallel(rows: list[Row], ctx: Context, jobs: int, buffers: dict[str, dict],
                  done: Callable[[Row, dict, Optional[dict], Optional[str]], None]) -> None:
    """`jobs` worker processes (spawned), each running one buffer recipe or one row (distill + eval) at a time.
    The next job is the first row in spec order that can start: the row itself when its buffers are recorded,
    else its first buffer nobody is recording yet. On a CPU each job gets cores / jobs torch threads."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    args = (str(ctx.spec.path), str(ctx.out), ctx.smoke, ctx.device, ctx.data_root, threads)
    failed_buffers: dict[str, str] = {}
    started: set[str] = set()
    waiting = list(rows)
    running: dict = {}

    def next_job() -> Optional[tuple[str, str, Optional[Row]]]:
        for row in waiting:
            needs = recipes_of(row, ctx.spec)
            broken = [n for n in needs if n in failed_buffers]
            if broken:
                return "failed", broken[0], row
            missing = [n for n in needs if n not in buffers]
            if not missing:
                return "row", row.id, row
            free = [n for n in missing if n not in started]
            if free:
                return "buffer", free[0], None
        return None

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while True:
            while len(running) < jobs:
                job = next_job()
                if job is None:
                    break
                kind, name, row = job
                if kind == "failed":
                    waiting.remove(row)
                    done(row, {}, None, f"buffer recipe '{name}' failed: {failed_buffers[name]}")
                    continue
                if row is not None:
                    waiting.remove(row)
                started.add(name)
                ctx.log(f"[{name}] started ({len(running) + 1} of {jobs} jobs running)")
                running[pool.submit(_job, kind, name, *args)] = (kind, name, row)
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                kind, name, row = running.pop(future)
                if kind == "buffer":
                    try:
                        buffers[name] = future.result()
                    except Exception as e:  # noqa: BLE001 - the rows needing it are reported; the others go on
                        failed_buffers[name] = f"{type(e).__name__}: {e}"
                        ctx.log(f"[buffer {name}] failed: {failed_buffers[name]}")
                    continue
                stages, result, error = {f"buffer {n}": buffers[n] for n in recipes_of(row, ctx.spec)}, None, None
                try:
                    row_stages, result = future.result()
                    stages.update(row_stages)
                except Exception as e:  # noqa: BLE001 - reported in the table; the other jobs go on
                    error = f"{type(e).__name__}: {e}"
                done(row, stages, result, error)


def _job(kind: str, name: str, spec_path: str, out: str, smoke: bool, device: str, data_root: Optional[str],
         threads: int):
    """One job of _run_parallel, in its worker process: a buffer recipe's record, or a row's (distill and eval
    stages, result); the parent adds the buffer stages from its own records."""
    import torch

    torch.set_num_threads(threads)
    spec = load_spec(spec_path)
    ctx = Context(spec, Path(out), smoke, device, data_root, lambda line: print(f"[{name}] {line}", flush=True))
    state = State(ctx.out / "state.json")
    if kind == "buffer":
        return ensure_buffer(name, ctx, state)
    row = next(r for r in spec.rows if r.id == name)
    stages: dict = {}
    result = _run_row(row, ctx, state, stages)
    return stages, result
