"""The cross-architecture evaluation harness: fresh networks trained from scratch on a set, tested on the test split.

`evaluate` scores a synthetic set; `evaluate_random` and `evaluate_full` score the random-real and
full-data baselines under the identical protocol; `build_report` puts them side by side.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dd.data import ImageDataset, base_name, load_dataset
from dd.eval.protocol import Protocol, get_protocol
from dd.eval.train import accuracy, train_model
from dd.models import build_model
from dd.synset import SyntheticSet
from dd.utils import check_ipc, resolve_device


@dataclass
class EvalResult:
    """Accuracies of `runs` fresh networks; mean and std (population std, as the DC/MTT code reports)."""

    name: str
    arch: str
    dataset: str
    accs: list[float]
    protocol: dict
    ipc: Optional[int] = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs))

    @property
    def std(self) -> float:
        return float(np.std(self.accs))

    def __str__(self) -> str:
        return f"{self.name} [{self.arch}, {self.dataset}, ipc={self.ipc}]: {100 * self.mean:.2f} ± {100 * self.std:.2f} % ({len(self.accs)} runs)"

    def to_dict(self) -> dict:
        return {"name": self.name, "arch": self.arch, "dataset": self.dataset, "ipc": self.ipc, "accs": self.accs,
                "mean": self.mean, "std": self.std, "runs": len(self.accs), "seconds": self.seconds,
                "protocol": self.protocol, **({"extra": self.extra} if self.extra else {})}


def dataset_for(synset: SyntheticSet, root: str | None = None, **options) -> ImageDataset:
    """The real dataset a set was distilled from (its test split scores the set); `options` are data options
    (dd.data.DATA_OPTIONS), and an image tree is read at the set's resolution unless `res` is given."""
    name = synset.meta.get("dataset")
    if not name:
        raise ValueError("the synthetic set does not record its dataset; pass dataset=...")
    return load_dataset(name, root=root, zca=bool(synset.meta.get("zca")), **options_for_set(name, synset.meta, options))


def options_for_set(name: str, meta: dict, options: dict) -> dict:
    """Data options for reading a set's dataset: `res` from the set's square image size when the dataset takes one
    (an ImageNet tree or folder:PATH read at another resolution would not match the set) and none is given."""
    from dd.data import takes_option

    size = meta.get("image_size")
    if options.get("res") is None and size and len(size) == 2 and size[0] == size[1] and takes_option(name, "res"):
        return {**options, "res": int(size[0])}
    return dict(options)


def train_and_test(images: torch.Tensor, labels: torch.Tensor, dataset: ImageDataset, arch: str, protocol: Protocol,
                   *, seed: int, device: torch.device, lr: Optional[float] = None, teacher=None, stored=None,
                   model_options: Optional[dict] = None, progress: bool = False) -> float:
    """One run: seeded fresh model, trained on (images, labels), accuracy on dataset's test split.

    images: a tensor (a synthetic set) or an ImageSource (a dataset's training split, read batch by batch).
    """
    torch.manual_seed(seed)
    model = build_model(arch, dataset.channels, dataset.num_classes, dataset.image_size, **(model_options or {})).to(device)
    if teacher is not None:
        teacher = teacher.to(device)
    train_model(model, images.to(device), labels.to(device), protocol, lr=lr, seed=seed, flip_ok=dataset.flip_ok,
                teacher=teacher, stored=stored, progress=progress, desc=f"{arch} seed {seed}")
    return accuracy(model, dataset.test.to(device), dataset.test_labels.to(device), protocol.test_batch_size)


LR_SEARCH_VAL_FRACTION = 0.1  # the validation split the lr search scores on: 10% of the training data, stratified,
LR_SEARCH_VAL_SEED = 0  # seed 0 (the split `ddtk distill` validates on by default)


def search_lr(images: torch.Tensor, labels: torch.Tensor, dataset: ImageDataset, arch: str, protocol: Protocol,
              candidates: Sequence[float], *, seed: int, device, teacher=None, stored=None,
              model_options: Optional[dict] = None) -> tuple[float, dict[float, Optional[float]]]:
    """Picks the training lr for (images, labels) on `arch` by validation accuracy: one fresh network per candidate,
    trained under `protocol` with that lr and scored on a stratified validation split carved from the *training*
    data (never the test split), so an architecture the set was not distilled on gets a tuned lr without the test
    set choosing it.

    Returns (best lr, {lr: validation accuracy}); a candidate whose training diverges scores None and is never
    chosen; ties go to the earlier candidate.
    """
    if not candidates:
        raise ValueError("the lr search needs at least one candidate lr")
    bad = [c for c in candidates if not (math.isfinite(c) and c > 0)]
    if bad:
        raise ValueError(f"lr candidates must be positive numbers, got {bad}")
    _, val = dataset.split_validation(LR_SEARCH_VAL_FRACTION, seed=LR_SEARCH_VAL_SEED)
    scores: dict[float, Optional[float]] = {}
    for lr in dict.fromkeys(float(c) for c in candidates):
        try:
            scores[lr] = train_and_test(images, labels, val, arch, protocol, seed=seed, device=device, lr=lr,
                                        teacher=teacher, stored=stored, model_options=model_options)
        except FloatingPointError:  # train_model stops a diverging run; this lr is simply not a choice
            scores[lr] = None
    finite = {lr: acc for lr, acc in scores.items() if acc is not None}
    if not finite:
        raise ValueError(f"every candidate lr diverged on {arch} ({', '.join(f'{c:g}' for c in scores)}); "
                         "give smaller --lr-search values")
    best = max(finite, key=finite.get)  # max keeps the first of equal scores
    return best, scores


def _searched(lr_search, search: Callable[[], tuple[float, dict]]) -> tuple[Optional[float], dict]:
    """(chosen lr, the EvalResult.extra fields recording the search), or (None, {}) when there is no search."""
    if not lr_search:
        return None, {}
    best, scores = search()
    return best, {"lr_search": {f"{lr:g}": acc for lr, acc in scores.items()},
                  "lr_search_split": f"{LR_SEARCH_VAL_FRACTION:g} of the training data, seed {LR_SEARCH_VAL_SEED}"}


def _runs(name: str, make_data: Callable[[int], tuple[torch.Tensor, torch.Tensor, Optional[float]]], dataset: ImageDataset,
          arch: str, protocol: Protocol, runs: int, seed: int, device, ipc, teacher, model_options, progress,
          stored=None) -> EvalResult:
    device = resolve_device(device)
    accs = []
    start = time.perf_counter()
    bar = tqdm(range(runs), desc=f"eval {name} on {arch}", disable=not progress, leave=False)
    for r in bar:
        x, y, lr = make_data(seed + r)
        accs.append(train_and_test(x, y, dataset, arch, protocol, seed=seed + r, device=device, lr=lr, teacher=teacher,
                                   stored=stored, model_options=model_options))
        bar.set_postfix(acc=f"{100 * accs[-1]:.2f}")
    return EvalResult(name, arch, dataset.name, accs, protocol.to_dict(), ipc, time.perf_counter() - start)


def evaluate(synset: SyntheticSet, arch: str = "convnet", protocol: str | Protocol = "hard", runs: int = 5, *,
             dataset: Optional[ImageDataset] = None, device="auto", seed: int = 0, teacher=None, labels=None,
             model_options: Optional[dict] = None, progress: bool = True, name: str = "synthetic",
             lr_search: Optional[Sequence[float]] = None) -> EvalResult:
    """Trains `runs` fresh `arch` networks on `synset` and reports test accuracy (last epoch) mean ± std.

    teacher: the module that labels each view under the teacher protocol; labels: a `ddtk relabel` directory
    (or StoredLabels) to train on instead of running the teacher. lr_search: candidate lrs, one chosen per
    architecture on a validation split of the training data (see `search_lr`); a learned lr (MTT) the protocol
    would use joins the candidates (first, so it wins ties), so the search can keep it but is never forced to.
    """
    protocol = get_protocol(protocol)
    dataset = dataset or dataset_for(synset)
    _check_compatible(synset, dataset)
    lr = synset.lr if (protocol.use_learned_lr and synset.lr is not None) else None
    images = synset.images.detach()
    stored = None
    if labels is not None:
        from dd.eval.labels import StoredLabels

        stored = labels if isinstance(labels, StoredLabels) else StoredLabels(labels)
    y = synset.labels.detach()
    searched, record = _searched(lr_search, lambda: search_lr(
        images, y, dataset, arch, protocol, [*([lr] if lr is not None else []), *lr_search], seed=seed,
        device=resolve_device(device), teacher=teacher, stored=stored, model_options=model_options))
    if searched is not None and lr is not None:
        record["learned_lr"] = lr
    lr = searched if searched is not None else lr
    res = _runs(name, lambda s: (images, y, lr), dataset, arch, protocol, runs, seed, device, synset.ipc, teacher,
                model_options, progress, stored)
    res.extra["lr"] = lr if lr is not None else protocol.lr
    res.extra.update(record)
    res.extra["image_bytes"] = images.numel() * images.element_size()
    res.extra["label_bytes"] = stored.nbytes if stored is not None else y.numel() * y.element_size()
    if stored is not None:
        res.extra["labels"] = str(stored.path)
    return res


def evaluate_random(dataset: ImageDataset, ipc: int, arch: str = "convnet", protocol: str | Protocol = "hard",
                    runs: int = 5, *, device="auto", seed: int = 0, teacher=None, model_options=None,
                    progress: bool = True, lr_search: Optional[Sequence[float]] = None) -> EvalResult:
    """Random-real baseline: a fresh random selection of `ipc` images per class for every run (same protocol and
    teacher as the set it is compared with).

    lr_search: candidate lrs, chosen per architecture as for the set (see `search_lr`) on one random selection
    drawn with the run's seed from the training data *minus* the validation split, so the search never scores
    a network on images it trained on.
    """
    check_ipc(ipc)
    protocol = get_protocol(protocol)
    hard = _for_real_images(protocol)

    def search():
        train_part, _ = dataset.split_validation(LR_SEARCH_VAL_FRACTION, seed=LR_SEARCH_VAL_SEED)
        sel = SyntheticSet.from_real(train_part, ipc, torch.Generator().manual_seed(10_000 + seed))
        return search_lr(sel.images, sel.labels, dataset, arch, hard, lr_search, seed=seed,
                         device=resolve_device(device), teacher=teacher, model_options=model_options)

    lr, record = _searched(lr_search, search)

    def make(s):
        sel = SyntheticSet.from_real(dataset, ipc, torch.Generator().manual_seed(10_000 + s))
        return sel.images, sel.labels, lr

    res = _runs("random-real", make, dataset, arch, hard, runs, seed, device, ipc, teacher, model_options, progress)
    if lr_search:
        res.extra.update(lr=lr, **record)
    return res


def evaluate_full(dataset: ImageDataset, arch: str = "convnet", protocol: str | Protocol = "hard", runs: int = 1, *,
                  epochs: Optional[int] = None, device="auto", seed: int = 0, teacher=None, model_options=None,
                  progress: bool = True) -> EvalResult:
    """Full-data baseline: the whole training split under the same protocol (epochs may be overridden), read batch
    by batch from the dataset's source (uint8 normalized per batch, or files decoded by DataLoader workers)."""
    protocol = get_protocol(protocol).with_(epochs=epochs)
    hard = _for_real_images(protocol)
    x, y = dataset.train, dataset.train_labels
    return _runs("full", lambda s: (x, y, None), dataset, arch, hard, runs, seed, device, None, teacher, model_options,
                 progress)


def _for_real_images(protocol: Protocol) -> Protocol:
    """Baselines train on real images with class ids: a soft-label protocol falls back to hard labels."""
    return protocol.with_(labels="hard") if protocol.labels == "soft" else protocol


def _check_compatible(synset: SyntheticSet, dataset: ImageDataset) -> None:
    shape = tuple(synset.images.shape[1:])
    want = (dataset.channels, *dataset.image_size)
    if shape != want:
        raise ValueError(f"set images are {shape} but dataset '{dataset.name}' has {want}; evaluate on the dataset "
                         "the set was distilled from")
    if synset.num_classes != dataset.num_classes:
        raise ValueError(f"set has {synset.num_classes} classes, dataset '{dataset.name}' has {dataset.num_classes}")
    recorded = synset.meta.get("dataset")
    if recorded and recorded != base_name(dataset.name):
        raise ValueError(f"set was distilled from '{recorded}' but is being evaluated on '{dataset.name}'")


def cross_arch(synset: SyntheticSet, archs: Sequence[str], protocol: str | Protocol = "hard", runs: int = 5,
               **kwargs) -> list[EvalResult]:
    """One set, several architectures, one call."""
    return [evaluate(synset, arch, protocol, runs, **kwargs) for arch in archs]


def build_report(synset: Optional[SyntheticSet], archs: Sequence[str], protocol: str | Protocol = "hard", runs: int = 5,
                 *, dataset: Optional[ImageDataset] = None, ipc: Optional[int] = None,
                 baselines: Sequence[str] = ("random", "full"), full_epochs: Optional[int] = 30, full_runs: int = 1,
                 device="auto", seed: int = 0, teacher=None, labels=None, progress: bool = True,
                 lr_search: Optional[Sequence[float]] = None) -> "Report":
    """Synthetic set (if any) and the baselines, for each architecture, under one protocol (and one teacher).

    lr_search: candidate lrs searched per architecture on a validation split of the training data, for the set and
    the random-real baseline alike; the full-data baseline keeps the protocol lr.
    """
    from dd.eval.report import Report

    protocol = get_protocol(protocol)
    if dataset is None:
        if synset is None:
            raise ValueError("pass a synthetic set or a dataset")
        dataset = dataset_for(synset)
    ipc = ipc if ipc is not None else (synset.ipc if synset is not None else None)
    rows: list[EvalResult] = []
    for arch in archs:
        if synset is not None:
            rows.append(evaluate(synset, arch, protocol, runs, dataset=dataset, device=device, seed=seed,
                                 teacher=teacher, labels=labels, progress=progress,
                                 name=synset.meta.get("method", "synthetic"), lr_search=lr_search))
        if "random" in baselines:
            if ipc is None:
                raise ValueError("the random-real baseline needs --ipc")
            rows.append(evaluate_random(dataset, ipc, arch, protocol, runs, device=device, seed=seed, teacher=teacher,
                                        progress=progress, lr_search=lr_search))
        if "full" in baselines:
            rows.append(evaluate_full(dataset, arch, protocol, full_runs, epochs=full_epochs, device=device, seed=seed,
                                      teacher=teacher, progress=progress))
    meta = {"dataset": dataset.name, "protocol": protocol.to_dict(), "runs": runs,
            "synset": synset.meta if synset is not None else None}
    if lr_search:
        meta["lr_search"] = [float(c) for c in lr_search]
    return Report(rows, meta=meta)
