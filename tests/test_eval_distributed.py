"""`ddtk eval` spread over processes: the dealing of jobs, the sharing of their results, and torchrun with 2 ranks
giving exactly one process's report."""
import json
import os
import socket
import subprocess
import sys
import threading
from collections import Counter

import pytest
import torch

import dd.eval.harness as H
from dd.distributed import ProcessGroup, deal
from dd.eval import Protocol
from dd.synset import SyntheticSet

pytestmark = pytest.mark.usefixtures("one_thread")  # digits and one_thread: tests/conftest.py


# ---- dealing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("costs", [[1.0] * 7, [5.0, 1.0, 1.0, 3.0, 0.0, 2.0, 2.0, 8.0], [0.0] * 4, []])
def test_every_job_is_dealt_exactly_once_and_alike_every_time(costs, world):
    hands = deal(costs, world)
    assert len(hands) == world
    assert sorted(j for h in hands for j in h) == list(range(len(costs)))
    assert all(h == sorted(h) for h in hands)  # each rank runs its jobs in job order
    assert deal(list(costs), world) == hands  # depends on the costs and the world alone


def test_dealing_balances_the_estimated_cost():
    assert deal([1.0] * 7, 2) == [[0, 2, 4, 6], [1, 3, 5]]  # equal costs: round-robin
    assert deal([0.0] * 4, 2) == [[0, 2], [1, 3]]  # free jobs are spread too, not piled on rank 0
    # costliest first, each to the least loaded rank: 8 | 5, 3 | 2, 2 ... loads 11 and 11
    hands = deal([5.0, 1.0, 1.0, 3.0, 0.0, 2.0, 2.0, 8.0], 2)
    loads = [sum([5.0, 1.0, 1.0, 3.0, 0.0, 2.0, 2.0, 8.0][j] for j in h) for h in hands]
    assert loads == [11.0, 11.0] and 7 in hands[0]
    assert deal([3.0], 4) == [[0], [], [], []]


def test_dealing_refuses_nonsense():
    with pytest.raises(ValueError, match="0 ranks"):
        deal([1.0], 0)
    with pytest.raises(ValueError, match=r"jobs \[1\]"):
        deal([1.0, float("nan")], 2)


def test_a_job_filled_twice_or_never_is_an_error():
    one = ProcessGroup.single()
    table = one.share(3, {0: (0.5, 1.0), 1: (float("nan"), 2.0), 2: (0.25, 3.0)}, 2)
    assert table[0].tolist() == [0.5, 1.0] and torch.isnan(table[1, 0]) and table[2].tolist() == [0.25, 3.0]
    with pytest.raises(RuntimeError, match=r"jobs \[1\] were filled by \[0\] ranks"):
        one.share(3, {0: (0.5, 1.0), 2: (0.25, 3.0)}, 2)


# ---- run_rows over ranks simulated by threads (training replaced by a table) -----------------------

class ThreadRanks:
    """`world` ProcessGroup stand-ins in threads of one process: share() sums the ranks' tables like all_reduce."""

    def __init__(self, world: int):
        self.world, self.barrier, self.tables = world, threading.Barrier(world), {}

    def group(self, rank: int):
        ranks = self

        class Group(ProcessGroup):
            def __init__(self):
                self.world, self.rank, self.local_rank, self.owned = ranks.world, rank, 0, False
                self.device = torch.device("cpu")

            def sum(self, t):
                ranks.tables[rank] = t.clone()
                ranks.barrier.wait()
                total = sum(ranks.tables.values())
                ranks.barrier.wait()
                return total

        return Group()


def fake_training(calls):
    """A deterministic stand-in for train_and_test: the accuracy is a function of what the run is; records the call."""

    def fake(images, labels, dataset, arch, protocol, *, seed, lr=None, **kw):
        calls.append((threading.current_thread().name, arch, dataset.name, seed, lr, len(images)))
        if lr is not None and lr > 1:
            raise FloatingPointError("diverged")
        x = images if torch.is_tensor(images) else images.materialize()  # the full row passes the training source
        return (hash((arch, dataset.name, seed, lr, len(images), float(x.sum()))) % 1000) / 1000

    return fake


def plans(digits):
    s = SyntheticSet.from_real(digits, 2, torch.Generator().manual_seed(0))
    return [row for arch in ("mlp", "convnet-d1") for row in (
        H.set_row(s, arch, Protocol(epochs=1), 3, dataset=digits, seed=4, lr_search=[0.01, 100.0, 0.1]),
        H.random_row(digits, 2, arch, Protocol(epochs=1), 3, seed=4, lr_search=[0.01, 0.1]),
        H.full_row(digits, arch, Protocol(epochs=1), 2, seed=4))]


@pytest.mark.parametrize("world", [2, 3])
def test_rows_spread_over_ranks_equal_one_process(digits, monkeypatch, world):
    calls = []
    monkeypatch.setattr(H, "train_and_test", fake_training(calls))
    one = H.run_rows(plans(digits), "cpu", progress=False)
    single_calls = Counter(c[1:] for c in calls)
    calls.clear()
    ranks, out = ThreadRanks(world), {}

    def rank(r):
        out[r] = H.run_rows(plans(digits), "cpu", group=ranks.group(r), progress=False)

    threads = [threading.Thread(target=rank, args=(r,), name=f"rank{r}") for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(out) == list(range(world))
    assert Counter(c[1:] for c in calls) == single_calls  # every training once, none twice, whichever rank ran it
    assert len({c[0] for c in calls}) == world  # and every rank had work
    for r in range(world):
        assert [(x.name, x.arch, x.accs, x.extra) for x in out[r]] == [(x.name, x.arch, x.accs, x.extra) for x in one]
    chosen = {(x.name, x.arch): x.extra.get("lr") for x in one}
    assert chosen[("synthetic", "mlp")] in (0.01, 0.1) and one[0].extra["lr_search"]["100"] is None
    assert all(c[4] is not None for c in calls if c[5] == 20)  # set and random runs train with the chosen lr
    assert [len(x.accs) for x in one] == [3, 3, 2] * 2


# ---- torchrun ------------------------------------------------------------------------------------

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the thread count torchrun gives each worker; same for every run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_and_two_ranks(args: list, tmp_path) -> tuple[dict, dict, str]:
    """`ddtk ARGS` in one process (--out tmp_path/one) and under torchrun with 2 gloo ranks (tmp_path/two): both
    eval.json reports and the torchrun's stdout."""
    one = subprocess.run([sys.executable, "-m", "dd.cli", *args, "--out", str(tmp_path / "one")], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
              f"--master_port={_free_port()}"]
    two = subprocess.run([*launch, "-m", "dd.cli", *args, "--out", str(tmp_path / "two")], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("one", "two"))
    return a, b, two.stdout


def test_torchrun_two_ranks_report_one_process_accuracies(digits, tmp_path):
    """Issue 12, acceptance 3: runs (and lr-search candidates, and the scores' rows) dealt to 2 gloo ranks, gathered
    on rank 0; every row's per-run accuracies equal one process's with the same seed, and only rank 0 prints and
    writes."""
    path = SyntheticSet.from_real(digits, 2, torch.Generator().manual_seed(0)).save(tmp_path / "set.safetensors")
    args = ["eval", str(path), "--models", "convnet-d1,mlp", "--runs", "4", "--dataset", "digits", "--epochs", "2",
            "--lr-search", "0.01,0.1", "--scores", "--device", "cpu", "--seed", "3"]
    a, b, stdout = one_and_two_ranks(args, tmp_path)
    # DD-Ranking's further rows (issue 18: through the same row runner) are spread over the ranks too, same numbers
    assert b["meta"]["scores"] == a["meta"]["scores"] and stdout.count("DD-Ranking scores") == 1
    assert len(a["meta"]["scores"]["mlp"]["accuracies"]["syn_plain"]["accs"]) == 4
    rows = [(r["name"], r["arch"], r["accs"], r.get("extra")) for r in a["rows"]]
    assert [(r["name"], r["arch"], r["accs"], r.get("extra")) for r in b["rows"]] == rows
    assert [(n, arch, len(accs)) for n, arch, accs, _ in rows] == [
        ("synthetic", "convnet-d1", 4), ("random-real", "convnet-d1", 4), ("full", "convnet-d1", 1),
        ("synthetic", "mlp", 4), ("random-real", "mlp", 4), ("full", "mlp", 1)]
    assert len({acc for _, _, accs, _ in rows for acc in accs}) > 4  # real trainings, not one constant
    assert (a["meta"]["processes"], b["meta"]["processes"]) == (1, 2) and b["meta"]["wall_seconds"] > 0
    assert stdout.count("| set | arch |") == 1 and stdout.count("wrote ") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["eval.json", "eval.md"]
