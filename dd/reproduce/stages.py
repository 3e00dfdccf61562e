"""Running one stage of a row (buffer, distill, eval) by calling the library (dd.buffers.record_buffer,
dd.methods.distill, dd.eval.run.evaluate_set): reuse what matches, else run it and record its wall time."""
from __future__ import annotations

import datetime
import json
import time

from dd.utils import atomic_write_text, sha256_json
from dd.reproduce.spec import BASELINE_ROWS, Row
from dd.reproduce.plan import (Context, command_text, distill_argv, distill_config, distill_plan, eval_argv,
                               eval_kwargs, recipe_plan)
from dd.reproduce.fresh import State, buffer_status, distill_status, eval_status, set_fingerprint


def ensure_buffer(name: str, ctx: Context, state: State) -> dict:
    """Records (or resumes, or reuses) one buffer recipe; returns its status record for the table."""
    from dd.buffers import TrajectoryStore, record_buffer

    status, why = buffer_status(name, ctx)
    plan = recipe_plan(name, ctx)
    if status == "reuse":
        ctx.log(f"[buffer {name}] reused: {why}")
        return {"status": "reused", "seconds": state.get("buffers", name, "seconds"), "command": plan.command}
    ctx.log(f"$ {plan.command}")
    t0 = time.perf_counter()
    record_buffer(plan.config, plan.out, device=ctx.device, data_root=ctx.data_root or None, progress=plan.progress,
                  data_options=plan.data_options)
    seconds = time.perf_counter() - t0
    store = TrajectoryStore(plan.out)
    accs = ", ".join(f"{100 * store.final_accuracy(k):.2f}" for k in range(store.num_experts))
    ctx.log(f"{store}\nfinal test accuracy per expert (%): {accs}")
    record = {"status": "resumed" if status == "resume" else "ran", "seconds": seconds, "command": plan.command,
              "finished": now()}
    state.put(record, "buffers", name)
    return record


def ensure_distill(row: Row, ctx: Context, state: State) -> dict:
    """Distils a row (or resumes, restarts, reuses it); returns its status record for the table. The config file
    `ddtk distill --config` would read is written beside it, for the user."""
    from dd.methods import run_plan

    status, why = distill_status(row, ctx, state)
    if status == "reuse":
        ctx.log(f"[{row.id}] distill reused: {why}")
        return {**(state.get("rows", row.id, "distill") or {}), "status": "reused"}
    cfg = distill_config(row, ctx.smoke, ctx)
    atomic_write_text(ctx.distill_config_path(row), json.dumps(cfg, indent=2) + "\n")
    plan = distill_plan(row, ctx, restart=status == "restart")  # its identity is the one config.json will hold
    state.put({"identity": sha256_json(plan.identity), "iterations": plan.run.iterations},
              "rows", row.id, "distill", "started")
    ctx.log(f"[{row.id}] distill: {status} ({why})")
    ctx.log(f"$ {command_text('distill', distill_argv(row, ctx, restart=status == 'restart'))}")
    t0 = time.perf_counter()
    res = run_plan(plan)
    report = " and eval.md" if res.report is not None else " (no report: eval_runs is 0)"
    ctx.log(f"wrote {ctx.distill_dir(row) / 'synset.safetensors'}, synset.png{report}")
    record = {"status": {"resume": "resumed", "restart": "restarted"}.get(status, "ran"),
              "seconds": time.perf_counter() - t0, "finished": now(),
              "started": state.get("rows", row.id, "distill", "started")}
    state.put(record, "rows", row.id, "distill")
    return record


def ensure_eval(row: Row, ctx: Context, state: State) -> dict:
    """Scores a row (or reuses its report); returns its status record for the table."""
    from dd.distributed import ProcessGroup
    from dd.eval.run import evaluate_set
    from dd.synset import SyntheticSet
    from dd.utils import resolve_device

    status, why = eval_status(row, ctx, state)
    if status == "reuse":
        ctx.log(f"[{row.id}] eval reused: {why}")
        return {**(state.get("rows", row.id, "eval") or {}), "status": "reused"}
    path = ctx.distill_dir(row) / "synset.safetensors"
    synset = None if row.baseline else SyntheticSet.load(path)
    evaluation = (synset.meta.get("evaluation") or {}) if synset is not None else {}
    kwargs = eval_kwargs(row, ctx, evaluation.get("protocol"), evaluation.get("labels"))
    ctx.log(f"$ {command_text('eval', eval_argv(row, ctx, kwargs['labels']))}")
    t0 = time.perf_counter()
    group = ProcessGroup(resolve_device(ctx.device))
    try:
        report = evaluate_set(synset, group=group, **kwargs)
    finally:
        group.close()
    for r in report.rows:
        ctx.log(str(r))
    ctx.log(report.to_markdown())
    j, m = report.save(ctx.eval_dir(row), stem="eval")
    ctx.log(f"wrote {j} and {m}")
    record = {"status": "ran", "seconds": time.perf_counter() - t0, "finished": now(),
              "set": None if row.baseline else set_fingerprint(path)}
    if row.eval.teachers:  # the report's meta does not say which teacher scored it; the state does
        record["teachers"] = list(row.eval.teachers)
    state.put(record, "rows", row.id, "eval")
    return record


def row_result(row: Row, ctx: Context) -> dict:
    """The row's accuracies (percent) per architecture from its eval.json: the set (or baseline) and, when the
    report has it, the random-real baseline under the same protocol; with several protocols, `regimes` holds each
    one's (the top-level fields are the first one's); `budget`: the row's image and label bytes per protocol."""
    report = json.loads((ctx.eval_dir(row) / "eval.json").read_text())
    own = BASELINE_ROWS.get(row.method)
    meta = report["meta"]
    names = [p.get("name") for p in meta.get("protocols") or [meta["protocol"]]]
    regimes = {n: {"ours": {}, "random_real": {}, "budget": None} for n in names}
    for r in report["rows"]:
        regime = regimes[r["protocol"].get("name") if len(names) > 1 else names[0]]
        extra = r.get("extra") or {}
        entry = {"mean": 100 * r["mean"], "std": 100 * r["std"], "accs": [100 * a for a in r["accs"]],
                 "lr": extra.get("lr")}
        if (own is None and r["name"] not in BASELINE_ROWS.values()) or r["name"] == own:
            regime["ours"][r["arch"]] = entry
            if "image_bytes" in extra and regime["budget"] is None:
                regime["budget"] = {k: extra.get(k) for k in ("image_bytes", "label_bytes", "label_source",
                                                               "labels_exceed_images")}
        elif r["name"] == "random-real":
            regime["random_real"][r["arch"]] = entry
    first = regimes[names[0]]
    result = {"ours": first["ours"], "random_real": first["random_real"] or None, "protocol": names[0],
              "epochs": meta["protocol"].get("epochs"), "runs": meta.get("runs")}
    if len(names) > 1 or first["budget"] is not None:
        result["regimes"] = [{"protocol": n, "ours": g["ours"], "random_real": g["random_real"] or None,
                              "budget": g["budget"]} for n, g in regimes.items()]
    return result


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def run_row(row: Row, ctx: Context, state: State, stages: dict) -> dict:
    """Distill (unless a baseline) and eval of one row whose buffers are recorded, each stage's record added to
    `stages` as it finishes (a failure leaves the ones done); the row's result."""
    if not row.baseline:
        stages["distill"] = ensure_distill(row, ctx, state)
    stages["eval"] = ensure_eval(row, ctx, state)
    return row_result(row, ctx)
