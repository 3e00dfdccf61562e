"""`reproduce()`: the entry point of `ddtk reproduce` (dry run, the sequential run, the table written after each row)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from dd.reproduce.spec import Row, SpecError, load_spec, select_rows
from dd.reproduce.plan import (Context, command_text, distill_argv, distill_config, eval_argv, input_specs,
                               missing_inputs, recipe_plan, recipes_of, row_eval)
from dd.reproduce.fresh import State, buffer_status, distill_status, eval_status
from dd.reproduce.stages import ensure_buffer, now, row_result, run_row
from dd.reproduce.table import PENDING, table_entry, write_table
from dd.reproduce.scheduler import run_parallel


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
        return _run_rows(selected, ctx, reproduce_command(ctx, rows, jobs), jobs)


def reproduce_command(ctx: Context, rows: Optional[list[str]], jobs: int) -> str:
    """The `ddtk reproduce` command of this invocation, every path absolute (the tables write it relative to OUT)."""
    argv = [str(ctx.spec.path.resolve()), "--out", str(ctx.out.resolve())]
    argv += ["--rows", ",".join(rows)] if rows else []
    argv += ["--smoke"] if ctx.smoke else []
    argv += ["--jobs", str(jobs)] if jobs != 1 else []
    argv += ["--device", ctx.device] if ctx.device != "auto" else []
    argv += ["--data-root", str(Path(ctx.data_root).resolve())] if ctx.data_root else []
    return command_text("reproduce", argv)


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
        log(f"  [{_status_or_conflict(lambda: buffer_status(name, ctx))}] {recipe_plan(name, ctx).command}")
    for row in rows:
        ref = row.paper or row.recorded
        log(f"row {row.id}: {row.method} on {row.dataset}" + (f", IPC {row.ipc}" if row.ipc else "")
            + (f"; compared with {ref['value']} ({ref['source']})" if ref else ""))
        if not row.baseline:
            status = _status_or_conflict(lambda: distill_status(row, ctx, state))
            log(f"  [{status}] {command_text('distill', distill_argv(row, ctx, restart=status.startswith('restart')))}")
            log(f"      {ctx.distill_config_path(row)}: {json.dumps(distill_config(row, ctx.smoke, ctx), sort_keys=True)}")
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


def _run_rows(rows: list[Row], ctx: Context, command: str, jobs: int = 1) -> int:
    """Buffers -> distill -> eval for every row (`jobs` at a time, see run_parallel); a failed row is reported in
    the table and the next row goes on. Rows left out by --rows are still listed: with their numbers when their
    artifacts are all there and match."""
    from dd.utils import resolve_device

    state = State(ctx.out / "state.json")
    meta = {"command": command, "device": f"--device {ctx.device}: {resolve_device(ctx.device)}",
            "smoke": ctx.smoke, "started": now(), "finished": None, "jobs": jobs}
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
        meta["finished"] = now()
        write_table(ctx, entries(), buffers, meta)

    if jobs > 1:
        run_parallel(rows, ctx, jobs, buffers, done)
    else:
        for row in rows:
            stages, result, error = {}, None, None
            try:
                for name in recipes_of(row, ctx.spec):
                    if name not in buffers:
                        buffers[name] = ensure_buffer(name, ctx, state)
                    stages[f"buffer {name}"] = buffers[name]
                result = run_row(row, ctx, state, stages)
            except Exception as e:  # noqa: BLE001 - one row's failure is reported; the others still run
                error = f"{type(e).__name__}: {e}"
            done(row, stages, result, error)
    failures = sum(1 for e in finished.values() if e["error"])
    j, m = write_table(ctx, entries(), buffers, meta)
    ctx.log(m.read_text())
    ctx.log(f"wrote {m} and {j}" + (f"; {failures} row(s) failed" if failures else ""))
    return 1 if failures else 0
