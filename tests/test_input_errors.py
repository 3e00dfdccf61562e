"""Bad input is refused up front with a message naming the option and what it expects: --ipc."""
import json

import pytest

from dd.cli import main


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
    assert "dd distill: error: --ipc must be a positive integer (images per class), got 0" in err
    assert not out.exists()  # refused before anything was written (the lock's directory is removed again)

    from dd.data import load_dataset
    from dd.eval import build_report, evaluate_random

    ds = load_dataset("digits")
    with pytest.raises(ValueError, match=r"--ipc must be a positive integer \(images per class\), got -1"):
        evaluate_random(ds, -1, "mlp", runs=1)
    with pytest.raises(ValueError, match="--ipc must be a positive integer .* got 0"):  # 0 is not "no --ipc"
        build_report(None, ["mlp"], "hard", 1, dataset=ds, ipc=0, baselines=["random"])
