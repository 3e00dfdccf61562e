"""`ddtk eval --lr-search`: each architecture's lr is chosen on a validation split carved from the training data, for the
set and the random baseline alike, never on the test split; the choice is reported in the row and in eval.json."""
import json

import pytest
import torch

import dd.eval.harness as H
from dd.cli import main
from dd.data.base import stratified_split
from dd.eval import Protocol, accuracy, build_report, evaluate, evaluate_random, search_lr, train_model
from dd.models import build_model
from dd.synset import SyntheticSet


pytestmark = pytest.mark.usefixtures("one_thread")




def tiny(epochs, **kw):
    return Protocol(epochs=epochs, **kw)


def digits_set(digits, ipc=2, lr=None):
    s = SyntheticSet.from_real(digits, ipc, torch.Generator().manual_seed(0))
    s.lr = lr
    return s


def validation_by_hand(ds):
    """The held-out training images the search must score on: 10% of the training split, stratified, seed 0."""
    _, val_idx = stratified_split(ds.train_labels.numpy(), 0.1, 0)
    return ds.train_images[val_idx], ds.train_labels[val_idx]


class SplitTrap:
    """Stands in for a test tensor: answers the shape questions a dataset asks of its splits, raises on any read."""

    def __init__(self, like: torch.Tensor):
        self.shape, self.ndim, self._n = like.shape, like.ndim, len(like)

    def __len__(self):
        return self._n

    def __getitem__(self, item):
        raise AssertionError("the lr search read the test split")

    def __getattr__(self, name):
        raise AssertionError(f"the lr search read the test split (.{name})")


def trapped(ds):
    """A copy of `ds` whose test split raises on access."""
    out = ds.with_train(ds.train_images, ds.train_labels)
    out.test_images, out.test_labels = SplitTrap(ds.test_images), SplitTrap(ds.test_labels)
    return out


# ---- the search itself ---------------------------------------------------------------------------

def test_search_never_reads_the_test_split_and_picks_the_best_on_validation(digits):
    s = digits_set(digits, ipc=3)
    proto, candidates = tiny(4), [0.001, 0.03, 0.3]
    with pytest.raises(AssertionError, match="read the test split"):  # the trap works: scoring on test trips it
        H.train_and_test(s.images, s.labels, trapped(digits), "convnet-d1", proto, seed=0, device="cpu")
    best, scores = search_lr(s.images, s.labels, trapped(digits), "convnet-d1", proto, candidates, seed=7, device="cpu")
    # by hand: one fresh network per candidate, seeded with the run's seed, scored on the carved validation images
    vx, vy = validation_by_hand(digits)
    expected = {}
    for lr in candidates:
        torch.manual_seed(7)
        m = build_model("convnet-d1", 1, 10, (8, 8))
        train_model(m, s.images, s.labels, proto, lr=lr, seed=7, flip_ok=False)
        expected[lr] = accuracy(m, vx, vy)
    assert scores == expected
    assert best == max(candidates, key=lambda c: (expected[c], -candidates.index(c)))


def test_a_diverging_candidate_is_never_chosen_and_all_diverging_is_an_error(digits, monkeypatch):
    def fake(images, labels, dataset, arch, protocol, *, lr, **kw):
        if lr > 1:
            raise FloatingPointError("training diverged")
        return {0.01: 0.5, 0.1: 0.7}[lr]

    monkeypatch.setattr(H, "train_and_test", fake)
    s = digits_set(digits)
    assert search_lr(s.images, s.labels, digits, "mlp", tiny(1), [0.01, 100.0, 0.1], seed=0, device="cpu") == (
        0.1, {0.01: 0.5, 100.0: None, 0.1: 0.7})
    with pytest.raises(ValueError, match="every candidate lr diverged on mlp .*smaller --lr-search"):
        search_lr(s.images, s.labels, digits, "mlp", tiny(1), [10.0, 100.0], seed=0, device="cpu")
    with pytest.raises(ValueError, match="positive"):
        search_lr(s.images, s.labels, digits, "mlp", tiny(1), [0.01, -1.0], seed=0, device="cpu")


# ---- threaded through the harness: a sentinel that disagrees on test -----------------------------

VAL_ACC = {0.001: 0.2, 0.01: 0.5, 0.05: 0.9, 0.1: 0.4, 0.037: 0.1}
TEST_ACC = {0.001: 0.99, 0.01: 0.6, 0.05: 0.3, 0.1: 0.7, 0.037: 0.98}  # the test split prefers other lrs


@pytest.fixture
def sentinel(digits, monkeypatch):
    """Replaces the training with a table: validation and test disagree, so a search that peeked at the test split
    would choose another lr. Records (split, lr, images) of every call."""
    calls = []
    vx, _ = validation_by_hand(digits)

    def fake(images, labels, dataset, arch, protocol, *, lr=None, **kw):
        on_val = not torch.equal(dataset.test_images, digits.test_images)
        if on_val:  # then it must be the validation carve, nothing else
            assert torch.equal(dataset.test_images, vx) and dataset.name.endswith(":val")
        lr = protocol.lr if lr is None else lr
        kept = images.clone() if torch.is_tensor(images) else images  # the full-data baseline passes a source
        calls.append(("val" if on_val else "test", lr, kept, arch))
        return (VAL_ACC if on_val else TEST_ACC)[lr]

    monkeypatch.setattr(H, "train_and_test", fake)
    return calls


def test_set_and_random_baseline_use_the_lr_best_on_validation(digits, sentinel):
    grid = [0.001, 0.01, 0.05, 0.1]
    s = digits_set(digits, ipc=2)
    r = evaluate(s, "mlp", tiny(1), runs=2, dataset=digits, device="cpu", progress=False, lr_search=grid)
    assert r.extra["lr"] == 0.05 and r.accs == [TEST_ACC[0.05]] * 2
    assert r.extra["lr_search"] == {"0.001": 0.2, "0.01": 0.5, "0.05": 0.9, "0.1": 0.4}
    assert [(c[0], c[1]) for c in sentinel] == [("val", lr) for lr in grid] + [("test", 0.05)] * 2
    assert all(torch.equal(c[2], s.images) for c in sentinel)  # the search trains on the set itself
    sentinel.clear()

    rnd = evaluate_random(digits, 2, "mlp", tiny(1), runs=2, device="cpu", progress=False, lr_search=grid)
    assert rnd.extra["lr"] == 0.05 and rnd.extra["lr_search"]["0.05"] == 0.9
    assert [(c[0], c[1]) for c in sentinel] == [("val", lr) for lr in grid] + [("test", 0.05)] * 2
    # the random selection the search trains on holds no validation image (it is scored on those)
    vx, _ = validation_by_hand(digits)
    picked = sentinel[0][2].flatten(1)
    assert picked.shape == (20, 64)
    assert not (picked[:, None, :] == vx.flatten(1)[None]).all(-1).any()


def test_a_learned_lr_is_one_more_candidate(digits, sentinel):
    s = digits_set(digits, lr=0.037)
    r = evaluate(s, "mlp", tiny(1), runs=1, dataset=digits, device="cpu", progress=False, lr_search=[0.01, 0.05])
    assert list(r.extra["lr_search"]) == ["0.037", "0.01", "0.05"] and r.extra["learned_lr"] == 0.037
    assert r.extra["lr"] == 0.05  # 0.9 on validation beats the learned lr's 0.1 (the test split would say otherwise)
    r = evaluate(s, "mlp", tiny(1), runs=1, dataset=digits, device="cpu", progress=False)
    assert r.extra["lr"] == 0.037 and "lr_search" not in r.extra  # no search: the learned lr as before


def test_dd_eval_lr_search_reports_the_choice_in_the_row_and_eval_json(tmp_path, digits, sentinel):
    path = digits_set(digits).save(tmp_path / "set.safetensors")
    rc = main(["eval", str(path), "--models", "mlp,convnet-d1", "--epochs", "1", "--runs", "1", "--device", "cpu",
               "--lr-search", "0.001,0.01,0.05,0.1"])
    assert rc == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    rows = {(r["name"], r["arch"]): r for r in report["rows"]}
    for arch in ("mlp", "convnet-d1"):
        for name in ("synthetic", "random-real"):
            extra = rows[(name, arch)]["extra"]
            assert extra["lr"] == 0.05
            assert extra["lr_search"] == {"0.001": 0.2, "0.01": 0.5, "0.05": 0.9, "0.1": 0.4}
            assert rows[(name, arch)]["accs"] == [TEST_ACC[0.05]]
        full = rows[("full", arch)]
        assert "lr_search" not in full.get("extra", {}) and full["accs"] == [TEST_ACC[0.01]]  # the protocol lr
    assert report["meta"]["lr_search"] == [0.001, 0.01, 0.05, 0.1]
    md = (tmp_path / "eval.md").read_text()
    assert "lr chosen per architecture from 0.001, 0.01, 0.05, 0.1" in md and "synthetic on mlp: 0.05" in md
    # validation calls never score on the test split; test calls use only the chosen lr or the protocol's
    assert {c[1] for c in sentinel if c[0] == "test"} == {0.05, 0.01}


def test_dd_eval_lr_search_errors_are_clear(tmp_path, digits, capsys):
    path = digits_set(digits).save(tmp_path / "set.safetensors")
    assert main(["eval", str(path), "--lr-search", "0.01,fast", "--device", "cpu"]) == 2
    assert "--lr-search expects comma-separated positive learning rates" in capsys.readouterr().err
    assert main(["eval", str(path), "--lr-search", "0.01", "--lr", "0.1", "--device", "cpu"]) == 2
    assert "--lr fixes the lr and --lr-search chooses it" in capsys.readouterr().err


# ---- real training -------------------------------------------------------------------------------

def test_an_absurd_lr_is_never_chosen_on_digits(digits):
    s = digits_set(digits, ipc=5)
    rep = build_report(s, ["convnet-d1"], tiny(15), runs=1, dataset=digits, baselines=("random",), device="cpu",
                       progress=False, lr_search=[0.01, 100.0])
    for row in rep.rows:
        searched = row.extra["lr_search"]
        assert row.extra["lr"] == 0.01, searched
        assert searched["100"] is None or searched["100"] < searched["0.01"]
        assert searched["0.01"] > 0.3  # a real score on validation (chance is 0.1)
