"""What exists already: OUT/state.json, and whether each buffer, distill output and report matches its row, so a
rerun reuses, resumes or restarts it (decided before anything runs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from dd.utils import atomic_write_json, relative_paths, sha256_json, to_jsonable
from dd.reproduce.spec import BASELINE_ROWS, Row
from dd.teachers import split_spec
from dd.reproduce.plan import (Context, distill_plan, eval_kwargs, input_present, input_specs, recipe_plan,
                               recipes_of)


class State:
    """OUT/state.json: what reproduce knows about its artifacts beyond what they record themselves (wall times, the
    run a distill directory was started for, the set each report was computed from); written atomically."""

    FORMAT = "dd-reproduce-state/1"

    def __init__(self, path: Path):
        self.path = path
        self.data = self._read() if path.is_file() else {"format": self.FORMAT, "buffers": {}, "rows": {}}

    def _read(self) -> dict:
        """The file's content, checked against the sha256 it records of itself (a damaged file is refused)."""
        fix = "delete it: reproduce then checks every artifact again (wall times already recorded are lost)"
        try:
            data = json.loads(self.path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"reproduce state '{self.path}' is not valid JSON ({e}); {fix}") from None
        recorded = data.pop("sha256", None) if isinstance(data, dict) else None
        if not isinstance(data, dict) or (recorded is not None and recorded != sha256_json(data)):
            raise ValueError(f"reproduce state '{self.path}' is damaged (its content does not match its sha256); {fix}")
        return data

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
                self.data = self._read()
            node = self.data
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
            self.data = relative_paths(to_jsonable(self.data), self.path.parent)  # commands name OUT's paths as ./...
            atomic_write_json(self.path, {**self.data, "sha256": sha256_json(self.data)})


def buffer_status(name: str, ctx: Context) -> tuple[str, str]:
    """('reuse' | 'resume' | 'run', why) for a buffer recipe, as its store answers (dd.buffers.store.recorded_status);
    a directory recorded with other settings raises, naming the differences."""
    from dd.buffers.store import recorded_status

    out = ctx.buffer_dir(name)
    status, detail = recorded_status(out, recipe_plan(name, ctx).config)
    if status == "absent":
        return "run", "not recorded yet"
    if status == "other":
        raise RuntimeError(f"buffer '{out}' was recorded with other settings than recipe '{name}' "
                           f"({'; '.join(detail)}); delete that directory to record it again, or give the recipe "
                           "another name")
    if status == "complete":
        return "reuse", f"manifest config {detail[:12]} matches"
    return "resume", f"{detail[0]} of {detail[1]} experts listed"


def set_fingerprint(path: Path) -> Optional[str]:
    """What a set file holds, as its owner digests it (dd.synset.content_digest)."""
    from dd.synset import content_digest

    return content_digest(path)


def set_meta(path: Path) -> Optional[dict]:
    """A set file's metadata, from its header alone (None without a readable set)."""
    from dd.synset import read_header

    header = read_header(path)
    return None if header is None else json.loads(header.get("meta", "{}"))




def distill_status(row: Row, ctx: Context, state: State) -> tuple[str, str]:
    """('reuse' | 'resume' | 'restart' | 'run', why) for a row's distill step, as the driver answers for its outputs
    (dd.methods.driver.run_finished, checkpoint_identity)."""
    from dd.methods.driver import CHECKPOINT, checkpoint_identity, run_finished, same_run

    recipes = recipes_of(row, ctx.spec)
    if any(buffer_status(n, ctx)[0] != "reuse" for n in recipes):  # a buffer in conflict raises, naming it
        return "run", "after its buffer/teachers are recorded"
    own = {str(ctx.buffer_dir(n)) for n in recipes}
    buffer, teachers = input_specs(row, ctx)
    external = [p for p in [buffer, *teachers] if p and split_spec(p)[0] not in own]
    if not all(input_present(p) for p in external):
        return "run", "once its input files are there"
    plan = distill_plan(row, ctx, verify="lazy")  # resolved with the row's real inputs; manifests only
    identity = plan.identity
    out = ctx.distill_dir(row)
    if run_finished(out, identity, plan.run):
        return "reuse", f"config.json identity {sha256_json(identity)[:12]} and the set's run options match"
    ckpt = out / CHECKPOINT
    if not ckpt.is_file():
        return "run", "no set or checkpoint yet"
    started = state.get("rows", row.id, "distill", "started") or {}
    saved = checkpoint_identity(ckpt)  # started records the identity as written then (input paths as they were)
    if same_run(saved, identity) and started == {"identity": sha256_json(saved), "iterations": plan.run.iterations}:
        return "resume", "its checkpoint belongs to this run"
    return "restart", "its checkpoint was made with other settings (or by another command)"


def eval_status(row: Row, ctx: Context, state: State) -> tuple[str, str]:
    """('reuse' | 'run', why) for a row's report, as the report answers for itself (dd.eval.report.report_matches)."""
    from dd.eval.report import report_matches

    synset = ctx.distill_dir(row) / "synset.safetensors"
    fingerprint = None if row.baseline else set_fingerprint(synset)
    if not row.baseline and fingerprint is None:
        return "run", "after its set is distilled"
    meta = None if row.baseline else set_meta(synset)
    plan = eval_kwargs(row, ctx, ((meta or {}).get("evaluation") or {}).get("protocol"))
    if state.get("rows", row.id, "eval", "set") != fingerprint:
        return "run", "no report of this set yet"
    protocols = plan["protocol"] if isinstance(plan["protocol"], list) else [plan["protocol"]]
    if (state.get("rows", row.id, "eval", "teachers") or []) != list(row.eval.teachers):
        return "run", "no report scored with these teachers"
    if not report_matches(ctx.eval_dir(row) / "eval.json", [to_jsonable(p.to_dict()) for p in protocols],
                          plan["archs"], plan["runs"], [BASELINE_ROWS[b] for b in plan["baselines"]], plan["lr_search"],
                          None if row.baseline else meta.get("method")):
        return "run", "no report with this protocol, architectures, runs and baselines"
    return "reuse", "eval.json was made from this set with the same protocol, architectures and runs"
