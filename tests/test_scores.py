"""DD-Ranking scores: HLR/IOR/LRS/ARS by hand, the [0, 1] bound, percentages refused, the protocols behind each
accuracy, and `ddtk eval --scores` end to end on sklearn's digits."""
import json
import math
import random

import pytest
import torch

import dd.eval.harness as H
from dd.cli import main
from dd.data import load_dataset
from dd.eval import Protocol, build_report, get_protocol
from dd.eval.scores import (add_scores, ars, evaluate_scores, hlr, ior, lrs, measure_accuracies, normalized_score,
                            scores_from_accuracies)
from dd.synset import SyntheticSet


pytestmark = pytest.mark.usefixtures("one_thread")




def by_hand(x):
    """DD-Ranking's normalization, written out: (e^x - e^-1) / (e - e^-1)."""
    return (math.exp(x) - math.exp(-1)) / (math.exp(1) - math.exp(-1))


# ---- the formulas --------------------------------------------------------------------------------

def test_lrs_by_hand():
    expected = (math.exp(0.5 * 0.05 - 0.5 * 0.3) - math.exp(-1)) / (math.e - math.exp(-1))
    assert lrs(0.3, 0.05) == pytest.approx(expected, abs=1e-15)
    assert lrs(0.3, 0.05, w=0.8) == pytest.approx(by_hand(0.8 * 0.05 - 0.2 * 0.3), abs=1e-15)
    # the same from accuracies: full 0.90, set 0.60 with hard labels; set 0.65 vs random 0.60 under its protocol
    s = scores_from_accuracies({"full_hard": 0.90, "syn_hard": 0.60, "syn_own": 0.65, "random_own": 0.60})
    assert s["hlr"] == pytest.approx(0.3) and s["ior"] == pytest.approx(0.05)
    assert s["alpha"] == pytest.approx(0.5 * 0.05 - 0.5 * 0.3) and s["lrs"] == pytest.approx(expected)
    assert "ars" not in s  # no augmentation accuracies given
    assert hlr(0.9, 0.6) == pytest.approx(0.3) and ior(0.65, 0.6) == pytest.approx(0.05)


def test_ars_by_hand():
    # gaps: 0.70 - 0.60 = 0.10 with augmentation, 0.50 - 0.45 = 0.05 without
    assert ars(0.70, 0.60, 0.50, 0.45) == pytest.approx(by_hand(0.5 * 0.10 + 0.5 * 0.05), abs=1e-12)
    assert ars(0.70, 0.60, 0.50, 0.45, gamma=0.25) == pytest.approx(by_hand(0.25 * 0.10 + 0.75 * 0.05), abs=1e-12)
    s = scores_from_accuracies({"full_hard": 0.9, "syn_hard": 0.6, "syn_own": 0.7, "random_own": 0.6, "syn_aug": 0.7,
                                "random_aug": 0.6, "syn_plain": 0.5, "random_plain": 0.45}, gamma=0.25)
    assert s["beta"] == pytest.approx(0.25 * 0.10 + 0.75 * 0.05) and s["ars"] == pytest.approx(by_hand(s["beta"]))


def test_scores_stay_in_unit_interval():
    assert normalized_score(-1) == pytest.approx(0.0, abs=1e-15) and normalized_score(1) == pytest.approx(1.0)
    assert lrs(hlr(1.0, 0.0), ior(0.0, 1.0)) == pytest.approx(0.0, abs=1e-15)  # worst case
    assert lrs(hlr(0.0, 1.0), ior(1.0, 0.0)) == pytest.approx(1.0)  # best case
    rng = random.Random(0)
    for _ in range(2000):
        a = [rng.random() for _ in range(8)]
        w, g = rng.random(), rng.random()
        s = scores_from_accuracies(dict(zip(["full_hard", "syn_hard", "syn_own", "random_own", "syn_aug",
                                             "random_aug", "syn_plain", "random_plain"], a)), w, g)
        assert 0.0 <= s["lrs"] <= 1.0 and 0.0 <= s["ars"] <= 1.0
        assert -1.0 <= s["alpha"] <= 1.0 and -1.0 <= s["beta"] <= 1.0


def test_percentages_are_refused_with_the_fix_named():
    with pytest.raises(ValueError, match=r"full-data hard-label accuracy=98\.5 is outside \[0, 1\].*fractions"):
        hlr(98.5, 60.0)
    with pytest.raises(ValueError, match=r"set accuracy=65 .*divide percentages by 100"):
        ior(65, 60)
    with pytest.raises(ValueError, match=r"HLR=30 is outside \[-1, 1\].*fractions"):
        lrs(30, 5)
    with pytest.raises(ValueError, match="outside"):
        ars(70, 60, 50, 45)
    with pytest.raises(ValueError, match="outside"):
        scores_from_accuracies({"full_hard": 90.0, "syn_hard": 60.0, "syn_own": 65.0, "random_own": 60.0})
    with pytest.raises(ValueError, match="outside"):
        hlr(float("nan"), 0.5)
    with pytest.raises(ValueError, match=r"w=1\.5 must lie in \[0, 1\]"):
        lrs(0.3, 0.05, w=1.5)
    # what the normalization gives on percentages, the DD-Ranking 0.2.0 issue the module docstring quotes
    assert by_hand(0.5 * 5 - 0.5 * 30) == pytest.approx(-0.157, abs=5e-4)
    assert by_hand(0.5 * 10 - 0.5 * 0) == pytest.approx(63.0, abs=0.05)


# ---- which accuracies, under which protocols ------------------------------------------------------

def digits_set(digits, ipc=2, seed=0, **meta):
    s = SyntheticSet.from_real(digits, ipc, torch.Generator().manual_seed(seed))
    s.meta.update(meta)
    return s


@pytest.fixture
def fake_training(monkeypatch, digits):
    """Replaces training by fixed accuracies: full data 0.9; the set 0.6 with DSA, 0.5 without; random subsets 0.4
    with DSA, 0.45 without. Records (what, protocol, teacher) of every run."""
    calls = []
    state = {"set": None}

    def fake(images, labels, dataset, arch, protocol, **kw):
        if len(images) == len(dataset.train_images):
            what = "full"
        elif state["set"] is not None and torch.equal(images, state["set"].images):
            what = "syn"
        else:
            what = "random"
        calls.append((what, protocol, kw["inputs"].teacher if kw.get("inputs") is not None else None))
        aug = protocol.dsa or protocol.crop
        return {"full": 0.9, "syn": 0.6 if aug else 0.5, "random": 0.4 if aug else 0.45}[what]

    monkeypatch.setattr(H, "train_and_test", fake)
    return calls, state


def test_hard_protocol_set_needs_five_distinct_evaluations_and_scores_match_hand(digits, fake_training):
    calls, state = fake_training
    s = state["set"] = digits_set(digits)
    own = Protocol(epochs=3)
    out = evaluate_scores(s, "convnet-w32", own, runs=2, dataset=digits, full_epochs=4, device="cpu", progress=False)
    # syn_hard = syn_own = syn_aug (hard protocol with DSA); random_own = random_aug: each runs once
    seen = sorted((w, p.dsa, p.epochs) for w, p, _ in calls)
    assert seen == sorted([("syn", True, 3)] * 2 + [("syn", False, 3)] * 2 + [("random", True, 3)] * 2
                          + [("random", False, 3)] * 2 + [("full", True, 4)])
    acc = {k: v["mean"] for k, v in out["accuracies"].items()}
    assert acc == {"syn_hard": 0.6, "full_hard": 0.9, "syn_own": 0.6, "random_own": 0.4, "syn_aug": 0.6,
                   "random_aug": 0.4, "syn_plain": 0.5, "random_plain": 0.45}
    assert out["hlr"] == pytest.approx(0.3) and out["ior"] == pytest.approx(0.2)
    assert out["lrs"] == pytest.approx(by_hand(0.5 * 0.2 - 0.5 * 0.3))
    assert out["ars"] == pytest.approx(by_hand(0.5 * 0.2 + 0.5 * 0.05))
    assert out["accuracies"]["syn_plain"]["dsa"] is False and out["accuracies"]["random_aug"]["dsa"] is True


def test_report_rows_are_reused_not_retrained(digits, fake_training):
    calls, state = fake_training
    s = state["set"] = digits_set(digits)
    own = Protocol(epochs=3)
    report = build_report(s, ["convnet-w32"], own, 2, dataset=digits, full_epochs=4, device="cpu", progress=False)
    n = len(calls)
    scored = add_scores(report, s, ["convnet-w32"], own, 2, dataset=digits, full_epochs=4, device="cpu",
                        progress=False)
    assert sorted((w, p.dsa) for w, p, _ in calls[n:]) == [("random", False)] * 2 + [("syn", False)] * 2
    assert scored.rows == report.rows and scored.meta["scores"]["convnet-w32"]["hlr"] == pytest.approx(0.3)
    assert "### DD-Ranking scores" in scored.to_markdown() and "| convnet-w32 | 60.00 | 90.00 | 0.3000 |" in scored.to_markdown()


def test_teacher_protocol_set_gets_hard_labels_for_hlr_and_crop_off_for_plain(digits, fake_training):
    calls, state = fake_training
    s = state["set"] = digits_set(digits)
    teacher = object()  # the fake training never calls it; only who receives it is checked
    own = get_protocol("teacher", epochs=5)
    measure_accuracies(s, "convnet-w32", own, runs=1, dataset=digits, full_epochs=2, device="cpu", teacher=teacher,
                       progress=False)
    by_kind = {}
    for w, p, t in calls:
        by_kind.setdefault((w, p.labels, p.crop, p.mix), []).append((p, t))
    assert set(by_kind) == {("syn", "hard", False, "none"), ("full", "hard", False, "none"),
                            ("syn", "teacher", True, "cutmix"), ("random", "teacher", True, "cutmix"),
                            ("syn", "teacher", False, "none"), ("random", "teacher", False, "none")}
    (hard_p, hard_t), = by_kind[("syn", "hard", False, "none")]
    assert hard_p.dsa and hard_p.epochs == 5 and hard_t is None  # DC/MTT hard protocol, the own protocol's epochs
    plain_p, plain_t = by_kind[("syn", "teacher", False, "none")][0]
    assert not plain_p.dsa and plain_t is teacher
    for (_, lab, _, _), runs in by_kind.items():
        assert all((t is teacher) == (lab == "teacher") for _, t in runs)  # the teacher only where it labels


def test_a_protocol_without_augmentation_gets_dsa_for_the_augmented_accuracy(digits, fake_training):
    calls, state = fake_training
    s = state["set"] = digits_set(digits)
    out = measure_accuracies(s, "convnet-w32", Protocol(epochs=2, dsa=False), runs=1, dataset=digits, full_epochs=2,
                             device="cpu", progress=False)
    assert out["syn_own"] is out["syn_plain"] and out["syn_aug"].protocol["dsa"] is True
    assert out["syn_hard"] is out["syn_own"]  # the own protocol already trains on class ids


def test_the_recorded_protocol_is_the_default(digits, fake_training):
    calls, state = fake_training
    s = state["set"] = digits_set(digits, evaluation={"protocol": Protocol(name="soft", labels="soft", epochs=2).to_dict()})
    out = measure_accuracies(s, "convnet-w32", runs=1, dataset=digits, full_epochs=2, device="cpu", progress=False)
    assert out["syn_own"].protocol["labels"] == "soft" and out["syn_hard"].protocol["labels"] == "hard"
    assert out["random_own"].protocol["labels"] == "hard"  # random real images have no soft labels in dd


# ---- the command line ----------------------------------------------------------------------------

def test_dd_eval_scores_end_to_end_on_digits(tmp_path, digits, capsys):
    path = digits_set(digits).save(tmp_path / "set.safetensors")
    assert main(["eval", str(path), "--scores", "--model", "convnet-d1", "--epochs", "2", "--runs", "1",
                 "--device", "cpu"]) == 0
    data = json.loads((tmp_path / "eval.json").read_text())
    s = data["meta"]["scores"]["convnet-d1"]
    acc = {k: v["mean"] for k, v in s["accuracies"].items()}
    assert set(acc) == {"syn_hard", "full_hard", "syn_own", "random_own", "syn_aug", "random_aug", "syn_plain",
                        "random_plain"}
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert 0.0 <= s["lrs"] <= 1.0 and 0.0 <= s["ars"] <= 1.0
    # recomputed here from the accuracies the report stores
    assert s["hlr"] == pytest.approx(acc["full_hard"] - acc["syn_hard"])
    assert s["ior"] == pytest.approx(acc["syn_own"] - acc["random_own"])
    assert s["lrs"] == pytest.approx(by_hand(0.5 * s["ior"] - 0.5 * s["hlr"]))
    assert s["ars"] == pytest.approx(by_hand(0.5 * (acc["syn_aug"] - acc["random_aug"])
                                             + 0.5 * (acc["syn_plain"] - acc["random_plain"])))
    rows = {r["name"]: r for r in data["rows"]}
    assert acc["syn_own"] == rows["synthetic"]["mean"] and acc["full_hard"] == rows["full"]["mean"]
    assert s["accuracies"]["syn_plain"]["dsa"] is False and s["accuracies"]["full_hard"]["epochs"] == 2
    md = (tmp_path / "eval.md").read_text()
    assert "### DD-Ranking scores" in md and f"| convnet-d1 | {100 * acc['syn_hard']:.2f} |" in md
    assert "DD-Ranking scores" in capsys.readouterr().out


def test_dd_eval_scores_errors_are_clear(tmp_path, capsys):
    assert main(["eval", "--dataset", "digits", "--baseline", "random", "--ipc", "2", "--scores"]) == 2
    assert "--scores compares a synthetic set" in capsys.readouterr().err
    path = SyntheticSet.from_real(load_dataset("digits"), 1, torch.Generator().manual_seed(0)).save(tmp_path / "s.safetensors")
    assert main(["eval", str(path), "--scores", "--lrs-weight", "50", "--device", "cpu"]) == 2  # refused before training
    assert "--lrs-weight=50.0 must lie in [0, 1]" in capsys.readouterr().err
