"""One file per extension: the method, protocol, teacher and dataset of tests/ext_plugin.py (a user's module, outside
dd/) go through `ddtk distill`, `eval`, `relabel`, `reproduce --smoke` and `plot`, named as `ext_plugin:NAME`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ext_plugin as E
from dd.cli import main
from dd.synset import SyntheticSet

pytestmark = pytest.mark.usefixtures("one_thread")

METHOD, DATASET, TEACHER = "ext_plugin:ext-invert", "ext_plugin:ext_digits", "ext_plugin:ext_teacher"
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One `ddtk distill` of the outside method on the outside dataset with the outside teacher (3 iterations)."""
    root = tmp_path_factory.mktemp("ext")
    E.write_ext_digits(root / "data")
    out = root / "run"
    assert main(["distill", "--method", METHOD, "--dataset", DATASET, "--data-root", str(root / "data"), "--ipc", "2",
                 "--teacher", TEACHER, "--iterations", "3", "--eval-every", "0", "--eval-runs", "1",
                 "--eval-models", "mlp", "--device", "cpu", "--out", str(out)]) == 0
    return root, out


def test_distill_runs_the_outside_method_its_finalize_phase_and_its_protocol(run):
    root, out = run
    s = SyntheticSet.load(out / "synset.safetensors")
    assert s.meta["method"] == "ext-invert" and s.meta["dataset"] == DATASET and s.images.shape == (20, 1, 8, 8)
    with torch.no_grad():  # finalize(): the labels are the teacher's predictions of the final images at T=4
        expected = (E.ext_teacher()(s.images) / 4.0).softmax(1)
    assert torch.allclose(s.labels, expected, atol=1e-6)
    assert s.meta["evaluation"]["protocol"]["name"] == E.PROTOCOL
    assert s.meta["evaluation"]["protocol"]["temperature"] == 4.0 and s.meta["evaluation"]["protocol"]["epochs"] == 20
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    conf = [r["ext_confidence"] for r in rows if "ext_confidence" in r]
    assert len(conf) == 3 and conf[-1] > conf[0]  # its own metric: the teacher grows surer of the images' classes
    report = json.loads((out / "eval.json").read_text())
    assert {r["protocol"]["name"] for r in report["rows"]} == {E.PROTOCOL}


def test_eval_and_relabel_under_the_outside_teacher_protocol(run, tmp_path):
    """`ddtk relabel` stores the outside protocol's views and teacher logits; `ddtk eval --labels` replays them
    without the teacher and gets what the live teacher gives (the same views, logits kept to top-10 of 10 classes)."""
    root, out = run
    path = str(out / "synset.safetensors")
    common = ["--data-root", str(root / "data"), "--models", "mlp", "--runs", "1", "--device", "cpu", "--no-baselines"]
    assert main(["eval", path, "--protocol", E.PROTOCOL, *common, "--out", str(tmp_path / "live")]) == 0
    assert main(["relabel", path, "--protocol", E.PROTOCOL, "--epochs", "20", "--topk", "10", "--device", "cpu",
                 "--data-root", str(root / "data"), "--out", str(tmp_path / "labels")]) == 0
    assert main(["eval", path, "--labels", str(tmp_path / "labels"), *common, "--out", str(tmp_path / "stored")]) == 0
    live = json.loads((tmp_path / "live" / "eval.json").read_text())["rows"][0]
    stored = json.loads((tmp_path / "stored" / "eval.json").read_text())["rows"][0]
    assert live["protocol"]["name"] == E.PROTOCOL and live["protocol"]["temperature"] == 4.0
    assert stored["accs"] == pytest.approx(live["accs"], abs=0.02)  # float16 logits: nearly the same network
    assert stored["accs"][0] > 0.3  # well above chance (0.1) on 10 classes


def test_plot_draws_the_outside_method_s_metric_and_leaves_out_its_bookkeeping(run, tmp_path):
    """In a fresh process (nothing imported ext_plugin): the run directory alone says where its method lives."""
    _, out = run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys; from pathlib import Path; from dd.cli import main; from dd.plots import curve_keys, "
            "read_metrics, run_bookkeeping, scalar_series; assert 'ext_plugin' not in sys.modules; "
            f"assert main(['plot', {str(out)!r}, '--out', {str(tmp_path)!r}]) == 0; run = Path({str(out)!r}); "
            "print(sorted(run_bookkeeping(run))); "
            "print(curve_keys(scalar_series(read_metrics(run / 'metrics.jsonl')), run_bookkeeping(run)))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bookkeeping, keys = done.stdout.strip().splitlines()[-2:]
    assert bookkeeping == "['ext_draw']"
    assert "'ext_confidence'" in keys and "ext_draw" not in keys and "'loss'" in keys
    assert any(tmp_path.glob("*.png"))


def _spec(path: Path, data_root: Path) -> Path:
    spec = {"title": "extensions", "kind": "bench", "data_root": str(data_root),
            "eval": {"archs": ["mlp"], "runs": 1},
            "rows": [{"id": "ext-row", "method": METHOD, "dataset": DATASET, "ipc": 1, "teachers": [TEACHER],
                      "eval": {"protocol": E.PROTOCOL}, "recorded": None}]}
    path.write_text(json.dumps(spec))
    return path


def test_reproduce_names_the_outside_dataset_s_missing_files_then_runs_the_row_in_smoke_size(run, tmp_path, capsys):
    root, _ = run
    spec = _spec(tmp_path / "ext.json", tmp_path / "nodata")
    assert main(["reproduce", str(spec), "--dry-run", "--out", str(tmp_path / "dry")]) == 1
    said = capsys.readouterr().out
    for name in E.FILES:
        assert str(tmp_path / "nodata" / "ext_digits" / name) in said
    out = tmp_path / "table"
    assert main(["reproduce", str(spec), "--smoke", "--device", "cpu", "--data-root", str(root / "data"),
                 "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    (row,) = table["rows"]
    assert row["id"] == "ext-row" and row["protocol"] == E.PROTOCOL and row["epochs"] == 1  # smoke: one epoch
    assert len(row["ours"]["mlp"]["accs"]) == 1
    config = json.loads((out / "rows" / "ext-row" / "distill" / "config.json").read_text())
    assert config["method"] == "ext-invert" and config["config"]["inner"] == 1  # its declared smoke size
    assert config["dataset"] == DATASET and config["inputs"]["teachers"][0]["spec"] == TEACHER
