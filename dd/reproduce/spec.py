"""A reproduce spec (experiments/tables/*.json): its schema, loading and checks (rows, recipes, references).

Everything here reads only the spec and the config files it names; nothing is run or resolved against data."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dd.teachers import split_spec


def _baseline_rows() -> dict:
    """Row methods that only evaluate (dd.eval.baselines.BASELINES: random and full data, the coreset selections) ->
    the names their report rows carry."""
    from dd.eval.baselines import BASELINES

    return {b: {"random": "random-real"}.get(b, b) for b in BASELINES}


BASELINE_ROWS = _baseline_rows()


SPEC_KEYS = {"title", "kind", "notes", "seed", "data_root", "eval", "buffers", "rows"}


ROW_KEYS = {"id", "method", "dataset", "ipc", "config", "options", "run", "buffer", "teachers", "teacher_model",
            "eval", "paper", "recorded", "seed", "notes"}


EVAL_KEYS = {"protocol", "protocols", "archs", "epochs", "runs", "options", "baselines", "lr_search", "teachers"}


KINDS = ("bench", "paper")


@dataclass(frozen=True)
class EvalSpec:
    """How a row is scored: `ddtk eval` options (None/empty: the protocol the set records, the command's defaults).
    `protocols`: several label regimes in one report (`ddtk eval --protocols`), else `protocol` alone; `teachers`:
    the teacher(s) the teacher protocol distils from (recipe names or paths; empty: the one the set records)."""

    protocol: Optional[str] = None
    archs: tuple[str, ...] = ()
    epochs: Optional[int] = None
    runs: int = 5
    options: dict = field(default_factory=dict)
    baselines: tuple[str, ...] = ()
    lr_search: tuple[float, ...] = ()
    protocols: tuple[str, ...] = ()
    teachers: tuple[str, ...] = ()

    @property
    def protocol_names(self) -> list:
        """The protocols the row's report holds, in order ([None]: the one the set records)."""
        return list(self.protocols) or [self.protocol]


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
        """A random-real, coreset or full-data row: evaluated only, nothing distilled."""
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
    check_keys(data, SPEC_KEYS, str(path))
    kind = data.get("kind", "paper")
    if kind not in KINDS:
        raise SpecError(f"{path}: kind must be one of {KINDS}, got {kind!r}")
    buffers = data.get("buffers", {})
    from dd.reproduce.plan import buffer_plan

    for name, recipe in buffers.items():
        buffer_plan(recipe, Path("OUT") / name, where=f"{path}: buffer recipe '{name}'")  # checked, or says why not
    defaults = data.get("eval", {})
    check_keys(defaults, EVAL_KEYS, f"{path}: eval")
    rows = [_row(d, i, path, defaults, int(data.get("seed", 0)), kind, buffers) for i, d in enumerate(data.get("rows", []))]
    if not rows:
        raise SpecError(f"{path} names no rows")
    ids = [r.id for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SpecError(f"{path}: row ids must be unique; repeated: {', '.join(dup)}")
    return Spec(path, data.get("title", path.stem), kind, data.get("notes", ""), data.get("data_root"), buffers, rows)


def check_keys(d: dict, known: set, where: str) -> None:
    if not isinstance(d, dict):
        raise SpecError(f"{where} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")


def _row(d: dict, index: int, spec_path: Path, eval_defaults: dict, seed: int, kind: str, buffers: dict) -> Row:
    """One spec row, checked (see load_spec)."""
    label = d.get("id", "no id") if isinstance(d, dict) else repr(d)
    where = f"{spec_path}: row {index + 1} ({label})"
    check_keys(d, ROW_KEYS, where)
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
    ev = _eval_spec(d.get("eval", {}), eval_defaults, base, where)
    for name in [d.get("buffer")] + [split_spec(t)[0] for t in list(d.get("teachers", [])) + list(ev.teachers)]:
        if name and name not in buffers and _looks_like_recipe(name):
            raise SpecError(f"{where}: '{name}' is neither a buffer recipe of this spec ({', '.join(buffers) or 'none'}) "
                            "nor a path")
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
    check_keys(row_eval, EVAL_KEYS, f"{where}: eval")
    run = base.get("run", {})
    from_config = {k: v for k, v in (("archs", run.get("eval_models")), ("epochs", run.get("eval_epochs")),
                                     ("runs", run.get("eval_runs")), ("options", run.get("eval_options")))
                   if v is not None}
    merged = {**defaults, **from_config, **row_eval}
    if "protocol" in row_eval and "protocols" not in row_eval:
        merged.pop("protocols", None)  # the row's one protocol replaces the spec's list
    if "protocols" in row_eval and "protocol" not in row_eval:
        merged.pop("protocol", None)
    if merged.get("protocol") is not None and merged.get("protocols"):
        raise SpecError(f"{where}: eval gives both 'protocol' and 'protocols'; give one (a list for several regimes)")
    protocols = merged.get("protocols", [])
    if not isinstance(protocols, list) or not all(isinstance(p, str) and p for p in protocols) \
            or len(set(protocols)) != len(protocols):
        raise SpecError(f"{where}: eval 'protocols' must be a list of distinct protocol names, got {protocols!r}")
    teachers = merged.get("teachers", [])
    if not isinstance(teachers, list) or not all(isinstance(t, str) and t for t in teachers):
        raise SpecError(f"{where}: eval 'teachers' must be a list of teacher specs (recipe names or paths), got "
                        f"{teachers!r}")
    bad = [b for b in merged.get("baselines", []) if b not in BASELINE_ROWS]
    if bad:
        raise SpecError(f"{where}: eval baselines must be among {sorted(BASELINE_ROWS)}, got {bad}")
    return EvalSpec(merged.get("protocol"), tuple(merged.get("archs", ())), merged.get("epochs"),
                    int(merged.get("runs", 5)), dict(merged.get("options", {})), tuple(merged.get("baselines", ())),
                    tuple(float(v) for v in merged.get("lr_search", ())), tuple(protocols), tuple(teachers))


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
