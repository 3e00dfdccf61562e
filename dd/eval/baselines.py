"""Baselines at the same budget: coreset rows (herding, k-center, forgetting) beside random and full, and the budget
(image bytes, label bytes, the wall time that made it) every report row carries.

Bytes are those of the tensors a row trains on as dd stores them (float32 images, int64 class ids, float labels,
or a `ddtk relabel` directory's files); a row scored under the teacher protocol without stored labels gets its
labels from the teacher on every view, which no byte count of the set shows, so the row says so.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

from dd.coresets import SELECTIONS, Selector

BASELINES = ("random", "full", *SELECTIONS)


def check_baselines(baselines: Sequence[str], option: str = "baselines") -> list[str]:
    """The baseline names, each one of BASELINES; anything else is a ValueError naming `option` and the choices."""
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise ValueError(f"{option}: unknown baseline(s) {bad}; choose among {', '.join(BASELINES)}")
    return list(baselines)


def budget(image_bytes: int, label_bytes: int, seconds: Optional[float], label_source: str) -> dict:
    """A row's budget fields; `labels_exceed_images` when the labels take more bytes than the images."""
    return {"image_bytes": int(image_bytes), "label_bytes": int(label_bytes),
            "made_seconds": None if seconds is None else float(seconds), "label_source": label_source,
            "labels_exceed_images": int(label_bytes) > int(image_bytes)}


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def label_source(labels: torch.Tensor, protocol, stored=None) -> str:
    """Where a row's training targets come from, in words."""
    if stored is not None:
        return f"stored teacher labels ({stored.path})"
    from dd.eval.protocol import protocol_rule

    if protocol_rule(protocol.labels).needs_teacher:
        return "teacher on every view (not stored)"
    if labels.ndim == 2 and protocol.labels == "soft":
        return "soft labels"
    return "class ids"


def set_budget(images: torch.Tensor, labels: torch.Tensor, protocol, stored=None, meta: Optional[dict] = None) -> dict:
    """A set's budget: its image tensor, its label tensor (or stored labels' files; under the hard protocol, which
    trains on their argmax, the class ids of a set's label distributions), the wall time its metadata
    records (`wall_seconds`, written by `ddtk distill` and by the coreset selections; None when not recorded)."""
    source = label_source(labels, protocol, stored)
    if stored is not None:
        nbytes = stored.nbytes
    elif labels.ndim == 2 and protocol.labels == "hard":  # the hard rule trains on the distributions' argmax
        nbytes, source = 8 * labels.shape[0], "class ids (argmax of the set's label distributions)"
    else:
        nbytes = tensor_bytes(labels)
    return budget(tensor_bytes(images), nbytes, (meta or {}).get("wall_seconds"), source)


def real_budget(n: int, dataset, protocol, seconds: Optional[float]) -> dict:
    """The budget of n real training images with class ids (random, full and coreset rows), as float32/int64."""
    per_image = 4 * dataset.channels * dataset.image_size[0] * dataset.image_size[1]
    return budget(n * per_image, 8 * n, seconds, label_source(torch.zeros(0), protocol))


def coreset_row(selector: Selector, method: str, ipc: int, arch: str, protocol, runs: int, *, seed: int = 0,
                teacher=None, model_options=None, lr_search: Optional[Sequence[float]] = None):
    """A report row of `method`'s selection (hard labels) under `protocol`, as the random-real row: run s trains on
    the selection drawn with generator seed 10_000 + s (k-center's first center, forgetting's ties; herding has no
    randomness). Selections are made here, before any run; the row's made_seconds is the first one's wall time.
    lr_search: as for random real, on a selection made from the training data minus the validation split."""
    from dd.eval.harness import LR_SEARCH_VAL_FRACTION, LR_SEARCH_VAL_SEED, LrSearch, RowPlan, lr_candidates
    from dd.eval.protocol import for_real_images, get_protocol
    from dd.eval.rules import EvalInputs

    protocol = for_real_images(get_protocol(protocol))
    sets = {s: selector.select(method, ipc, torch.Generator().manual_seed(10_000 + s)) for s in range(seed, seed + runs)}

    def search_data():
        train_part, val = selector.dataset.split_validation(LR_SEARCH_VAL_FRACTION, seed=LR_SEARCH_VAL_SEED)
        part = Selector(train_part, selector.network, device=selector.device, seed=selector.seed,
                        teacher_model=selector.teacher_model)
        sel = part.select(method, ipc, torch.Generator().manual_seed(10_000 + seed))
        return sel.images, sel.labels, val

    search = LrSearch(lr_candidates(lr_search), functools.cache(search_data)) if lr_search else None
    first = sets[seed]
    extra = {**real_budget(len(first), selector.dataset, protocol, first.meta["wall_seconds"]),
             "coreset_network": selector.source}
    return RowPlan(method, arch, selector.dataset, protocol, runs, seed, ipc,
                   lambda s: (sets[s].images, sets[s].labels), len(first), search=search,
                   inputs=EvalInputs(teacher, None, model_options), extra=extra)
