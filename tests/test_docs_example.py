"""The example method of docs/adding_a_method.md runs through dd's own registry, driver and CLI."""
import sys
from pathlib import Path

import pytest
import torch

from dd.methods import build_method, distill

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.fixture(scope="module", autouse=True)
def importable():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def test_herding_picks_images_whose_mean_features_match_the_class_mean():
    m = build_method("herding:herding", "digits", 5, {"model": "convnet-d2"}, seed=0)
    for it in range(5):
        m.step(it)
    g = torch.Generator().manual_seed(1)
    for c, f in enumerate(m.feats):
        assert len(set(m.picked[c])) == 5  # distinct real images
        herd = (f.mean(0) - f[m.picked[c]].mean(0)).norm()
        rand = torch.stack([(f.mean(0) - f[torch.randperm(len(f), generator=g)[:5]].mean(0)).norm() for _ in range(50)])
        assert herd < rand.quantile(0.05)  # better than 95% of random picks of the same size
    s = m.current_set()
    real = m.real.all_of(0).cpu()
    assert all(any(torch.equal(img, r) for r in real) for img in s.images[:5])


def test_herding_through_the_command_line(tmp_path):
    from dd.cli import main

    assert main(["distill", "--method", "herding:herding", "--dataset", "digits", "--ipc", "2", "--model", "convnet-d2",
                 "--iterations", "2", "--eval-every", "0", "--eval-runs", "0", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "synset.safetensors").exists()
    res = distill("herding", "digits", 2, config={"model": "convnet-d2"},
                  run={"iterations": 2, "eval_every": 0, "eval_runs": 0, "progress": False})
    assert res.synset.meta["method"] == "herding"


def test_the_console_script_is_ddtk_not_the_posix_dd():
    """An activated environment must not shadow coreutils' dd: the command is ddtk (and python -m dd.cli)."""
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.value.startswith("dd.")}
    assert scripts == {"ddtk": "dd.cli:main"}
