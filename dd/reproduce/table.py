"""OUT/table.json and OUT/table.md: each row's number beside the paper's (or the recorded one), the protocol, the wall
times and whether each artifact was reused; paths relative to OUT."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from dd.utils import atomic_write_json, atomic_write_text, relative_paths, to_jsonable
from dd.reproduce.spec import Row, Spec
from dd.reproduce.plan import Context, row_eval


PENDING = "not finished yet"  # what table.json and table.md say of a selected row a --jobs run is still on


def table_entry(row: Row, ctx: Context, stages: dict, result: Optional[dict], error: Optional[str]) -> dict:
    """One row of table.json: what was run, what came out, what it is compared with."""
    ev = row_eval(row, ctx.smoke, ctx)
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
    head += ["random real, same protocol (%)"]
    has_budget = any(g.get("budget") for e in entries for g in e.get("regimes") or [])
    head += ["image bytes", "label bytes"] if has_budget else []
    head += ["source", "distill", "eval", "artifacts"]
    lines = [f"# {spec.title}", "",
             f"Produced by `{meta['command']}` on {meta['finished']} ({meta['device']}); paths are relative to this "
             "file's directory.", "",
             "Accuracy: last-epoch test accuracy of fresh networks, mean ± std over the runs, in percent; Δ is ours "
             "minus the reference on the first architecture. Wall times are those of the session that finished "
             "each step (a resumed step counts only its last session).", ""]
    if has_budget:
        lines += ["Bytes: what a network trains on as stored (float32 images; int64 class ids, float labels or stored "
                  "teacher labels' files); a teacher-protocol row without stored labels has its teacher run on every "
                  "view, which no byte count shows ('teacher' below); '> images': more label than image bytes.", ""]
    if meta.get("smoke"):
        lines += ["**Smoke run**: every row shrunk to seconds (1 expert x 1 epoch, 2 iterations, 1 epoch x 1 run); "
                  "the numbers test the pipeline, not the methods.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        for regime in _regimes(e):
            lines.append("| " + " | ".join(_cells(regime, has_paper, has_recorded, has_budget)) + " |")
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


def _regimes(e: dict) -> list[dict]:
    """The entry as table lines: one per label regime (protocol) its report holds, the first carrying the
    differences from the references; an entry without a report is one line."""
    regimes = e.get("regimes") or []
    if len(regimes) <= 1:
        return [{**e, "budget": regimes[0]["budget"] if regimes else None}]
    return [{**e, **g, **({} if i == 0 else {"diff_paper": None, "diff_recorded": None})}
            for i, g in enumerate(regimes)]


def _bytes(budget: Optional[dict]) -> list[str]:
    """The image and label bytes cells of a regime's budget."""
    if not budget or budget.get("image_bytes") is None or budget.get("label_bytes") is None:
        return ["", ""]  # a report made before budgets were recorded
    labels = f"{budget['label_bytes']:,}"
    if (budget.get("label_source") or "").startswith("teacher on every view"):
        labels += " + teacher"
    return [f"{budget['image_bytes']:,}", labels + (" (> images)" if budget.get("labels_exceed_images") else "")]


def _cells(e: dict, has_paper: bool, has_recorded: bool, has_budget: bool = False) -> list[str]:
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
    cells += _bytes(e.get("budget")) if has_budget else []
    source = (e["paper"] or e["recorded"] or {}).get("source", "")
    stages = e["stages"]
    cells += [source, _duration((stages.get("distill") or {}).get("seconds")) if "distill" in stages else "—",
              _duration((stages.get("eval") or {}).get("seconds")),
              ", ".join(f"{k} {v.get('status', '?')}" for k, v in stages.items() if isinstance(v, dict))]
    return [c.replace("|", "\\|") for c in cells]


def write_table(ctx: Context, entries: list[dict], buffers: dict, meta: dict) -> tuple[Path, Path]:
    """OUT/table.json and OUT/table.md, atomically (rewritten after every row, so a long run shows its progress); every
    path in them (the spec, the commands' files) is written relative to OUT, the tables' own directory."""
    j, m = ctx.out / "table.json", ctx.out / "table.md"
    atomic_write_json(j, relative_paths(to_jsonable({"spec": str(ctx.spec.path.resolve()), "title": ctx.spec.title,
                                                     "kind": ctx.spec.kind, **meta, "rows": entries,
                                                     "buffers": buffers}), ctx.out))
    atomic_write_text(m, relative_paths(render_markdown(ctx.spec, entries, buffers, meta), ctx.out))
    return j, m
