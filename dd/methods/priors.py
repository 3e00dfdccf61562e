"""Committee priors: how good each member is as a lone teacher, measured by dd and cached beside the teacher.

'distilled' (the paper's prior): CDA recovers `prior_ipc` images per class from the member alone (`prior_iterations`,
starting from real images when the committee's set does, else from noise), and a fresh `model` network trained on
them under the protocol the committee's own set is scored with (the member as the only teacher) is scored on a
validation split carved from the training data (never the test split). 'teacher' (a cheap proxy): the member's own accuracy
on that validation split; optimistic when the member was trained on those images, as `ddtk buffer` teachers are.
Values are percentages, as the softmax temperatures of the paper's code expect. The cache is `priors.json` in a
buffer teacher's directory or `FILE.priors.json` beside a checkpoint, keyed by the sha256 of everything the value
depends on (the member's hash, the dataset, the mode and its settings); callables are measured every time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from dd.utils import atomic_write_json, sha256_json, to_jsonable, versions
from dd.data.base import base_name


def cache_path(source) -> Optional[Path]:
    if source.kind == "buffer":
        from dd.teachers import split_spec

        return Path(split_spec(source.spec)[0]) / "priors.json"
    if source.kind == "file":
        return Path(source.spec + ".priors.json")
    return None


def prior_init(config) -> str:
    """The lone member's CDA start: real images when the committee's set starts from real ones (CDA has no
    committee to pick 'medium' images with), else noise."""
    return "real" if config.init in ("real", "medium") else "noise"


def prior_settings(source, dataset, config, protocol) -> dict:
    keys = ("prior", "prior_ipc", "prior_iterations", "prior_epochs", "model", "lr", "r_bn", "first_bn_weight", "jitter",
            "crop_scale", "schedule", "milestone", "beta1", "beta2")
    return to_jsonable({"member": source.sha256, "dataset": base_name(dataset.name), "zca": dataset.zca is not None,
                        **{k: getattr(config, k) for k in keys}, "init": prior_init(config),
                        "protocol": protocol.to_dict()})


def member_priors(sources, dataset, config, device, protocol) -> list[dict]:
    """One {'value', 'mode', 'key', 'cached'} per member, from the cache when its key matches, else measured.
    `protocol`: how the committee's set will be scored (its epochs are replaced by prior_epochs)."""
    out = []
    for src in sources:
        settings = prior_settings(src, dataset, config, protocol)
        key = sha256_json(settings)
        path = cache_path(src)
        cache = json.loads(path.read_text()) if path is not None and path.exists() else {}
        if key in cache:
            out.append({"value": float(cache[key]["value"]), "mode": config.prior, "key": key, "cached": True})
            continue
        value = measure_prior(src, dataset, config, device, protocol)
        if path is not None:
            cache[key] = {"value": value, "settings": settings, "versions": versions()}
            atomic_write_json(path, cache)
        out.append({"value": value, "mode": config.prior, "key": key, "cached": False})
    return out


def measure_prior(source, dataset, config, device, protocol) -> float:
    """The member's prior in percent (see the module docstring); seeded, so a rerun measures the same value."""
    from dd.eval import accuracy, evaluate

    train, val = dataset.split_validation(0.1, seed=0)
    teacher = source.module(dataset, device)
    if config.prior == "teacher":
        return 100.0 * accuracy(teacher, val.test.to(device), val.test_labels.to(device))
    if config.prior != "distilled":
        raise ValueError(f"unknown prior '{config.prior}'; choose 'distilled' or 'teacher'")
    from dd.methods.base import Inputs
    from dd.methods.sre2l import CDA, CDAConfig

    keep = {f for f in CDAConfig.__dataclass_fields__}
    cfg = CDAConfig(**{**{k: v for k, v in config.__dict__.items() if k in keep}, "init": prior_init(config), "relabel_epochs": 0})
    m = CDA(cfg, train, config.prior_ipc, device, torch.Generator().manual_seed(0), Inputs(teachers=[source]))
    m.init_synset()
    for it in range(m.num_steps(config.prior_iterations)):
        m.step(it)
    s = m.current_set()
    s.meta["dataset"] = base_name(dataset.name)
    row = evaluate(s, config.model, protocol.with_(epochs=config.prior_epochs), runs=1, dataset=val,
                   device=device, teacher=teacher, progress=False)
    return 100.0 * row.mean
