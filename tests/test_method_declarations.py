"""What a method declares at its class (smoke-size options, bookkeeping metrics, its skip flag) is honoured by
`ddtk reproduce --smoke` and `ddtk plot` for a method defined here, outside dd/, with no edit under dd/."""
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dd.cli import main
from dd.methods import METHODS, Method, MethodConfig
from dd.plots import curve_keys, read_metrics, run_bookkeeping, scalar_series
from dd.reproduce import distill_config, load_spec, smoke_config

NAME = "toy_declared"


@dataclass
class ToyConfig(MethodConfig):
    inner_steps: int = 50  # shrunk by --smoke (declared below)
    real_batch: int = 4  # already below its smoke size: left alone
    keep: int = 7  # not declared: never touched


class Toy(Method):
    """A method of this test module: it declares its own smoke options and a bookkeeping metric."""

    name = NAME
    Config = ToyConfig
    smoke = {"inner_steps": 3, "real_batch": 8}
    bookkeeping = frozenset({"draw"})
    skip_flag = "skipped_here"

    def init_synset(self):
        self.set = self.initial_set()
        return self.set

    def step(self, it):  # iteration 0 skips its update with a non-finite loss, as DATM's threshold does
        return {"loss": float("nan") if it == 0 else 1.0 / (it + 1), "skipped_here": float(it == 0), "draw": it % 3}

    def current_set(self):
        return self.set

    def state(self):
        return {}, {}

    def load_state(self, tensors, info):
        pass


if NAME not in METHODS:
    METHODS.add(NAME, Toy)


def _spec(tmp_path: Path, options: dict) -> Path:
    spec = {"title": "toy", "kind": "bench", "eval": {"archs": ["convnet"]},
            "rows": [{"id": "toy-row", "method": NAME, "dataset": "digits", "ipc": 1, "options": options,
                      "recorded": None}]}
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(spec))
    return path


def test_reproduce_smoke_shrinks_the_options_the_method_declares(tmp_path):
    row = load_spec(_spec(tmp_path, {"keep": 9})).rows[0]
    smoke, full = distill_config(row, smoke=True), distill_config(row, smoke=False)
    assert smoke["inner_steps"] == 3 and "inner_steps" not in full  # unset -> the declared size
    assert "real_batch" not in smoke  # its default 4 is already smaller than 8: not written
    assert smoke["keep"] == full["keep"] == 9
    row = load_spec(_spec(tmp_path, {"inner_steps": 2, "real_batch": 20})).rows[0]
    assert {k: distill_config(row, smoke=True)[k] for k in ("inner_steps", "real_batch")} == {"inner_steps": 2,
                                                                                            "real_batch": 8}


def test_a_smoke_option_that_is_not_a_config_field_is_named():
    class Bad(Toy):
        smoke = {"no_such_option": 1}

    with pytest.raises(ValueError, match="no_such_option.*ToyConfig"):
        smoke_config(Bad, {})


def test_the_built_in_methods_declare_only_their_own_fields():
    from dataclasses import fields

    for name in METHODS.names():
        cls = METHODS.get(name)
        assert set(cls.smoke) <= {f.name for f in fields(cls.Config)}, name


def test_plot_leaves_out_the_bookkeeping_the_run_dir_s_method_declares(tmp_path, capsys):
    rows = [{"it": i, "loss": 1.0 / (i + 1), "draw": i % 3, "sec": 0.1 + 0.01 * i} for i in range(10)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    series = scalar_series(read_metrics(tmp_path / "metrics.jsonl"))
    assert curve_keys(series) == ["loss", "draw"]  # nothing says what `draw` is
    assert run_bookkeeping(tmp_path) == frozenset()
    (tmp_path / "config.json").write_text(json.dumps({"method": NAME, "dataset": "digits", "ipc": 1}))
    assert run_bookkeeping(tmp_path) == {"draw"}
    assert curve_keys(series, run_bookkeeping(tmp_path)) == ["loss"]
    assert main(["plot", str(tmp_path)]) == 0 and (tmp_path / "loss.png").is_file()
    (tmp_path / "config.json").write_text(json.dumps({"method": "not_registered", "dataset": "digits", "ipc": 1}))
    assert run_bookkeeping(tmp_path) == frozenset()


def test_the_driver_accepts_a_non_finite_loss_only_where_the_method_flags_a_skip(tmp_path):
    from dd.methods import distill
    from dd.methods.base import DistillationDiverged

    res = distill(NAME, "digits", 1, run={"iterations": 3, "eval_every": 0, "eval_runs": 0, "progress": False},
                  device="cpu")
    assert res.synset is not None

    class Unflagged(Toy):
        skip_flag = None

    METHODS.add("toy_unflagged", Unflagged)
    try:
        with pytest.raises(DistillationDiverged, match="iteration 0"):
            distill("toy_unflagged", "digits", 1, run={"iterations": 3, "eval_every": 0, "eval_runs": 0,
                                                       "progress": False}, device="cpu")
    finally:
        METHODS._items.pop("toy_unflagged")
    assert torch.isfinite(res.synset.images).all()
