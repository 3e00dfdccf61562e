"""`ddtk distill --method datadam` killed after a checkpoint resumes and ends on the same set as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dd.methods.datadam import DataDAMConfig
from dd.synset import SyntheticSet

ITERATIONS = 80
METHOD_OPTIONS = {"model": "convnet-w32", "batch_real": 8, "power": 2.0}


def _command(out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "dd.cli", "distill", "--method", "datadam", "--dataset", "digits", "--ipc", "1",
            "--config", str(config), "--device", "cpu", "--seed", "3", "--out", str(out)]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _checkpoint_iteration(out: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        return int(f.metadata()["iteration"])


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    config = tmp_path / "datadam.json"
    config.write_text(json.dumps({**METHOD_OPTIONS, "run": {"iterations": ITERATIONS, "checkpoint_every": 5,
                                                            "eval_every": 0, "eval_runs": 0, "progress": False}}))
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    proc = subprocess.Popen(_command(killed, config), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (killed / "checkpoint.safetensors").exists():
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    at = _checkpoint_iteration(killed)
    assert 0 < at < ITERATIONS and not (killed / "final.safetensors").exists()

    resumed = subprocess.run(_command(killed, config), env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming datadam from iteration {at}" in resumed.stdout
    its = [json.loads(ln)["it"] for ln in (killed / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert its == list(range(ITERATIONS)), "the log must hold every iteration exactly once"

    fresh = subprocess.run(_command(whole, config), env=_env(), capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    a, b = SyntheticSet.load(killed / "synset.safetensors"), SyntheticSet.load(whole / "synset.safetensors")
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.images, b.images), f"max |diff| {(a.images - b.images).abs().max():.3g}"
    assert torch.equal(SyntheticSet.load(killed / "final.safetensors").images, a.images)  # no validation: final = chosen

    full = asdict(DataDAMConfig(**METHOD_OPTIONS))
    assert a.meta["config"] == json.loads(json.dumps(full))  # every option, defaults included
    assert a.meta["method"] == "datadam" and a.meta["run"]["iterations"] == ITERATIONS and a.meta["seed"] == 3
