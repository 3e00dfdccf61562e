"""PNG plots of a run: training curves (metrics.jsonl), validation accuracy, and the cross-architecture report.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), so plotting
works headless and inside a notebook without disturbing its backend. Each figure is rendered to PNG bytes in memory
and written atomically, so an interrupted plot never leaves a truncated image behind.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from dd.utils import atomic_write_bytes

# logged by the driver for every method but not worth a curve: the iteration, its timing, the validation accuracy (it
# has its own plot); a method's own flags and draws are declared by its class (Method.bookkeeping, see run_bookkeeping)
BOOKKEEPING = frozenset({"it", "sec", "val_acc"})
INSTALL_HINT = "pip install 'dd-toolkit[plot]'"


def _matplotlib():
    """(Figure, FigureCanvasAgg), imported only when a plot is drawn: matplotlib is the optional extra `plot`."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise RuntimeError(f"plotting needs matplotlib, an optional dependency: {INSTALL_HINT}") from e
    return Figure, FigureCanvasAgg


def _integer_iterations(ax) -> None:
    """Iterations are whole numbers: no 2.5 on the x-axis of a short run."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")


def _png(fig) -> bytes:
    """The figure rendered by the Agg canvas as PNG bytes."""
    _, canvas_cls = _matplotlib()
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


# ---- reading -------------------------------------------------------------------------------------

def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl; when the log restarts (`ddtk distill --restart` appends a new run from iteration 0)
    only the last run's rows are kept, so two runs are never drawn as one curve."""
    path = Path(path)
    rows: list[dict] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: not JSON ({e.msg}); metrics.jsonl holds one JSON object per line") from None
        if not isinstance(row, dict) or "it" not in row:
            raise ValueError(f"{path}, line {n}: expected a JSON object with an 'it' field, got {line[:80]!r}")
        if rows and row["it"] < rows[-1]["it"]:
            rows = []  # a restarted run: start over
        rows.append(row)
    return rows


def scalar_series(rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every numeric field -> (iterations, values) in log order, finite values only."""
    acc: dict[str, tuple[list, list]] = {}
    for row in rows:
        for k, v in row.items():
            if k == "it" or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            its, vals = acc.setdefault(k, ([], []))
            its.append(row["it"])
            vals.append(float(v))
    return {k: (np.asarray(i, dtype=float), np.asarray(v, dtype=float)) for k, (i, v) in acc.items()}


def curve_keys(series: dict[str, tuple[np.ndarray, np.ndarray]], bookkeeping: frozenset = frozenset()) -> list[str]:
    """The fields worth a panel, `loss` first: not bookkeeping (the driver's, and the method's `bookkeeping`), not
    the one-point final test accuracies (`test_acc/...`), at least two points, not constant, and not a copy of a
    field already kept (a loss whose only active term is the total)."""
    skip = BOOKKEEPING | bookkeeping
    candidates = [k for k, (its, vals) in series.items()
                  if k not in skip and not k.startswith("test_acc/") and len(vals) >= 2 and np.ptp(vals) > 0]
    keep: list[str] = []
    for k in sorted(candidates, key=lambda k: (k != "loss", not k.startswith("loss"), k)):
        its, vals = series[k]
        if not any(np.array_equal(its, series[c][0]) and np.array_equal(vals, series[c][1]) for c in keep):
            keep.append(k)
    return keep


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` points; near the ends it averages the points there are (no padding),
    so the smoothed line starts and ends on the data's own level."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < 2:
        return values.copy()
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(values))
    return (csum[hi] - csum[lo]) / (hi - lo)


def smoothing_window(n: int) -> int:
    """An odd window of about 5% of the points (at least 3 once there are 6 points, at most 101)."""
    if n < 6:
        return 1
    return min(101, max(3, n // 20)) | 1


def _run_record(run_dir: Path) -> dict:
    """The run's config.json (its identity, written by `ddtk distill`: method, dataset, ipc, ...), else {}."""
    cfg = run_dir / "config.json"
    try:
        record = json.loads(cfg.read_text()) if cfg.is_file() else {}
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def run_title(run_dir: Path) -> str:
    """'method · dataset · IPC n' from the run's config.json (written by `ddtk distill`), else the directory name."""
    ident = _run_record(run_dir)
    try:
        return f"{ident['method']} · {ident['dataset']} · IPC {ident['ipc']}"
    except KeyError:
        return run_dir.name


def run_bookkeeping(run_dir: Path) -> frozenset:
    """The metrics the run's method declares as bookkeeping (Method.bookkeeping), its name read from the run's
    config.json (a method defined outside dd/ is imported from the module it records); empty when the directory
    records no method or the method cannot be found."""
    record = _run_record(run_dir)
    name, module = record.get("method"), record.get("method_module")
    if not isinstance(name, str):
        return frozenset()
    from dd.methods import METHODS
    from dd.methods.driver import method_class

    if name not in METHODS and isinstance(module, str):
        try:
            method_class(f"{module}:{name}")  # importing the module registers the method
        except KeyError:
            return frozenset()
    return frozenset(METHODS.get(name).bookkeeping) if name in METHODS else frozenset()


# ---- figures -------------------------------------------------------------------------------------

def plot_curves(rows: list[dict], title: str = "", bookkeeping: frozenset = frozenset()) -> Optional[bytes]:
    """One panel per logged scalar worth seeing (loss first, then per-term losses, lr, ...; see curve_keys), raw
    points faint with a smoothed line; a log y-axis where a positive series spans more than 50x. None when nothing varies."""
    series = scalar_series(rows)
    keys = curve_keys(series, bookkeeping)
    if not keys:
        return None
    figure_cls, _ = _matplotlib()
    cols = 1 if len(keys) == 1 else 2
    nrows = math.ceil(len(keys) / cols)
    fig = figure_cls(figsize=(6.0 * cols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        its, vals = series[key]
        window = smoothing_window(len(vals))
        ax.plot(its, vals, ".", ms=4, alpha=0.5, color="tab:blue", label="raw")
        ax.plot(its, smooth(vals, window), "-", lw=1.8, color="tab:red",
                label=f"moving average ({window})" if window > 1 else "line")
        if vals.min() > 0 and vals.max() / vals.min() > 50:
            ax.set_yscale("log")
        ax.set_title(key)
        _integer_iterations(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"training curves — {title}" if title else "training curves")
    return _png(fig)


def plot_val_acc(rows: list[dict], title: str = "") -> Optional[bytes]:
    """Validation accuracy (%) against iteration with the best point marked; None when no `val_acc` was logged."""
    its, vals = scalar_series(rows).get("val_acc", (np.array([]), np.array([])))
    if len(vals) == 0:
        return None
    figure_cls, _ = _matplotlib()
    fig = figure_cls(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    pct = 100 * vals
    ax.plot(its, pct, "o-", ms=4, color="tab:green", label="validation accuracy")
    best = int(np.argmax(pct))
    ax.plot(its[best], pct[best], "*", ms=14, color="tab:orange", label=f"best {pct[best]:.2f}% (it {its[best]:g})")
    _integer_iterations(ax)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"validation accuracy — {title}" if title else "validation accuracy")
    return _png(fig)


def _differs(rows: list[dict], first: dict) -> str:
    """' (30 epochs, 1 run)' when a row name's epochs or run count differ from the title's (the first row's)."""
    notes = []
    epochs = sorted({r["protocol"].get("epochs") for r in rows} - {None})
    if epochs and epochs != [first["protocol"].get("epochs")]:
        notes.append(f"{', '.join(map(str, epochs))} epochs")
    runs = sorted({len(r["accs"]) for r in rows})
    if runs != [len(first["accs"])]:
        notes.append(f"{', '.join(map(str, runs))} run{'s' if runs != [1] else ''}")
    return f" ({', '.join(notes)})" if notes else ""


def plot_cross_arch(report: dict, title: str = "") -> bytes:
    """A grouped bar chart of an eval.json: one group per architecture, one bar per row name (the set, random-real,
    full) at its mean test accuracy with the std as error bars; the protocol in the title, and the chosen lr on the
    bars when the report searched it (`ddtk eval --lr-search`)."""
    rows = report.get("rows") or []
    if not rows:
        raise ValueError("the report has no rows to plot")
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    by = {(r["name"], r["arch"]): r for r in rows}
    figure_cls, _ = _matplotlib()
    fig = figure_cls(figsize=(max(6.0, 1.2 + len(archs) * (0.55 * len(names) + 0.6)), 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(names)
    x = np.arange(len(archs))
    epochs0 = rows[0]["protocol"].get("epochs")
    top = 100.0
    for j, name in enumerate(names):
        present = [i for i, a in enumerate(archs) if (name, a) in by]
        sel = [by[(name, archs[i])] for i in present]
        means = np.array([100 * r["mean"] for r in sel])
        stds = np.array([100 * r["std"] for r in sel])
        label = name + _differs(sel, rows[0])
        pos = x[present] - 0.4 + width * (j + 0.5)
        bars = ax.bar(pos, means, width * 0.92, yerr=stds, capsize=3, label=label)
        for b, r, m, s in zip(bars, sel, means, stds):
            extra = r.get("extra") or {}
            text = f"{m:.1f}" + (f"\nlr {extra['lr']:g}" if "lr_search" in extra else "")
            ax.text(b.get_x() + b.get_width() / 2, m + s + 1, text, ha="center", va="bottom", fontsize=7)
        top = max(top, float((means + stds).max()) + 14)
    ax.set_xticks(x, archs)
    ax.set_ylim(0, top)
    ax.set_ylabel("test accuracy (%), mean ± std")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=min(len(names), 4), frameon=False)
    meta = report.get("meta") or {}
    protocols = sorted({r["protocol"].get("name", "?") for r in rows})
    ipcs = sorted({r["ipc"] for r in rows if r.get("ipc") is not None})
    runs0 = len(rows[0]["accs"])
    parts = [meta.get("dataset") or rows[0].get("dataset"), f"IPC {', '.join(map(str, ipcs))}" if ipcs else None,
             f"protocol {', '.join(protocols)}" + (f", {epochs0} epochs" if epochs0 else ""),
             f"{runs0} run{'s' if runs0 != 1 else ''}"]
    head = " · ".join(p for p in parts if p)
    ax.set_title(f"{title}\n{head}" if title else f"cross-architecture evaluation\n{head}", fontsize=10)
    return _png(fig)


# ---- the whole job -------------------------------------------------------------------------------

REPORT_ROW_FIELDS = ("name", "arch", "accs", "mean", "std", "protocol")


def _check_report(data, source: Path) -> None:
    """An eval.json must hold rows with the fields the bar chart reads; otherwise say which file and which field."""
    if not isinstance(data, dict) or not data.get("rows"):
        raise ValueError(f"{source} has no 'rows'; expected a report written by `ddtk eval` or `ddtk distill`")
    for n, row in enumerate(data["rows"]):
        missing = [f for f in REPORT_ROW_FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            raise ValueError(f"{source}: row {n} lacks {', '.join(missing)}; expected a report written by `ddtk eval` "
                             "or `ddtk distill`")

def plot_run(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """Writes every plot the inputs allow and returns the paths written.

    `path` is a `ddtk distill` run directory (metrics.jsonl -> loss.png and, with validation, val_acc.png;
    eval.json -> cross_arch.png), or one eval.json / metrics.jsonl file. `out` defaults to the directory read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"'{path}' does not exist; give a `ddtk distill --out` directory or an eval.json")
    if path.is_dir():
        metrics, report, base = path / "metrics.jsonl", path / "eval.json", path
    elif path.suffix == ".jsonl":
        metrics, report, base = path, None, path.parent
    else:
        metrics, report, base = None, path, path.parent
    metrics = metrics if metrics is not None and metrics.is_file() else None
    report = report if report is not None and report.is_file() else None
    if metrics is None and report is None:
        raise FileNotFoundError(f"'{path}' holds neither metrics.jsonl nor eval.json; give the --out directory of "
                                "`ddtk distill` (or of `ddtk eval`), or an eval.json file")
    out_dir = Path(out) if out else base
    title = run_title(base)
    figures: list[tuple[str, Optional[bytes]]] = []
    if metrics is not None:
        rows = read_metrics(metrics)
        figures += [("loss.png", plot_curves(rows, title, run_bookkeeping(base))), ("val_acc.png", plot_val_acc(rows, title))]
    if report is not None:
        try:
            data = json.loads(report.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{report} is not JSON ({e.msg}); expected a report written by `ddtk eval` or `ddtk distill`") from None
        _check_report(data, report)
        name = "cross_arch.png" if report.stem == "eval" else f"{report.stem}_cross_arch.png"
        figures.append((name, plot_cross_arch(data)))
    written = []
    for name, png in figures:
        if png is not None:
            atomic_write_bytes(out_dir / name, png)
            written.append(out_dir / name)
    if not written:
        raise ValueError(f"nothing to plot in '{path}': metrics.jsonl has no scalar that changes over two or more "
                         "iterations and there is no eval.json")
    return written
