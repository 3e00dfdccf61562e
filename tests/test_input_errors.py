"""Bad input is refused up front with a message naming the option and what it expects: --ipc, --set, --config."""
import json

import pytest

from dd.cli import main
from dd.methods.base import config_from_dict, describe_type
from dd.methods.datm import DATMConfig
from dd.methods.driver import RunConfig


def _fails(argv, capsys) -> str:
    """Runs `dd ARGV` in process; it must exit 2 (argparse or the command's own check); returns stderr."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    assert rc == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-3"])
def test_distill_ipc_must_be_positive(value, capsys, tmp_path):
    err = _fails(["distill", "--dataset", "digits", "--ipc", value, "--out", str(tmp_path / "o")], capsys)
    assert f"argument --ipc: must be a positive integer, got {value}" in err


def test_eval_ipc_must_be_positive(capsys):
    err = _fails(["eval", "--dataset", "digits", "--baseline", "random", "--ipc", "0"], capsys)
    assert "argument --ipc: must be a positive integer, got 0" in err
    err = _fails(["eval", "--dataset", "digits", "--baseline", "random", "--ipc", "two"], capsys)
    assert "argument --ipc: expects a positive integer, got 'two'" in err


def test_ipc_from_a_config_file_or_the_api(capsys, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"method": "dm", "dataset": "digits", "ipc": 0}))
    out = tmp_path / "o"
    err = _fails(["distill", "--config", str(config), "--out", str(out)], capsys)
    assert "ddtk distill: error: --ipc must be a positive integer (images per class), got 0" in err
    assert not out.exists()  # refused before anything was written (the lock's directory is removed again)

    from dd.data import load_dataset
    from dd.eval import build_report, evaluate_random

    ds = load_dataset("digits")
    with pytest.raises(ValueError, match=r"--ipc must be a positive integer \(images per class\), got -1"):
        evaluate_random(ds, -1, "mlp", runs=1)
    with pytest.raises(ValueError, match="--ipc must be a positive integer .* got 0"):  # 0 is not "no --ipc"
        build_report(None, ["mlp"], "hard", 1, dataset=ds, ipc=0, baselines=["random"])


@pytest.mark.parametrize("assignment, message", [
    ("lr_img=abc", "option 'lr_img' of DMConfig expects a number, got 'abc'"),
    ("batch_real=1.5", "option 'batch_real' of DMConfig expects an integer, got '1.5'"),
    ("dsa=maybe", "option 'dsa' of DMConfig expects true/false, got 'maybe'"),
    ("iterations=1.5", "--set iterations=1.5: 'iterations' is a run option, not an option of method 'dm'; "
                       "use --iterations 1.5"),
    ("checkpoint_every=5", "'checkpoint_every' is a run option, not an option of method 'dm'; put it in a --config "
                           "file's \"run\" section, e.g. {\"run\": {\"checkpoint_every\": 5}}"),
])
def test_set_errors_name_the_key_and_type(assignment, message, capsys, tmp_path):
    err = _fails(["distill", "--dataset", "digits", "--ipc", "1", "--set", assignment, "--out", str(tmp_path / "o")],
                 capsys)
    assert message in err


def test_optional_int_accepts_none_and_integers_only():
    assert config_from_dict(DATMConfig, {"min_start_epoch": "none"}).min_start_epoch is None
    assert config_from_dict(DATMConfig, {"min_start_epoch": "7"}).min_start_epoch == 7
    assert config_from_dict(DATMConfig, {"min_start_epoch": "1e1"}).min_start_epoch == 10
    with pytest.raises(ValueError, match="option 'min_start_epoch' of DATMConfig expects an integer or none, got '2.5'"):
        config_from_dict(DATMConfig, {"min_start_epoch": "2.5"})


@pytest.mark.parametrize("config, message", [
    ({"run": {"iterations": 1.5}}, "option 'iterations' of RunConfig expects an integer, got 1.5"),
    ({"run": {"eval_every": "often"}}, "option 'eval_every' of RunConfig expects an integer, got 'often'"),
    ({"run": {"progress": 1}}, "option 'progress' of RunConfig expects true/false, got 1"),
    ({"run": {"eval_models": 3}}, "option 'eval_models' of RunConfig expects a comma-separated list of strings, got 3"),
    ({"run": {"eval_options": {"temperature": "hot"}}}, "option 'temperature' of Protocol expects a number, got 'hot'"),
    ({"lr_img": "fast"}, "option 'lr_img' of DMConfig expects a number, got 'fast'"),
    ({"model": 3}, "option 'model' of DMConfig expects a string, got 3"),
])
def test_config_file_values_are_type_checked(config, message, capsys, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    err = _fails(["distill", "--dataset", "digits", "--ipc", "1", "--config", str(path), "--out", str(tmp_path / "o")],
                 capsys)
    assert message in err


def test_config_file_values_that_fit_are_converted():
    run = config_from_dict(RunConfig, {"iterations": 1e3, "eval_models": ["convnet", "mlp"], "val_fraction": 0})
    assert run.iterations == 1000 and isinstance(run.iterations, int)
    assert run.eval_models == ("convnet", "mlp") and run.val_fraction == 0


def test_protocol_option_tuples(capsys):
    err = _fails(["eval", "--dataset", "digits", "--baseline", "random", "--ipc", "1", "--protocol-option",
                  "crop_scale=a,b"], capsys)
    assert "option 'crop_scale' of Protocol expects 2 comma-separated numbers, got 'a,b'" in err
    assert describe_type(tuple[float, float]) == "2 comma-separated numbers"
