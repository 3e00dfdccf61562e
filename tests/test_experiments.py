"""Every config in experiments/ names a registered method and only options its Config and RunConfig know."""
import json
from pathlib import Path

import pytest

from dd.methods import METHODS
from dd.methods.base import config_from_dict
from dd.methods.driver import RunConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.json"))


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_into_its_method(path):
    cfg = json.loads(path.read_text())
    method = METHODS.get(cfg.pop("method"))
    for key in ("dataset", "ipc", "notes", "teachers", "teacher_model", "buffer"):
        cfg.pop(key, None)
    run = cfg.pop("run", {})
    config_from_dict(method.Config, cfg)  # raises on an unknown or mistyped option
    config_from_dict(RunConfig, run)
