"""A spec row planned: its distill config, inputs, eval options and the `ddtk` commands that are equivalent to it,
shrunk with --smoke as each method class declares; what a row needs from disk before anything runs."""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

from dd.reproduce.spec import EvalSpec, Row, Spec, SpecError, check_keys
from dd.teachers import split_spec


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
    """The command as typed at a shell (shown to the user; reproduce itself calls the library)."""
    return shlex.join(["ddtk", name, *argv])


# how the ddtk commands spell the options whose flag is not --NAME-WITH-DASHES (for the commands shown to the user)
FLAGS = {"model_options": "--model-option", "protocol_options": "--protocol-option", "quiet": "--quiet"}
REPEATED = {"model_options", "protocol_options"}  # KEY=VALUE options given once per item


def option_argv(options: dict, defaults: dict) -> list[str]:
    """{name: value} as the ddtk commands spell them: --name-with-dashes VALUE; a true boolean as --flag, a false one
    as --no-flag where the option is on by default (else left out); KEY=VALUE options repeated per item."""
    from dd.data import DATA_OPTIONS

    argv: list[str] = []
    for name, value in options.items():
        flag = FLAGS.get(name) or DATA_OPTIONS.get(name) or "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else (["--no-" + flag[2:]] if defaults.get(name) is True else [])
        elif name in REPEATED:
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


@dataclass(frozen=True)
class BufferPlan:
    """One buffer recipe planned: the BufferConfig it records, how its data is read, and the equivalent command."""

    config: Any  # dd.buffers.BufferConfig
    out: Path
    data_options: dict
    progress: bool
    command: str


def buffer_plan(recipe: dict, out: Path, where: str, smoke: bool = False, common: tuple = ()) -> BufferPlan:
    """A recipe (keys: `ddtk buffer`'s option names with '_': dd.buffers.config.BufferRecipe's fields, the data
    options, quiet) planned, its options checked (unknown names, types, values) before anything runs."""
    from dataclasses import asdict

    from dd.buffers.config import BufferRecipe
    from dd.data import DATA_OPTIONS
    from dd.methods.base import config_from_dict

    names = {f.name for f in fields(BufferRecipe)}
    check_keys(recipe, names | set(DATA_OPTIONS) | {"quiet", "notes"}, where)
    options = {k: v for k, v in recipe.items() if k != "notes"}
    if smoke:
        options.update({k: min(int(options.get(k) or v), v) for k, v in SMOKE_BUFFER.items()})
    try:
        config = config_from_dict(BufferRecipe, {k: v for k, v in options.items() if k in names}).config()
    except (ValueError, TypeError) as e:
        raise SpecError(f"{where}: {e}") from None
    argv = option_argv(options, asdict(BufferRecipe())) + list(common) + ["--out", str(out)]
    return BufferPlan(config, out, {k: options[k] for k in DATA_OPTIONS if k in options},
                      not options.get("quiet"), command_text("buffer", argv))


def recipe_plan(name: str, ctx: Context) -> BufferPlan:
    """The plan of the spec's buffer recipe `name`, recorded into OUT/buffers/NAME."""
    return buffer_plan(ctx.spec.buffers[name], ctx.buffer_dir(name), f"buffer recipe '{name}'", ctx.smoke,
                       tuple(ctx.common_argv()))


def distill_config(row: Row, smoke: bool, ctx: Optional[Context] = None) -> dict:
    """The row's whole `ddtk distill --config` file: its config file, then the row's options and run options, the
    evaluation settings (used when the method relabels at the end; the report itself is `ddtk eval`'s), shrunk with
    --smoke. Inputs are given on the command line, so the file's own buffer/teachers entries are dropped; `ctx`: where
    they are (see row_eval)."""
    from dd.methods.driver import method_class

    base = {k: v for k, v in row.base.items() if k not in ("notes", "buffer", "teachers", "run")}
    cfg = {**base, **row.options, "method": row.method, "dataset": row.dataset, "ipc": row.ipc}
    if row.teacher_model is not None:
        cfg["teacher_model"] = row.teacher_model
    run = {**row.base.get("run", {}), **row.run}
    ev = row_eval(row, smoke, ctx)
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


def row_eval(row: Row, smoke: bool, ctx: Optional[Context] = None) -> EvalSpec:
    """The row's EvalSpec with its architectures filled in (the method's resolved model when none is given) and
    shrunk with --smoke; with `ctx`, the model is resolved with the row's inputs once they are on disk."""
    from dataclasses import replace

    ev = row.eval
    if not ev.archs:  # baseline rows always have them (load_spec)
        ev = replace(ev, archs=(_resolved_model(row, smoke, ctx),))
    if smoke:
        ev = replace(ev, **SMOKE_EVAL)
    return ev


def _resolved_model(row: Row, smoke: bool, ctx: Optional[Context]) -> str:
    """The architecture the row's method distils with after its presets and the rules that read its inputs (SRe2L:
    its teacher's architecture), as the row's run will resolve it; before its inputs are recorded (or without
    `ctx`), the rules that read them cannot apply yet."""
    from dd.methods.base import Inputs
    from dd.methods.plan import method_class, resolve

    cls = method_class(row.method)
    values = {k: v for k, v in {**row.base, **row.options}.items()
              if k not in ("notes", "buffer", "teachers", "run", "method", "dataset", "ipc", "teacher_model")}
    values = smoke_config(cls, values) if smoke else values
    if ctx is not None and _inputs_on_disk(row, ctx):
        buffer, teachers = input_specs(row, ctx)
        return resolve(row.method, row.dataset, row.ipc, values, buffers=[buffer], teachers=teachers,
                       teacher_model=row.teacher_model, verify="lazy")[1].model
    return cls.resolve_config(values, row.dataset, row.ipc, Inputs()).model


def _inputs_on_disk(row: Row, ctx: Context) -> bool:
    """Are the row's buffer and teachers there to be opened: its recipes recorded in full, its other inputs present."""
    from dd.buffers.store import recorded_status

    recipes = recipes_of(row, ctx.spec)
    if any(recorded_status(ctx.buffer_dir(n), recipe_plan(n, ctx).config)[0] != "complete" for n in recipes):
        return False
    own = {str(ctx.buffer_dir(n)) for n in recipes}
    buffer, teachers = input_specs(row, ctx)
    return all(input_present(p) for p in [buffer, *teachers] if p and str(_input_path(p)) not in own)


def input_specs(row: Row, ctx: Context) -> tuple[Optional[str], list[str]]:
    """(buffer, teachers) as the distill command gets them (see resolve_input); the row's entries win over its config
    file's."""
    buffer = row.buffer or row.base.get("buffer")
    teachers = row.teachers or list(row.base.get("teachers", []))
    return (resolve_input(buffer, ctx) if buffer else None), [resolve_input(str(t), ctx) for t in teachers]


def resolve_input(spec: str, ctx: Context) -> str:
    """A buffer/teacher spec as the commands get it: a recipe name becomes OUT/buffers/NAME (keeping '@E'), anything
    else (a path, a module:callable) is passed as written."""
    name, expert = split_spec(spec)
    return f"{ctx.buffer_dir(name)}{'' if expert is None else f'@{expert}'}" if name in ctx.spec.buffers else spec


def eval_teachers(row: Row, ctx: Context) -> list[str]:
    """The teachers the row's report is scored with (its eval's `teachers`, resolved; empty: the set's own)."""
    return [resolve_input(t, ctx) for t in row.eval.teachers]


def recipes_of(row: Row, spec: Spec) -> list[str]:
    """The spec's buffer recipes a row needs (its buffer, the teachers that name one and the teachers its report is
    scored with), in order, once each; a baseline row needs only the latter."""
    names = [] if row.baseline else [row.buffer] + [split_spec(t)[0] for t in row.teachers]
    names += [split_spec(t)[0] for t in row.eval.teachers]
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
    ev = row_eval(row, ctx.smoke, ctx)
    if row.baseline:
        argv = ["--baseline", row.method, "--dataset", row.dataset] + (["--ipc", str(row.ipc)] if row.ipc else [])
    else:
        argv = [str(ctx.distill_dir(row) / "synset.safetensors")]
        argv += [a for b in ev.baselines for a in ("--baseline", b)] if ev.baselines else ["--no-baselines"]
    argv += ["--models", ",".join(ev.archs), "--runs", str(ev.runs)]
    argv += ["--epochs", str(ev.epochs)] if ev.epochs is not None else []
    argv += ["--protocols", ",".join(ev.protocols)] if ev.protocols else (["--protocol", ev.protocol] if ev.protocol
                                                                            else [])
    for t in eval_teachers(row, ctx):
        argv += ["--teacher", t]
    for k, v in ev.options.items():
        argv += ["--protocol-option", f"{k}={_text(v)}"]
    argv += ["--lr-search", _text(list(ev.lr_search))] if ev.lr_search else []
    argv += ["--labels", labels] if labels else []
    return argv + ["--seed", str(row.seed), *ctx.common_argv(), "--out", str(ctx.eval_dir(row))]


def distill_kwargs(row: Row, ctx: Context, restart: bool = False) -> dict:
    """The keyword arguments of dd.methods.distill for a row: what `ddtk distill` makes of distill_argv (the row's
    config file, its inputs, seed, device and data root), built directly."""
    cfg = distill_config(row, ctx.smoke, ctx)
    run = dict(cfg.pop("run"))
    run["wandb"] = run.get("wandb", False)  # as `ddtk distill` reads a config file
    cfg.pop("notes", None)
    method, dataset, ipc = cfg.pop("method"), cfg.pop("dataset"), cfg.pop("ipc")
    teacher_model = cfg.pop("teacher_model", None)
    buffer, teachers = input_specs(row, ctx)
    return dict(method=method, dataset=dataset, ipc=ipc, out=str(ctx.distill_dir(row)), buffer=buffer,
                teachers=teachers or (), teacher_model=teacher_model, config=cfg, run=run, device=ctx.device,
                seed=row.seed, data_root=ctx.data_root or None, resume=not restart, data_options={})


def distill_plan(row: Row, ctx: Context, restart: bool = False, verify: str = "open"):
    """The row's dd.methods.RunPlan (its config resolved with its real inputs, its identity computed once), made
    from distill_kwargs; verify='lazy' reads the buffers' manifests only (enough for the identity)."""
    from dd.methods.plan import make_plan

    return make_plan(**distill_kwargs(row, ctx, restart), verify=verify)


def eval_kwargs(row: Row, ctx: Context, recorded=None, labels: Optional[str] = None) -> dict:
    """The keyword arguments of dd.eval.run.evaluate_set for a row (what `ddtk eval` makes of eval_argv), the set
    aside; `recorded`: the protocol the set records (used when the row names none); `labels`: the stored teacher
    labels the set records, passed when one of the row's protocols trains from a teacher (they stand in for it)."""
    from dd.eval.protocol import protocol_rule
    from dd.eval.run import resolve_protocol

    ev = row_eval(row, ctx.smoke, ctx)
    baselines = [row.method] if row.baseline else list(ev.baselines)
    protocols = [resolve_protocol(name, recorded, epochs=ev.epochs, options=ev.options) for name in ev.protocol_names]
    taught = any(protocol_rule(p.labels).needs_teacher for p in protocols)
    return dict(archs=list(ev.archs), protocol=protocols if ev.protocols else protocols[0],
                runs=ev.runs, dataset=row.dataset if row.baseline else None, ipc=row.ipc if row.baseline else None,
                baselines=baselines, full_epochs=ev.epochs or 30, full_runs=ev.runs if baselines else 1,
                lr_search=[float(v) for v in ev.lr_search] or None, seed=row.seed, data_root=ctx.data_root or None,
                teachers=eval_teachers(row, ctx), labels=labels if taught else None)


def _input_path(spec: str) -> Path:
    """The file or directory behind a buffer/teacher spec (DIR@E names DIR)."""
    return Path(split_spec(spec)[0])


def _is_path_like(spec: str) -> bool:
    """A teacher spec that names a file or directory (not package.module:callable)."""
    return not (":" in spec and not spec.endswith((".pt", ".pth", ".safetensors", ".ckpt", ".bin")))


def input_present(spec: str) -> bool:
    """Is an input the spec does not record itself (a weights file, a buffer made elsewhere) on disk?"""
    return not _is_path_like(spec) or _input_path(spec).exists()


def missing_inputs(rows: list[Row], ctx: Context) -> list[str]:
    """Every dataset directory and external teacher/buffer file the rows need and this machine lacks, one line
    each, naming the rows that need it (nothing is loaded)."""
    from dd.data import dataset_entry, missing_files

    needs: dict[str, list[str]] = {}
    for row in rows:
        datasets = [row.dataset] + [ctx.spec.buffers[n].get("dataset", "mnist10k") for n in recipes_of(row, ctx.spec)]
        for name in dict.fromkeys(datasets):
            needs.setdefault(name, []).append(row.id)
    lines = []
    for name, ids in needs.items():
        absent = missing_files(name, ctx.data_root)
        if absent:
            lines.append(f"dataset {name} ({dataset_entry(name).help}): missing {', '.join(absent)}; needed by "
                         f"{', '.join(dict.fromkeys(ids))}; put it there or pass --data-root")
    absent_inputs: dict[str, list[str]] = {}
    for row in rows:
        buffer, teachers = (None, []) if row.baseline else input_specs(row, ctx)
        own = {str(ctx.buffer_dir(n)) for n in recipes_of(row, ctx.spec)}
        for spec in [buffer, *teachers, *eval_teachers(row, ctx)]:
            if spec and str(_input_path(spec)) not in own and not input_present(spec):
                absent_inputs.setdefault(spec, []).append(row.id)
    for spec, ids in absent_inputs.items():
        lines.append(f"input {spec} does not exist; needed by {', '.join(ids)} (a file the spec expects you to have: "
                     "see those rows' notes)")
    return lines
