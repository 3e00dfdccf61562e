"""`ddtk plot`: curves from a hand-written metrics.jsonl, the cross-architecture bar chart from a hand-written eval.json,
the smoothing by hand, restarted logs, and the errors (no inputs, no matplotlib)."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from dd.cli import main
from dd.plots import curve_keys, read_metrics, scalar_series, smooth, smoothing_window

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(path, iterations=40, val_every=10, start=0):
    """A DataDAM-like log: loss and its two terms, an MTT-like lr, bookkeeping, validation lines and the final
    test accuracies, as the driver writes them."""
    rows = []
    for it in range(start, start + iterations):
        att, mmd = 3.0 / (1 + it), 0.5 + 0.1 * np.sin(it)
        rows.append({"it": it, "loss": att + mmd, "loss_attention": att, "loss_mmd": mmd, "lr": 0.01 + 1e-4 * it,
                     "batch": 0.0, "sec": 0.01})
        if (it + 1) % val_every == 0:
            rows.append({"it": it, "val_acc": 0.5 + 0.01 * it})
    rows.append({"it": start + iterations, "test_acc/datadam/convnet-d1": 0.8})
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_eval(path):
    proto = {"name": "hard", "epochs": 300, "lr": 0.01}
    rows = []
    for arch, base in (("convnet-w32", 0.9), ("mlp", 0.8), ("lenet", 0.85)):
        rows += [{"name": "datadam", "arch": arch, "dataset": "mnist10k", "ipc": 10, "accs": [base, base + 0.02],
                  "mean": base + 0.01, "std": 0.01, "runs": 2, "protocol": proto,
                  "extra": {"lr": 0.05, "lr_search": {"0.01": base, "0.05": base + 0.01}}},
                 {"name": "random-real", "arch": arch, "dataset": "mnist10k", "ipc": 10, "accs": [base - 0.1],
                  "mean": base - 0.1, "std": 0.0, "runs": 1, "protocol": proto},
                 {"name": "full", "arch": arch, "dataset": "mnist10k", "ipc": None, "accs": [0.98], "mean": 0.98,
                  "std": 0.0, "runs": 1, "protocol": {**proto, "epochs": 30}}]
    path.write_text(json.dumps({"rows": rows, "meta": {"dataset": "mnist10k", "protocol": proto}}))


def check_png(path, min_w=400, min_h=250):
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        w, h = img.size
        assert w >= min_w and h >= min_h, img.size
        assert w <= 3000 and h <= 3000, img.size
        # not a blank canvas: a plot has many distinct colours
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 20


def test_smooth_is_a_centred_moving_average_with_shrinking_ends():
    assert smooth(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 3).tolist() == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert smooth(np.array([0.0, 0.0, 9.0, 0.0, 0.0]), 5).tolist() == [3.0, 2.25, 1.8, 2.25, 3.0]
    assert smooth(np.array([4.0, 7.0]), 1).tolist() == [4.0, 7.0]
    assert [smoothing_window(n) for n in (5, 6, 20, 100, 1000, 10_000)] == [1, 3, 3, 5, 51, 101]


def test_curve_keys_put_loss_first_and_skip_bookkeeping_and_one_point_series(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl")
    series = scalar_series(read_metrics(tmp_path / "metrics.jsonl"))
    # batch and sec are constant bookkeeping, val_acc has its own plot, test_acc/... is one final point
    assert curve_keys(series) == ["loss", "loss_attention", "loss_mmd", "lr"]
    its, vals = series["val_acc"]
    assert its.tolist() == [9, 19, 29, 39] and vals.tolist() == pytest.approx([0.59, 0.69, 0.79, 0.89])


def test_a_term_equal_to_the_total_gets_no_second_panel():
    rows = [{"it": i, "loss": 10.0 - i, "loss_mmd": 10.0 - i, "loss_attention": 0.0, "lr": 0.01} for i in range(5)]
    assert curve_keys(scalar_series(rows)) == ["loss"]


def test_a_restarted_log_keeps_only_the_last_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_metrics(path, iterations=30)
    write_metrics(path, iterations=12)  # `ddtk distill --restart` appends a new run from iteration 0
    its, _ = scalar_series(read_metrics(path))["loss"]
    assert its.tolist() == list(range(12))


def test_dd_plot_writes_readable_pngs_of_a_run(tmp_path, capsys):
    write_metrics(tmp_path / "metrics.jsonl")
    write_eval(tmp_path / "eval.json")
    (tmp_path / "config.json").write_text(json.dumps({"method": "datadam", "dataset": "mnist10k", "ipc": 10}))
    assert main(["plot", str(tmp_path)]) == 0
    names = ["loss.png", "val_acc.png", "cross_arch.png"]
    for name in names:
        check_png(tmp_path / name)
    out = capsys.readouterr().out
    assert [line.removeprefix("wrote ") for line in out.splitlines()] == [str(tmp_path / n) for n in names]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp files


def test_dd_plot_of_an_eval_json_file_or_into_another_directory(tmp_path, capsys):
    write_eval(tmp_path / "eval_lr.json")
    assert main(["plot", str(tmp_path / "eval_lr.json"), "--out", str(tmp_path / "figs")]) == 0
    check_png(tmp_path / "figs" / "eval_lr_cross_arch.png")
    assert capsys.readouterr().out == f"wrote {tmp_path / 'figs' / 'eval_lr_cross_arch.png'}\n"


def test_without_validation_there_is_no_val_acc_plot(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", val_every=10**9)
    assert main(["plot", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl"]


def test_dd_plot_errors_are_clear(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds neither metrics.jsonl nor eval.json" in err and str(tmp_path) in err
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"it": 0, "loss": 1.0}\nnot json\n')
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl, line 2: not JSON" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"it": 0, "loss": 1.0}\n')
    assert main(["plot", str(tmp_path)]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    (tmp_path / "eval.json").write_text(json.dumps({"rows": [{"name": "dm", "arch": "mlp", "mean": 0.5}]}))
    assert main(["plot", str(tmp_path / "eval.json")]) == 2
    assert "eval.json: row 0 lacks accs, std, protocol" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_missing_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    write_eval(tmp_path / "eval.json")
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now raises ImportError
    assert main(["plot", str(tmp_path)]) == 2
    assert "pip install 'dd-toolkit[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "cross_arch.png").exists()
