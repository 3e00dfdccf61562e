"""What exists already: OUT/state.json, and whether each buffer, distill output and report matches its row, so a
rerun reuses, resumes or restarts it (decided before anything runs)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from dd.utils import atomic_write_json, relative_paths, to_jsonable
from dd.reproduce.spec import BASELINE_ROWS, Row
from dd.reproduce.plan import Context, _buffer_argv, _input_present, distill_argv, distill_config, eval_argv, recipes_of, row_eval


# run options that only change how often a run saves or what it prints, never its result
CADENCE = {"checkpoint_minutes", "checkpoint_every", "progress", "wandb", "wandb_project"}


class State:
    """OUT/state.json: what reproduce knows about its artifacts beyond what they record themselves (wall times, the
    run a distill directory was started for, the set each report was computed from); written atomically."""

    FORMAT = "dd-reproduce-state/1"

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"format": self.FORMAT, "buffers": {}, "rows": {}}

    def get(self, *keys) -> Any:
        node = self.data
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    def put(self, value: Any, *keys) -> None:
        """Sets one entry and writes the file: re-read and rewritten under the lock state.json.lock (dd.lock, waiting
        for its holder), so the processes of `--jobs N` (each writing its own rows' entries) never drop each other's."""
        from dd.lock import OutputLock

        with OutputLock(self.path.parent, command=f"ddtk reproduce: updating {self.path.name}",
                        name=self.path.name + ".lock", wait_s=600):
            if self.path.is_file():
                self.data = json.loads(self.path.read_text())
            node = self.data
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
            self.data = relative_paths(to_jsonable(self.data), self.path.parent)  # commands name OUT's paths as ./...
            atomic_write_json(self.path, self.data)


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
    external = [p for p in [kwargs["buffer"], *kwargs["teachers"]] if p and p.rpartition("@")[0] not in own and p not in own]
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
