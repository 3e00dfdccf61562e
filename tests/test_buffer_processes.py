"""The recorder as a process: SIGKILL + rerun and torchrun with 2 ranks both give the uninterrupted run's bytes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["buffer", "--dataset", "digits", "--model", "convnet-d1", "--model-option", "width=8", "--experts", "3",
        "--epochs", "1", "--batch", "64", "--lr", "0.1", "--device", "cpu", "--seed", "7", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the thread count torchrun gives each worker; same for every run


def _dd(out: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dd.cli", *ARGS, "--out", str(out)], env=ENV, capture_output=True,
                          text=True, timeout=timeout, check=True)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "buf"
    _dd(out)
    files = _files(out)
    assert sorted(files) == ["expert_00000.safetensors", "expert_00001.safetensors", "expert_00002.safetensors",
                             "manifest.json"]
    return files


def test_sigkill_then_rerun_is_byte_identical(reference, tmp_path):
    """Acceptance 2."""
    out = tmp_path / "buf"
    proc = subprocess.Popen([sys.executable, "-m", "dd.cli", *ARGS, "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "expert_00000.safetensors").exists():
            assert proc.poll() is None, "the recorder exited before writing its first expert"
            assert time.monotonic() < deadline, "no expert written within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False  # it really was interrupted
    assert not (out / "expert_00002.safetensors").exists()
    rerun = _dd(out)
    assert "expert 0: already recorded" in rerun.stdout
    assert _files(out) == reference


def test_torchrun_two_ranks_gives_the_single_process_files(reference, tmp_path):
    """Acceptance 4: experts dealt to 2 gloo ranks, rank 0 writes the manifest; same bytes as one process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "buf"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "dd.cli", *ARGS, "--out", str(out)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert _files(out) == reference
