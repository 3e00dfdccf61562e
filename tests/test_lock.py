"""One writer per output directory (dd.lock): refusals name the holder, stale locks are taken over, torchrun ranks
share rank 0's lock, and the commands that write a directory (distill, buffer, relabel) all take it."""
import errno
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dd import lock as lockmod
from dd.cli import main
from dd.lock import LOCK_NAME, OutputLock, OutputLocked, output_lock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
HOST = socket.gethostname()


# -- the helper, in process ------------------------------------------------------------------------------------------

def test_holder_writes_its_details_and_a_clean_release_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with output_lock(out, command="ddtk distill --out run") as held:
        assert held.mode == "flock"
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == HOST and info["command"] == "ddtk distill --out run"
        assert info["started"]
    assert not out.exists()  # the lock made the directory and nothing was written there

    out.mkdir()
    (out / "keep.txt").write_text("x")
    with output_lock(out):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_second_holder_in_the_same_process_is_refused(tmp_path):
    with output_lock(tmp_path):
        with pytest.raises(OutputLocked) as e:
            OutputLock(tmp_path).acquire()
    msg = str(e.value)
    assert f"is being written by process {os.getpid()} on {HOST}" in msg
    assert "wait for it or use another --out" in msg
    OutputLock(tmp_path).acquire().release()  # free again once released


def _try_lock(path: str, queue) -> None:
    try:
        OutputLock(path).acquire()
        queue.put("acquired")
    except OutputLocked as e:
        queue.put(str(e))


def _lock_and_die(path: str) -> None:
    OutputLock(path).acquire()
    os._exit(0)  # no release: like a SIGKILLed job, the lock file stays and the kernel drops the flock


def test_child_process_is_refused_while_the_parent_holds(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with output_lock(tmp_path):
        child = ctx.Process(target=_try_lock, args=(str(tmp_path), queue))
        child.start()
        answer = queue.get(timeout=60)
        child.join(timeout=60)
    assert answer.startswith(f"'{tmp_path}' is being written by process {os.getpid()} on {HOST}")


def test_lock_of_a_dead_process_is_taken_over_and_keeps_the_files(tmp_path):
    (tmp_path / "checkpoint.safetensors").write_bytes(b"state")
    child = multiprocessing.get_context("fork").Process(target=_lock_and_die, args=(str(tmp_path),))
    child.start()
    child.join(timeout=60)
    stale = json.loads((tmp_path / LOCK_NAME).read_text())
    assert stale["pid"] == child.pid
    with output_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == b"state"


def test_release_leaves_a_lock_file_that_is_no_longer_its_own(tmp_path):
    held = OutputLock(tmp_path).acquire()
    os.rename(tmp_path / LOCK_NAME, tmp_path / "old")
    (tmp_path / LOCK_NAME).write_text("someone else's")
    held.release()
    assert (tmp_path / LOCK_NAME).read_text() == "someone else's"


def _count_under_lock(path: str, times: int) -> None:
    """Read-modify-write of a counter file under a waiting lock on it (what `ddtk reproduce` does to state.json)."""
    counter = Path(path) / "count"
    for _ in range(times):
        with OutputLock(path, name="count.lock", wait_s=60):
            n = int(counter.read_text())
            time.sleep(0.001)  # widen the window a lost update would need
            counter.write_text(str(n + 1))


def test_a_waiting_lock_serializes_read_modify_write_across_processes(tmp_path):
    (tmp_path / "count").write_text("0")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_count_under_lock, args=(str(tmp_path), 25)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert (tmp_path / "count").read_text() == "75"  # no update lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["count"]  # every lock file released


def test_a_waiting_lock_waits_for_the_holder_then_refuses_after_wait_s(tmp_path):
    held = OutputLock(tmp_path, name="state.lock").acquire()
    assert OutputLock(tmp_path).acquire().release() is None  # another name in the same directory: another lock
    t0 = time.monotonic()
    with pytest.raises(OutputLocked, match=f"process {os.getpid()}"):
        OutputLock(tmp_path, name="state.lock", wait_s=0.3).acquire()
    assert time.monotonic() - t0 >= 0.3
    held.release()
    OutputLock(tmp_path, name="state.lock", wait_s=0.3).acquire().release()


def test_an_output_path_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(RuntimeError, match="cannot lock the output directory .*make it a writable directory"):
        OutputLock(tmp_path / "f").acquire()


# -- torchrun ranks: only rank 0 locks, the others learn the outcome ---------------------------------------------------

class _FakeGroup:
    """A ProcessGroup stand-in: `others` is what the other ranks add to this rank's contribution in sum()."""

    def __init__(self, rank: int, world: int, others: float = 0.0):
        self.rank, self.world, self.others, self.calls = rank, world, others, []

    def sum(self, t):
        self.calls.append(("sum", float(t[0])))
        return t + self.others

    def barrier(self):
        self.calls.append(("barrier",))


def test_only_rank_0_takes_the_lock(tmp_path):
    rank1 = _FakeGroup(rank=1, world=2, others=1.0)  # rank 0 got it
    with output_lock(tmp_path / "run", rank1) as held:
        assert held is None and not (tmp_path / "run").exists()
    assert rank1.calls == [("sum", 0.0), ("barrier",)]

    rank0 = _FakeGroup(rank=0, world=2)
    with output_lock(tmp_path / "run", rank0) as held:
        assert held.held and (tmp_path / "run" / LOCK_NAME).exists()
    assert rank0.calls == [("sum", 1.0), ("barrier",)]


def test_a_refused_rank_0_still_tells_the_other_ranks(tmp_path):
    with output_lock(tmp_path):
        rank0 = _FakeGroup(rank=0, world=2)
        with pytest.raises(OutputLocked, match=f"process {os.getpid()} on"):
            with output_lock(tmp_path, rank0):
                pass
        assert rank0.calls == [("sum", 0.0)]  # the collective the other ranks wait in
    with pytest.raises(OutputLocked, match="rank 0 could not lock"):
        with output_lock(tmp_path, _FakeGroup(rank=1, world=2, others=0.0)):
            pass


# -- filesystems without flock: the exclusive-create fallback --------------------------------------------------------

@pytest.fixture
def no_flock(monkeypatch):
    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lockmod.fcntl, "flock", refuse)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_fallback_creator_holds_and_others_are_refused(tmp_path, no_flock):
    with output_lock(tmp_path) as held:
        assert held.mode == "exclusive"
        with pytest.raises(OutputLocked, match=f"process {os.getpid()} on {HOST}"):
            OutputLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()


def test_fallback_takes_over_a_dead_process_on_this_host(tmp_path, no_flock):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": HOST, "started": "x", "command": "dd"}))
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with output_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_fallback_refuses_what_it_cannot_check(tmp_path, no_flock):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x", "command": "dd"}))
    with pytest.raises(OutputLocked, match="process 1 on elsewhere.*no flock.*delete"):
        OutputLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(OutputLocked, match="another process.*no flock.*delete"):
        OutputLock(tmp_path).acquire()


# -- the commands: a second writer on a locked directory is refused --------------------------------------------------

def _distill_cmd(out: Path, config: Path, iterations: int) -> list[str]:
    return [sys.executable, "-m", "dd.cli", "distill", "--method", "dm", "--dataset", "digits", "--ipc", "1",
            "--iterations", str(iterations), "--eval-every", "0", "--eval-runs", "0", "--device", "cpu",
            "--config", str(config), "--out", str(out)]


def _config(tmp_path: Path, **run) -> Path:
    path = tmp_path / "dm.json"
    path.write_text(json.dumps({"model": "convnet-d1", "batch_real": 8, "dsa": False,
                                "run": {"progress": False, **run}}))
    return path


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, f"no {path.name} within {timeout} s"
        time.sleep(0.01)


def test_second_distill_on_a_running_out_is_refused(tmp_path):
    out, config = tmp_path / "run", _config(tmp_path)
    first = subprocess.Popen(_distill_cmd(out, config, 100000), env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        _wait_for(out / LOCK_NAME, first)
        second = subprocess.run(_distill_cmd(out, config, 100000), env=ENV, capture_output=True, text=True,
                                timeout=120)
        assert first.poll() is None, "the first run must still be running"
    finally:
        first.kill()
        first.wait()
        first.stderr.close()
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"'{out}' is being written by process {first.pid} on {HOST}" in second.stderr
    assert "python -m dd.cli distill --method dm" in second.stderr and "use another --out" in second.stderr


def _checkpoint_iteration(out: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        return int(f.metadata()["iteration"])


def test_killed_distill_leaves_a_stale_lock_that_the_rerun_takes_over(tmp_path):
    iterations = 200
    out, config = tmp_path / "run", _config(tmp_path, checkpoint_every=5)
    first = subprocess.Popen(_distill_cmd(out, config, iterations), env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        _wait_for(out / "checkpoint.safetensors", first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stderr.close()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid  # left behind by the killed run
    at = _checkpoint_iteration(out)
    assert 0 < at < iterations and not (out / "final.safetensors").exists()

    rerun = subprocess.run(_distill_cmd(out, config, iterations), env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming dm from iteration {at}" in rerun.stdout
    assert _checkpoint_iteration(out) == iterations and (out / "synset.safetensors").exists()
    its = [json.loads(ln)["it"] for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert its == list(range(iterations))
    assert not (out / LOCK_NAME).exists()


@pytest.fixture
def held_elsewhere(tmp_path):
    """A directory locked by another process (a Python holding dd.lock until its stdin closes); yields (dir, pid)."""
    out = tmp_path / "held"
    code = ("import sys; from dd.lock import OutputLock; OutputLock(sys.argv[1], 'dd holder').acquire(); "
            "print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield out, holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
        holder.stdout.close()


def test_buffer_refuses_a_locked_directory(held_elsewhere, capsys):
    out, pid = held_elsewhere
    rc = main(["buffer", "--dataset", "digits", "--model", "convnet-d1", "--experts", "1", "--epochs", "1",
               "--device", "cpu", "--quiet", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"ddtk buffer: error: '{out}' is being written by process {pid} on {HOST}" in err
    assert "command dd holder" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written


def test_relabel_refuses_a_locked_directory(held_elsewhere):
    from dd.eval import get_protocol
    from dd.eval.labels import relabel

    out, pid = held_elsewhere
    with pytest.raises(OutputLocked, match=f"process {pid} on {HOST}"):
        relabel(torch.zeros(2, 1, 8, 8), torch.nn.Flatten(), get_protocol("teacher"), 1, out)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_distill_api_refuses_a_locked_directory(held_elsewhere):
    from dd.methods.driver import distill

    out, pid = held_elsewhere
    with pytest.raises(OutputLocked, match=f"process {pid} on {HOST}"):
        distill("dm", "digits", 1, out=out, config={"model": "convnet-d1"}, run={"iterations": 1, "eval_runs": 0},
                device="cpu")


def test_torchrun_ranks_all_stop_when_rank_0_is_refused(held_elsewhere):
    """Rank 0 is refused; rank 1 learns it from the collective instead of waiting in a barrier forever."""
    out, pid = held_elsewhere
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "dd.cli", "buffer", "--dataset", "digits", "--model", "convnet-d1",
           "--experts", "2", "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(out)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    both = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"ddtk buffer: error: '{out}' is being written by process {pid} on {HOST}" in both
    assert f"ddtk buffer: error: rank 0 could not lock '{out}'" in both
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
