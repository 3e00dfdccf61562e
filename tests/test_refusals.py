"""Inputs that used to exit 0 with wrong output, and refusals that must say what is wrong and what to do (issue 20)."""
import json
import math

import pytest
import torch

from dd.cli import main
from dd.data import load_dataset
from dd.methods.base import config_from_dict
from dd.methods.dm import DMConfig
from dd.methods.driver import RunConfig, run_config
from dd.synset import SyntheticSet
from dd.validate import check_value, rule
from helpers import mlp_teacher_file

pytestmark = pytest.mark.usefixtures("one_thread")


def _fails(argv, capsys) -> str:
    """Runs `ddtk ARGV` in process: exit status 2 and a one-line error, no traceback; returns stderr."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits):
    """A 1-image-per-class digits set recorded under the teacher protocol, and an MLP teacher checkpoint for it."""
    from dd.eval import get_protocol

    root = tmp_path_factory.mktemp("refusals")
    net, teacher = mlp_teacher_file(root, digits)
    s = SyntheticSet.from_real(digits, 1, torch.Generator().manual_seed(0))
    s.meta["evaluation"] = {"protocol": get_protocol("teacher").to_dict(), "labels": None,
                            "teachers": [{"spec": str(teacher), "kind": "file", "sha256": None, "arch": "mlp"}]}
    synset = s.save(root / "set.safetensors")
    hard = SyntheticSet.from_real(digits, 1, torch.Generator().manual_seed(0))
    hard.meta["evaluation"] = {"protocol": get_protocol("hard").to_dict(), "teachers": [], "labels": None}
    hard = hard.save(root / "hard.safetensors")
    return {"root": root, "teacher": teacher, "set": synset, "hard": hard}


def _relabel(files, out, *extra):
    return main([str(a) for a in ["relabel", files["set"], "--epochs", "2", "--batch-size", "5", "--topk", "3",
                                  "--out", out, "--device", "cpu", *extra]])


# ---- the six inputs that exited 0 ------------------------------------------------------------------------------

def test_the_same_teacher_twice_is_refused(files, capsys, tmp_path):
    t = str(files["teacher"])
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(files["teacher"].read_bytes())  # another path, the same bytes: the same sha256
    out = tmp_path / "o"
    err = _fails(["distill", "--method", "cvdd", "--dataset", "digits", "--ipc", "1", "--teacher", t, "--teacher",
                  copy, "--out", out], capsys)
    assert f"--teacher '{copy}' is the same teacher as --teacher '{t}'" in err and "pass each teacher once" in err
    assert not (out / "synset.safetensors").exists()


def test_relabel_topk_zero_is_refused(files, capsys, tmp_path):
    err = _fails(["relabel", files["set"], "--epochs", "1", "--topk", "0", "--out", tmp_path / "l"], capsys)
    assert "argument --topk: must be a positive integer, got 0" in err
    assert not (tmp_path / "l").exists()
    from dd.eval.labels import relabel

    with pytest.raises(ValueError, match=r"--topk must be >= 1 \(logits kept per view\), got 0"):
        relabel(torch.zeros(2, 1, 8, 8), torch.nn.Identity(), None, 1, tmp_path / "l", topk=0)


def test_stored_labels_are_verified_on_read(files, capsys, tmp_path):
    from dd.eval.labels import StoredLabels

    labels = tmp_path / "labels"
    assert _relabel(files, labels) == 0
    capsys.readouterr()
    evaluate = ["eval", files["set"], "--labels", labels, "--batch-size", "5", "--epochs", "1", "--models", "mlp",
                "--runs", "1", "--no-baselines", "--device", "cpu", "--out", tmp_path / "ev"]
    epoch1 = labels / "epoch_0001.safetensors"
    good = epoch1.read_bytes()
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF  # inside the float16 logits: still a readable safetensors file
    epoch1.write_bytes(bytes(flipped))
    err = _fails(evaluate, capsys)
    assert f"stored labels '{epoch1}' do not match the sha256" in err and "rerun the same `ddtk relabel`" in err
    assert not (tmp_path / "ev" / "eval.json").exists()
    epoch1.unlink()  # a missing epoch file is found when the labels are opened, before any training
    with pytest.raises(FileNotFoundError, match=f"stored labels '{epoch1}' \\(epoch 1\\) are missing"):
        StoredLabels(labels)
    err = _fails(evaluate, capsys)
    assert f"stored labels '{epoch1}' (epoch 1) are missing" in err
    epoch1.write_bytes(good)
    assert main([str(a) for a in evaluate]) == 0  # the intact directory is accepted again


@pytest.mark.parametrize("value", ["-5", "0"])
def test_iterations_must_be_positive_on_the_command_line_and_in_a_config_file(value, capsys, tmp_path):
    err = _fails(["distill", "--dataset", "digits", "--ipc", "1", "--iterations", value, "--out", tmp_path / "o"],
                 capsys)
    assert f"argument --iterations: must be a positive integer, got {value}" in err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"run": {"iterations": int(value)}}))
    err = _fails(["distill", "--dataset", "digits", "--ipc", "1", "--config", config, "--out", tmp_path / "o"], capsys)
    assert f"option 'iterations' of RunConfig must be >= 1, got {value}" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="option 'iterations' of RunConfig must be >= 1"):
        run_config(RunConfig(iterations=int(value)))  # the Python API, a built config


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-0.1"])
def test_eval_lr_must_be_finite_and_positive(value, capsys, tmp_path):
    err = _fails(["eval", "--dataset", "digits", "--baseline", "random", "--ipc", "1", f"--lr={value}", "--out",
                  tmp_path], capsys)
    assert f"argument --lr: must be a finite number > 0, got {value}" in err
    assert not (tmp_path / "eval.json").exists()
    err = _fails(["eval", "--dataset", "digits", "--baseline", "random", "--ipc", "1", "--protocol-option",
                  f"lr={value}", "--out", tmp_path], capsys)
    assert "--protocol-option lr must be" in err and not (tmp_path / "eval.json").exists()


def test_eval_runs_zero_is_refused(capsys, tmp_path, digits):
    err = _fails(["eval", "--dataset", "digits", "--baseline", "random", "--ipc", "1", "--runs", "0", "--out",
                  tmp_path], capsys)
    assert "argument --runs: must be a positive integer, got 0" in err
    assert not (tmp_path / "eval.json").exists()
    from dd.eval import build_report

    with pytest.raises(ValueError, match=r"--runs must be a positive integer \(fresh networks per row\), got 0"):
        build_report(None, ["mlp"], "hard", 0, dataset=digits, ipc=1, baselines=["random"])


# ---- one validation layer -------------------------------------------------------------------------------------

def test_rules_by_hand():
    check_value(0.5, "x", rule(gt=0, le=1)["rule"])
    check_value(None, "x", rule(gt=0)["rule"])  # unset
    check_value((0.08, 1.0), "x", rule(gt=0, le=1)["rule"])
    for value, r, message in [(0.0, rule(gt=0), "x must be > 0, got 0.0"), (1.5, rule(gt=0, le=1), "x must be > 0 and <= 1"),
                              (math.nan, None, "x must be a finite number, got nan"),
                              ((0.5, 2.0), rule(gt=0, le=1), r"x must be > 0 and <= 1, got \(0.5, 2.0\)"),
                              ("blue", rule(choices=("real", "noise")), "x must be one of 'real', 'noise'; got 'blue'")]:
        with pytest.raises(ValueError, match=message):
            check_value(value, "x", (r or {}).get("rule"))
    check_value(math.inf, "x", rule(finite=False)["rule"])


@pytest.mark.parametrize("values, message", [
    ({"lr_img": "nan"}, "option 'lr_img' of DMConfig must be a finite number, got nan"),
    ({"lr_img": -1}, "option 'lr_img' of DMConfig must be > 0, got -1"),
    ({"momentum": "inf"}, "option 'momentum' of DMConfig must be a finite number, got inf"),
])
def test_method_options_are_checked_however_they_are_given(values, message, capsys, tmp_path):
    with pytest.raises(ValueError, match=message):
        config_from_dict(DMConfig, values)  # the Python API
    (key, value), = values.items()
    err = _fails(["distill", "--dataset", "digits", "--ipc", "1", "--set", f"{key}={value}", "--out", tmp_path / "o"],
                 capsys)
    assert message in err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({key: value}))
    assert message in _fails(["distill", "--dataset", "digits", "--ipc", "1", "--config", config, "--out",
                              tmp_path / "o"], capsys)


def test_lr_teacher_and_protocol_fields_are_checked_on_construction():
    from dd.eval import Protocol, get_protocol
    from dd.methods.mtt import MTTConfig

    with pytest.raises(ValueError, match="option 'lr_teacher' of MTTConfig must be > 0, got 0"):
        config_from_dict(MTTConfig, {"lr_teacher": 0})
    with pytest.raises(ValueError, match="option 'lr' of Protocol must be a finite number, got inf"):
        get_protocol("hard", lr=float("inf"))
    with pytest.raises(ValueError, match="option 'temperature' of Protocol must be > 0"):
        Protocol(temperature=-1.0)


# ---- messages -------------------------------------------------------------------------------------------------

def test_malformed_teacher_specs_say_the_grammar(files, capsys, tmp_path):
    from dd.teachers import split_spec

    assert split_spec("runs/buf@3") == ("runs/buf", 3) and split_spec("runs/buf") == ("runs/buf", None)
    weird = tmp_path / "a@b"
    weird.mkdir()
    assert split_spec(str(weird)) == (str(weird), None)  # an existing path is taken whole
    err = _fails(["eval", files["set"], "--protocol", "teacher", "--teacher", f"{tmp_path}@abc", "--device", "cpu",
                  "--runs", "1", "--no-baselines", "--out", tmp_path / "ev"], capsys)
    assert f"teacher '{tmp_path}@abc': '@abc' is not an expert number; a teacher spec is DIR or DIR@E" in err
    assert "package.module:callable" in err


def test_user_callables_that_raise_name_the_spec_and_role(capsys, tmp_path, monkeypatch):
    mod = tmp_path / "userthings.py"
    mod.write_text("def teacher():\n    raise RuntimeError('no weights here')\n"
                   "def data(**kw):\n    raise OSError('disk on fire')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from dd.teachers import open_teacher

    with pytest.raises(ValueError, match="user teacher 'userthings:teacher' .*raised RuntimeError: no weights here"):
        open_teacher("userthings:teacher")
    err = _fails(["eval", "--dataset", "userthings:data", "--baseline", "random", "--ipc", "1", "--runs", "1"], capsys)
    assert "user dataset 'userthings:data' (the dataset loader) raised OSError: disk on fire" in err


def test_user_datasets_with_bad_labels_or_zero_std_are_refused_at_load(tmp_path, monkeypatch, capsys):
    (tmp_path / "tinydata.py").write_text(
        "import torch\nfrom dd.data import ImageDataset\n"
        "def make(labels, std=(0.5,)):\n"
        "    x = torch.zeros(4, 1, 4, 4, dtype=torch.uint8)\n"
        "    return ImageDataset.from_uint8('tiny', x, labels, x, [0, 1, 0, 1], mean=(0.5,), std=std,\n"
        "                                   class_names=['a', 'b'])\n"
        "def good(**kw):\n    return make([0, 1, 0, 1])\n"
        "def over(**kw):\n    return make([0, 1, 2, 0])\n"
        "def under(**kw):\n    return make([0, 1, -1, 0])\n"
        "def flat(**kw):\n    return make([0, 1, 0, 1], std=(0.0,))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_dataset("tinydata:good").num_classes == 2
    with pytest.raises(ValueError, match=r"train labels range over 0..2 but the dataset has 2 classes"):
        load_dataset("tinydata:over")
    with pytest.raises(ValueError, match=r"train labels range over -1..1"):
        load_dataset("tinydata:under")
    with pytest.raises(ValueError, match=r"per-channel std \(0.0,\) must be finite and > 0"):
        load_dataset("tinydata:flat")
    err = _fails(["eval", "--dataset", "tinydata:over", "--baseline", "random", "--ipc", "1", "--runs", "1"], capsys)
    assert "labels range over 0..2" in err


def test_config_file_top_level_must_be_an_object(capsys, tmp_path):
    config = tmp_path / "c.json"
    for text, message in [("[1, 2]", "holds a JSON list; its top level must be an object"),
                          ("{oops", "is not valid JSON"), ('{"run": 3}', '"run" must be an object')]:
        config.write_text(text)
        err = _fails(["distill", "--dataset", "digits", "--ipc", "1", "--config", config, "--out", tmp_path / "o"],
                     capsys)
        assert f"--config '{config}' " in err or f"--config '{config}':" in err
        assert message in err
    err = _fails(["distill", "--config", tmp_path / "absent.json", "--out", tmp_path / "o"], capsys)
    assert "does not exist" in err


def test_a_missing_recorded_teacher_offers_teacher_or_labels(files, capsys, tmp_path, digits):
    s = SyntheticSet.load(files["set"])
    s.meta["evaluation"]["teachers"] = [{"spec": str(tmp_path / "gone.safetensors"), "kind": "file", "arch": "mlp"}]
    path = s.save(tmp_path / "orphan.safetensors")
    err = _fails(["eval", path, "--epochs", "1", "--runs", "1", "--no-baselines", "--device", "cpu", "--out",
                  tmp_path / "ev"], capsys)
    assert "the set's recorded teacher" in err and "gone.safetensors" in err
    assert "--teacher SPEC" in err and "--labels DIR" in err


def test_relabel_of_a_set_under_another_protocol_names_the_option(files, capsys, tmp_path):
    err = _fails(["relabel", files["hard"], "--epochs", "1", "--teacher", files["teacher"], "--out", tmp_path / "l",
                  "--device", "cpu"], capsys)
    assert "scored under the 'hard' protocol" in err and "pass --protocol teacher" in err
    assert main(["relabel", str(files["hard"]), "--epochs", "1", "--batch-size", "5", "--teacher", str(files["teacher"]),
                 "--protocol", "teacher", "--out", str(tmp_path / "l"), "--device", "cpu"]) == 0


def test_divergence_does_not_name_a_checkpoint_that_is_not_there(tmp_path, digits):
    from dd.methods import DistillationDiverged, distill

    with pytest.raises(DistillationDiverged) as e:
        distill("dm", digits, 1, out=tmp_path / "o", config={"lr_img": 1e30, "init": "noise"},
                run={"iterations": 3, "eval_every": 0, "eval_runs": 0, "progress": False}, device="cpu")
    assert "no checkpoint was written" in str(e.value)
    assert not (tmp_path / "o" / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("options, message", [
    ({"lr_img": "nan"}, "option 'lr_img' of DMConfig must be a finite number"),
    ({"lr_img": 0}, "option 'lr_img' of DMConfig must be > 0, got 0"),
])
def test_reproduce_spec_options_go_through_the_same_rules(options, message, tmp_path):
    from dd.reproduce import SpecError, reproduce

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "paper", "rows": [{"id": "a", "method": "dm", "dataset": "digits", "ipc": 1,
                                                           "options": options,
                                                           "paper": {"value": 1.0, "source": "a test"}}]}))
    with pytest.raises((SpecError, ValueError), match=message):
        reproduce(spec, out=tmp_path / "out", dry_run=True, log=lambda _: None)


def test_enumerated_protocol_options_say_their_choices(capsys, tmp_path):
    err = _fails(["eval", "--dataset", "digits", "--baseline", "random", "--ipc", "1", "--protocol-option",
                  "schedule=linear", "--out", tmp_path], capsys)
    assert "--protocol-option schedule must be one of 'step', 'cosine'; got 'linear'" in err
