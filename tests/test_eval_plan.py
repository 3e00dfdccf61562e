"""The evaluation plan (dd.eval.plan): frozen, made before any data is read, the same report from `ddtk eval` and from
`evaluate_set`; the typed input specs (dd.specs); DD-Ranking scores through the row runner, spread over ranks."""
import dataclasses
import json
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import dd.data
import dd.eval.harness as H
from dd.cli import main
from dd.distributed import ProcessGroup
from dd.eval import Protocol, build_report, get_protocol
from dd.eval.plan import EvalPlan, make_eval_plan, make_relabel_plan
from dd.eval.run import evaluate_set
from dd.eval.scores import add_scores
from dd.specs import BufferSpec, TeacherSpec, parse_spec
from dd.synset import SyntheticSet
from test_eval_distributed import ThreadRanks, fake_training

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def set_file(digits, tmp_path):
    return SyntheticSet.from_real(digits, 2, torch.Generator().manual_seed(0)).save(tmp_path / "set.safetensors")


@pytest.fixture
def no_data(monkeypatch):
    """Any dataset or set-tensor read fails the test (pytest.fail is no error the command line turns into exit 2)."""
    def read(*a, **k):
        pytest.fail("data was read while planning")

    for owner, name in ((dd.data, "load_dataset"), (H, "load_dataset"), (SyntheticSet, "load")):
        monkeypatch.setattr(owner, name, read)


def test_the_plan_is_frozen_and_made_from_the_header_alone(set_file, no_data):
    plan = make_eval_plan(set_file, ["mlp", "convnet-d1"], [None], 3, baselines=["random", "full"], seed=4,
                          protocol_overrides={"epochs": 7, "options": {"lr": "0.02"}}, lr_search=[0.1, 0.01, 0.1])
    assert isinstance(plan, EvalPlan) and plan.synset == Path(set_file) and plan.set_meta["dataset"] == "digits"
    assert plan.dataset == "digits" and plan.archs == ("mlp", "convnet-d1") and plan.baselines == ("random", "full")
    (p,) = plan.protocols
    assert (p.name, p.epochs, p.lr) == ("hard", 7, 0.02)  # no recorded protocol: hard, with the overrides
    assert plan.lr_search == (0.1, 0.01, 0.1) and plan.teacher is None and plan.with_teacher == (False,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.runs = 5


@pytest.mark.parametrize("argv, message", [
    (["--ipc", "3", "--no-baselines"], "--ipc sets the images per class"),
    (["--protocol", "teacher"], "the teacher protocol needs a teacher: pass --teacher"),
    (["--scores", "--protocols", "hard,teacher"], "--scores compares a set with its baselines under one protocol"),
    (["--models", "mlp,no-such-net"], "no-such-net"),
    (["--protocol-option", "epochs=0"], "--protocol-option epochs"),
    (["--lr-search", "0.1", "--lr", "0.1"], "--lr fixes the lr and --lr-search chooses it"),
])
def test_a_bad_option_is_refused_before_any_data_is_read(set_file, no_data, capsys, argv, message):
    assert main(["eval", str(set_file), "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_teacher_of_another_dataset_is_refused_before_any_data(set_file, no_data, tmp_path, capsys):
    teacher = tmp_path / "t.safetensors"
    save_file({"w": torch.zeros(1)}, str(teacher), metadata={"model": "mlp", "dataset": "mnist10k"})
    assert main(["eval", str(set_file), "--protocol", "teacher", "--teacher", str(teacher), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"teacher '{teacher}' was trained on dataset 'mnist10k' but this run uses 'digits'" in err
    with pytest.raises(ValueError, match="pass --teacher SPEC"):  # relabel: likewise planned before the data
        make_relabel_plan(set_file, tmp_path / "labels", 2, protocol="teacher")


def test_ddtk_eval_and_evaluate_set_give_the_same_report(set_file, tmp_path, capsys):
    argv = ["eval", str(set_file), "--models", "mlp", "--runs", "2", "--epochs", "2", "--batch-size", "64",
            "--seed", "5", "--device", "cpu", "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    cli = json.loads((tmp_path / "cli" / "eval.json").read_text())
    report = evaluate_set(SyntheticSet.load(set_file), ["mlp"], get_protocol("hard", epochs=2, batch_size=64), 2,
                          group=ProcessGroup.single(), baselines=["random", "full"], full_epochs=2, seed=5)
    lib = json.loads(report.save(tmp_path / "lib")[0].read_text())

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(cli["rows"]) == strip(lib["rows"])
    assert [r["name"] for r in cli["rows"]] == ["synthetic", "random-real", "full"]
    assert len({a for r in cli["rows"] for a in r["accs"]}) > 1  # real trainings
    assert cli["meta"]["protocol"] == lib["meta"]["protocol"] and cli["meta"]["protocol"]["batch_size"] == 64


# ---- typed input specs ----------------------------------------------------------------------------

def test_specs_are_parsed_by_one_function(tmp_path):
    buffer = tmp_path / "buf"
    buffer.mkdir()
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    assert parse_spec(f"{buffer}@3") == TeacherSpec(f"{buffer}@3", "buffer", str(buffer), 3)
    assert parse_spec(str(buffer)).expert == 0 and parse_spec(str(weights)) == TeacherSpec(str(weights), "file",
                                                                                           str(weights))
    assert parse_spec("pkg.mod:make") == TeacherSpec("pkg.mod:make", "callable") and str(parse_spec("pkg.mod:make")) == "pkg.mod:make"
    assert parse_spec(buffer, "buffer") == BufferSpec(str(buffer), "buffer", str(buffer))
    with pytest.raises(ValueError, match="give DIR, not DIR@E"):
        parse_spec(f"{tmp_path}/nothing@1", "buffer")
    with pytest.raises(ValueError, match="is not an expert number"):
        parse_spec(f"{tmp_path}/nothing@x")
    with pytest.raises(FileNotFoundError, match="neither a buffer directory"):
        parse_spec(str(tmp_path / "missing.safetensors"))
    spec = parse_spec(str(weights))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.expert = 1


# ---- DD-Ranking scores through the row runner ---------------------------------------------------------

def test_score_rows_spread_over_ranks_equal_one_process(digits, monkeypatch):
    s = SyntheticSet.from_real(digits, 2, torch.Generator().manual_seed(0))
    own = Protocol(epochs=2)
    calls = []
    monkeypatch.setattr(H, "train_and_test", fake_training(calls))

    def scored(group):
        report = build_report(s, ["mlp", "convnet-d1"], own, 2, dataset=digits, full_epochs=2, device="cpu",
                              progress=False, group=group, seed=3)
        return add_scores(report, s, ["mlp", "convnet-d1"], own, 2, dataset=digits, full_epochs=2, device="cpu",
                          progress=False, group=group, seed=3).meta["scores"]

    one = scored(None)
    single = Counter(c[1:] for c in calls)
    calls.clear()
    ranks, out = ThreadRanks(2), {}
    threads = [threading.Thread(target=lambda r=r: out.__setitem__(r, scored(ranks.group(r))), name=f"rank{r}")
               for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out[0] == out[1] == one
    assert Counter(c[1:] for c in calls) == single  # every training once, whichever rank ran it
    # the scores' own rows (DSA off: syn_plain, random_plain) were dealt to both ranks too, not run on rank 0 alone
    assert sum(single.values()) == 2 * (2 + 2 + 1) + 2 * (2 + 2)
    assert {c[0] for c in calls[-8:]} == {"rank0", "rank1"}


def test_scores_reuse_the_sets_row_not_a_coreset_row_under_the_same_protocol(digits, monkeypatch):
    """A herding row trains real images on class ids under the set's (hard) protocol: same architecture, protocol and
    runs as the set's row, yet it is no measurement of the set."""
    from dd.eval.harness import EvalResult

    s = SyntheticSet.from_real(digits, 2, torch.Generator().manual_seed(0))
    own = Protocol(epochs=2)
    monkeypatch.setattr(H, "train_and_test", lambda *a, **k: 0.5)
    rows = [EvalResult("synthetic", "mlp", "digits", [0.7, 0.7], own.to_dict(), 2),
            EvalResult("herding", "mlp", "digits", [0.1, 0.1], own.to_dict(), 2)]
    from dd.eval.report import Report

    scored = add_scores(Report(rows), s, ["mlp"], own, 2, dataset=digits, full_epochs=2, device="cpu", progress=False)
    accs = scored.meta["scores"]["mlp"]["accuracies"]
    assert accs["syn_own"]["accs"] == [0.7, 0.7] and accs["syn_plain"]["accs"] == [0.5, 0.5]
