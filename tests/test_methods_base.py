"""The synthesizer interface's shared pieces: typed options, optimizer checkpoints, run identity."""
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from dd.methods.base import MethodConfig, config_from_dict, load_optimizer_state, optimizer_state
from dd.methods.driver import RunConfig, distill


@dataclass
class _Cfg(MethodConfig):
    lr_img: float = 1.0
    steps: int = 3
    ema: Optional[float] = None


def test_config_from_dict_coerces_cli_strings():
    cfg = config_from_dict(_Cfg, {"lr_img": "1e2", "steps": "7", "dsa": "false", "ema": "0.999", "model": "convnet-w32"})
    assert cfg.lr_img == 100.0 and cfg.steps == 7 and cfg.dsa is False and cfg.ema == 0.999
    assert config_from_dict(_Cfg, {"ema": "none"}).ema is None


def test_config_from_dict_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown option.*lr_imgs.*known"):
        config_from_dict(_Cfg, {"lr_imgs": 3})
    with pytest.raises(ValueError, match="true/false"):
        config_from_dict(_Cfg, {"dsa": "maybe"})


def _sgd_run(steps, resume_at=None):
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    target = torch.arange(5.0)
    for k in range(steps):
        if resume_at is not None and k == resume_at:
            tensors, info = optimizer_state(opt, "opt")
            saved_w = w.detach().clone()
            w = saved_w.clone().requires_grad_(True)  # a fresh process would rebuild everything
            opt = torch.optim.SGD([w], lr=0.5, momentum=0.0)  # wrong hyperparameters on purpose: restored below
            load_optimizer_state(opt, "opt", tensors, info)
        loss = ((w - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


def test_optimizer_state_round_trip_continues_exactly():
    assert torch.equal(_sgd_run(6), _sgd_run(6, resume_at=3))


def test_checkpoint_of_another_run_is_refused(tmp_path):
    run = RunConfig(iterations=2, eval_every=0, eval_runs=0, checkpoint_every=1, progress=False)
    distill("dm", "digits", 1, out=tmp_path, config={"model": "convnet-d2", "batch_real": 8}, run=run)
    with pytest.raises(ValueError, match=r"different run.*batch_real: checkpoint 8, now 16"):
        distill("dm", "digits", 1, out=tmp_path, config={"model": "convnet-d2", "batch_real": 16}, run=run)


def test_unknown_method_lists_known_ones():
    with pytest.raises(KeyError, match="known methods: .*dm"):
        distill("nope", "digits", 1)
