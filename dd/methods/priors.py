"""Committee priors: how good each member is as a lone teacher, measured by dd and cached beside the teacher.

'distilled' (the paper's prior): a lone CDA run from the member (`prior_ipc` images per class, `prior_iterations`,
starting from real images when the committee's set does, else from noise; seed 0) is a nested run plan
(`prior_plan`) that the driver runs like any run, in a directory of its own beside the teacher: it checkpoints, a
killed prior resumes, and a finished one is reused (its checkpoint's identity matches: no step is run again). A
fresh `model` network trained on its set under the protocol the committee's own set is scored with (the member as
the only teacher) is scored on a validation split carved from the training data (never the test split); the CDA
run distils the rest of the training data. 'teacher' (a cheap proxy): the member's own accuracy on that
validation split; optimistic when the member was trained on those images, as `ddtk buffer` teachers are.
Values are percentages, as the softmax temperatures of the paper's code expect.

Caches, beside a buffer teacher (`DIR/priors.json`, `DIR/priors/RUN/`) or a checkpoint (`FILE.priors.json`,
`FILE.priors/RUN/`): the values in priors.json, keyed by the sha256 of everything a value depends on (the member's
hash, the dataset, the mode and its settings), and the nested CDA runs, one directory per run identity. A
callable teacher has neither: its prior is measured every time (its nested run has no directory).
"""
from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Optional

from dd.data.base import base_name
from dd.utils import atomic_write_json, sha256_json, to_jsonable, versions

# the validation split a prior is scored on (the nested CDA run distils the rest)
PRIOR_SPLIT = {"fraction": 0.1, "seed": 0}
# the nested run's driver options besides its iterations: no validation, no report (the prior is scored here);
# the checkpoint cadence is the driver's default
PRIOR_RUN = {"eval_every": 0, "eval_runs": 0, "baselines": (), "progress": False}
PRIOR_SEED = 0  # every member's lone CDA run uses seed 0, whatever the committee's seed
LOCK_POLL_S = 1.0  # how often a prior run held by another process is tried again


def cache_path(source) -> Optional[Path]:
    if source.kind == "buffer":
        from dd.teachers import split_spec

        return Path(split_spec(source.spec)[0]) / "priors.json"
    if source.kind == "file":
        return Path(source.spec + ".priors.json")
    return None


def runs_dir(source) -> Optional[Path]:
    """Where a member's nested prior runs live: beside its value cache (DIR/priors/, FILE.priors/); None for a
    callable. Beside the teacher, not under a committee's OUT: every committee the member sits in reuses them."""
    path = cache_path(source)
    return path.with_suffix("") if path is not None else None


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


def prior_plan(source, train, config, device):
    """The member's lone CDA run as a RunPlan: CV-DD's recover options (every CDAConfig field of `config`), the
    prior's start, no stored labels, `prior_ipc` x `prior_iterations` on `train`, seed 0; its directory is
    runs_dir/cda-ipcN-HASH, HASH naming its identity and the split (None for a callable member)."""
    from dd.methods.plan import content_identity, make_plan
    from dd.methods.sre2l import CDAConfig

    values = {f.name: getattr(config, f.name) for f in fields(CDAConfig)}
    values.update(init=prior_init(config), relabel_epochs=0)
    kwargs = dict(teachers=[source], config=values, run={**PRIOR_RUN, "iterations": config.prior_iterations},
                  device=device, seed=PRIOR_SEED)
    plan = make_plan("cda", train, config.prior_ipc, **kwargs)
    root = runs_dir(source)
    if root is None:
        return plan
    # named by what the run is (its inputs by content), then planned again in its directory so that its identity
    # names the member relative to it, as every run's does
    tag = sha256_json({"identity": content_identity(plan.identity), "split": PRIOR_SPLIT})[:16]
    return make_plan("cda", train, config.prior_ipc, out=root / f"cda-ipc{config.prior_ipc}-{tag}", **kwargs)


def member_priors(sources, dataset, config, device, protocol) -> list[dict]:
    """One {'value', 'mode', 'key', 'cached'} per member, from the cache when its key matches, else measured.
    `protocol`: how the committee's set will be scored (its epochs are replaced by prior_epochs)."""
    out = []
    for src in sources:
        settings = prior_settings(src, dataset, config, protocol)
        key = sha256_json(settings)
        path = cache_path(src)
        cached = _cached(path, key)
        if cached is not None:
            out.append({"value": cached, "mode": config.prior, "key": key, "cached": True})
            continue
        value, run_dir = measure_prior(src, dataset, config, device, protocol)
        if path is None:
            out.append({"value": value, "mode": config.prior, "key": key, "cached": False})
            continue
        from dd.lock import OutputLock

        with OutputLock(path.parent, name=f"{path.name}.lock", wait_s=60.0):  # read-modify-write, one process at a time
            cache = json.loads(path.read_text()) if path.exists() else {}
            entry = {"value": value, "settings": settings, "versions": versions()}
            if run_dir is not None:
                entry["run"] = str(Path(run_dir).relative_to(path.parent))
            cache[key] = entry
            atomic_write_json(path, cache)
        out.append({"value": value, "mode": config.prior, "key": key, "cached": False})
    return out


def _cached(path: Optional[Path], key: str) -> Optional[float]:
    if path is None or not path.exists():
        return None
    entry = json.loads(path.read_text()).get(key)
    return float(entry["value"]) if entry is not None else None


def measure_prior(source, dataset, config, device, protocol) -> tuple[float, Optional[Path]]:
    """(the member's prior in percent, its nested run's directory or None); see the module docstring. Seeded, so a
    rerun measures the same value."""
    from dd.eval import accuracy, evaluate

    train, val = dataset.split_validation(PRIOR_SPLIT["fraction"], seed=PRIOR_SPLIT["seed"])
    teacher = source.module(dataset, device)
    if config.prior == "teacher":
        return 100.0 * accuracy(teacher, val.test.to(device), val.test_labels.to(device)), None
    if config.prior != "distilled":
        raise ValueError(f"unknown prior '{config.prior}'; choose 'distilled' or 'teacher'")
    plan = prior_plan(source, train, config, device)
    s = _run_waiting(plan).synset
    s.meta["dataset"] = base_name(dataset.name)
    row = evaluate(s, config.model, protocol.with_(epochs=config.prior_epochs), runs=1, dataset=val,
                   device=device, teacher=teacher, progress=False)
    return 100.0 * row.mean, plan.out


def _run_waiting(plan):
    """Runs the nested plan (or resumes or reuses its directory); while another process holds that directory (the
    same member's prior for another committee) waits for it, then reuses its finished run."""
    from dd.lock import OutputLocked
    from dd.methods.driver import run_plan

    told = False
    while True:
        try:
            return run_plan(plan)
        except OutputLocked as e:
            if not told:
                print(f"waiting for the prior run in '{plan.out}': {e}")
                told = True
        time.sleep(LOCK_POLL_S)
