"""Identical runs write byte-identical files (compare artifacts by hash), and a killed writer's temporary files are
removed when the run is taken up again.

Durations are recorded by design in the logs and reports (eval.json's per-row `seconds`, `wall_seconds` and the budget's
`made_seconds`, eval.md's 'made in (s)' column, metrics.jsonl's `sec`); those files are compared with the durations left
out, every other file byte for byte.
"""
import hashlib
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dd.cli import main
from dd.utils import safetensors_bytes
from helpers import mlp_teacher_file

pytestmark = pytest.mark.usefixtures("one_thread")
DURATIONS = {"seconds", "wall_seconds", "sec", "made_seconds"}  # made_seconds: the budget's wall time


def _without_durations(obj):
    if isinstance(obj, dict):
        return {k: _without_durations(v) for k, v in obj.items() if k not in DURATIONS}
    if isinstance(obj, list):
        return [_without_durations(v) for v in obj]
    return obj


def _fingerprints(root: Path) -> dict:
    """relative path -> sha256 of the bytes (of the content without durations for eval.json and metrics.jsonl)."""
    out = {}
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        data = p.read_bytes()
        if p.name == "eval.json":
            data = json.dumps(_without_durations(json.loads(data))).encode()
        elif p.name == "eval.md":  # the table's last column is the budget's wall time ('made in (s)')
            data = b"\n".join(re.sub(rb"\| [0-9.]+ \|$", b"| |", ln) for ln in data.splitlines())
        elif p.name == "metrics.jsonl":
            data = b"".join(json.dumps(_without_durations(json.loads(ln))).encode() for ln in data.splitlines())
        out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def test_two_identical_distill_and_relabel_runs_write_the_same_bytes(tmp_path, digits):
    teacher = mlp_teacher_file(tmp_path, digits)[1]
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"init": "noise", "batch_real": 16, "run": {"val_epochs": 2, "checkpoint_every": 2}}))
    prints = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--iterations", "4",
                     "--eval-every", "2", "--eval-runs", "1", "--eval-epochs", "2", "--eval-models", "mlp",
                     "--no-full-baseline", "--config", str(config), "--device", "cpu", "--out", str(out / "run")]) == 0
        assert main(["relabel", str(out / "run" / "synset.safetensors"), "--protocol", "teacher", "--teacher",
                     str(teacher), "--epochs", "2", "--batch-size", "5", "--topk", "3", "--device", "cpu",
                     "--out", str(out / "labels")]) == 0
        prints.append(_fingerprints(out))
    a, b = prints
    assert {"run/synset.safetensors", "run/checkpoint.safetensors", "run/best.safetensors", "run/config.json",
            "run/eval.json", "run/metrics.jsonl", "labels/manifest.json", "labels/epoch_0001.safetensors"} <= set(a)
    assert a == b, [k for k in a if a[k] != b.get(k)]
    assert (tmp_path / "a" / "run" / "synset.safetensors").read_bytes() == \
        (tmp_path / "b" / "run" / "synset.safetensors").read_bytes()


def test_safetensors_bytes_do_not_depend_on_the_metadata_order(tmp_path):
    t = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(5, dtype=torch.int16)}
    keys = [f"k{i}" for i in range(12)]
    one = safetensors_bytes(t, {k: k.upper() + "é" for k in keys})
    other = safetensors_bytes(t, {k: k.upper() + "é" for k in reversed(keys)})
    assert one == other
    path = tmp_path / "x.safetensors"
    path.write_bytes(one)
    with safe_open(str(path), framework="pt") as f:  # still a valid file with the same content
        assert f.metadata() == {k: k.upper() + "é" for k in keys}
        assert torch.equal(f.get_tensor("b"), t["b"]) and torch.equal(f.get_tensor("a"), t["a"])
    assert int.from_bytes(one[:8], "little") % 8 == 0  # the data stays 8-byte aligned


def _killed_writer(paths: list) -> list:
    """One process killed (SIGKILL) inside atomic_write_bytes for each of `paths` (a thread each), after the temporary
    files are written and before the renames: returns the temporary files it leaves behind."""
    code = ("import os, threading, time\nimport dd.utils as u\nos.replace = lambda *a: time.sleep(600)\n"
            f"for p in {[str(p) for p in paths]!r}:\n"
            "    threading.Thread(target=u.atomic_write_bytes, args=(p, b'x' * 1000), daemon=True).start()\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ})
    pattern = [(Path(p).parent, f".{Path(p).name}.*.tmp") for p in paths]
    deadline = time.monotonic() + 60
    while not all(list(d.glob(g)) for d, g in pattern) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    temps = [t for d, g in pattern for t in d.glob(g)]
    assert len(temps) == len(paths) and not any(Path(p).exists() for p in paths)
    return temps


def test_a_killed_writers_temporary_files_are_removed_when_the_run_resumes(tmp_path, digits):
    out, labels = tmp_path / "run", tmp_path / "labels"
    for d in (out / "grids", labels):
        d.mkdir(parents=True)
    stale = _killed_writer([out / "synset.safetensors", out / "grids" / "it000002.png",
                            labels / "epoch_0000.safetensors"])
    assert main(["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--iterations", "1",
                 "--eval-every", "0", "--eval-runs", "0", "--set", "init=noise", "--set", "batch_real=16",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert not any(p.exists() for p in stale[:2]) and not list(out.rglob("*.tmp"))
    assert stale[2].exists()  # another directory: its own run removes it
    teacher = mlp_teacher_file(tmp_path, digits)[1]
    assert main(["relabel", str(out / "synset.safetensors"), "--protocol", "teacher", "--teacher", str(teacher),
                 "--epochs", "1", "--batch-size", "5", "--device", "cpu", "--out", str(labels)]) == 0
    assert not stale[2].exists() and not list(labels.glob("*.tmp"))
