"""The cross-architecture evaluation harness: fresh networks trained from scratch on a set, tested on the test split.

`evaluate` scores a synthetic set; `evaluate_random` and `evaluate_full` score the random-real and
full-data baselines under the identical protocol; `build_report` puts them side by side. Each row is first a plan
(`set_row`, `random_row`, `full_row`) whose runs `run_rows` computes, in one process or dealt to torchrun's ranks.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dd.data import ImageDataset, base_name, load_dataset
from dd.distributed import ProcessGroup, deal
from dd.eval.baselines import SELECTIONS, check_baselines, coreset_row, real_budget, set_budget
from dd.eval.protocol import Protocol, for_real_images, get_protocol
from dd.eval.rules import EvalInputs
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
                   *, seed: int, device: torch.device, lr: Optional[float] = None, inputs: Optional[EvalInputs] = None,
                   progress: bool = False) -> float:
    """One run: seeded fresh model, trained on (images, labels), accuracy on dataset's test split.

    images: a tensor (a synthetic set) or an ImageSource (a dataset's training split, read batch by batch); inputs:
    the teacher, stored labels and model options the protocol and the architecture need (dd.eval.rules.EvalInputs).
    """
    inputs = inputs or EvalInputs()
    torch.manual_seed(seed)
    model = build_model(arch, dataset.channels, dataset.num_classes, dataset.image_size,
                        **(inputs.model_options or {})).to(device)
    if inputs.teacher is not None:
        inputs = replace(inputs, teacher=inputs.teacher.to(device))
    train_model(model, images.to(device), labels.to(device), protocol, lr=lr, seed=seed, flip_ok=dataset.flip_ok,
                inputs=inputs, progress=progress, desc=f"{arch} seed {seed}")
    return accuracy(model, dataset.test.to(device), dataset.test_labels.to(device), protocol.test_batch_size)


LR_SEARCH_VAL_FRACTION = 0.1  # the validation split the lr search scores on: 10% of the training data, stratified,
LR_SEARCH_VAL_SEED = 0  # seed 0 (the split `ddtk distill` validates on by default)


def lr_candidates(candidates: Sequence[float]) -> list[float]:
    """The distinct candidate lrs in their order (a row's search, random, set and coreset rows alike); none, or
    anything but positive finite numbers, is an error."""
    if not candidates:
        raise ValueError("the lr search needs at least one candidate lr")
    bad = [c for c in candidates if not (math.isfinite(c) and c > 0)]
    if bad:
        raise ValueError(f"lr candidates must be positive numbers, got {bad}")
    return list(dict.fromkeys(float(c) for c in candidates))


def _score_lr(images: torch.Tensor, labels: torch.Tensor, val: ImageDataset, arch: str, protocol: Protocol, lr: float,
              *, seed: int, device, inputs: Optional[EvalInputs] = None) -> Optional[float]:
    """One candidate's validation accuracy: a fresh network trained with `lr`; None when its training diverges
    (train_model stops a diverging run; that lr is then simply not a choice)."""
    try:
        return train_and_test(images, labels, val, arch, protocol, seed=seed, device=device, lr=lr, inputs=inputs)
    except FloatingPointError:
        return None


def _best_lr(scores: dict[float, Optional[float]], arch: str) -> float:
    """The candidate with the best validation accuracy (ties: the earlier one); an error when every one diverged."""
    finite = {lr: acc for lr, acc in scores.items() if acc is not None}
    if not finite:
        raise ValueError(f"every candidate lr diverged on {arch} ({', '.join(f'{c:g}' for c in scores)}); "
                         "give smaller --lr-search values")
    return max(finite, key=finite.get)  # max keeps the first of equal scores


def search_lr(images: torch.Tensor, labels: torch.Tensor, dataset: ImageDataset, arch: str, protocol: Protocol,
              candidates: Sequence[float], *, seed: int, device,
              inputs: Optional[EvalInputs] = None) -> tuple[float, dict[float, Optional[float]]]:
    """Picks the training lr for (images, labels) on `arch` by validation accuracy: one fresh network per candidate,
    trained under `protocol` with that lr and scored on a stratified validation split carved from the *training*
    data (never the test split), so an architecture the set was not distilled on gets a tuned lr without the test
    set choosing it.

    Returns (best lr, {lr: validation accuracy}); a candidate whose training diverges scores None and is never
    chosen; ties go to the earlier candidate.
    """
    lrs = lr_candidates(candidates)
    val = _validation(dataset)
    scores = {lr: _score_lr(images, labels, val, arch, protocol, lr, seed=seed, device=device, inputs=inputs)
              for lr in lrs}
    return _best_lr(scores, arch), scores


def _validation(dataset: ImageDataset) -> ImageDataset:
    """The validation split the lr search scores on (its test_* hold held-out training images)."""
    return dataset.split_validation(LR_SEARCH_VAL_FRACTION, seed=LR_SEARCH_VAL_SEED)[1]


def _search_record(scores: dict[float, Optional[float]]) -> dict:
    """The EvalResult.extra fields recording a search: every candidate's validation accuracy and the split."""
    return {"lr_search": {f"{lr:g}": acc for lr, acc in scores.items()},
            "lr_search_split": f"{LR_SEARCH_VAL_FRACTION:g} of the training data, seed {LR_SEARCH_VAL_SEED}"}


# ---- rows as plans: what each run trains on, so runs can be computed in any order and in any process -----------

@dataclass
class LrSearch:
    """How a row chooses its lr before its runs: every candidate trains a fresh network with the row's seed on
    `data()` = (images, labels, validation dataset), computed on first use only (a rank scoring no candidate of
    the row never carves the split). learned_lr: a set's learned lr among the candidates, recorded beside them."""

    candidates: list[float]
    data: Callable[[], tuple[torch.Tensor, torch.Tensor, ImageDataset]]
    learned_lr: Optional[float] = None


@dataclass
class RowPlan:
    """One report row before it runs.

    Run r trains a fresh network seeded with seed + r on `data(seed + r)` = (images, labels) and nothing carries over
    from one run (or one lr candidate) to the next, so the runs may be computed in any order, by any process, and
    give what one process running them in turn gives. lr: every run's lr (None: the protocol's) unless `search`
    chooses it; record_lr: extra['lr'] records the lr the runs used (the set's rows always; baselines after a
    search). train_size: images per run (with the architecture, the cost estimate that deals runs to ranks).
    extra: the row's fields known before training (storage bytes), after the lr fields. inputs: the teacher,
    stored labels and model options every run of the row trains with.
    """

    name: str
    arch: str
    dataset: ImageDataset
    protocol: Protocol
    runs: int
    seed: int
    ipc: Optional[int]
    data: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    train_size: int
    lr: Optional[float] = None
    search: Optional[LrSearch] = None
    record_lr: bool = False
    inputs: EvalInputs = field(default_factory=EvalInputs)
    extra: dict = field(default_factory=dict)


def set_row(synset: SyntheticSet, arch: str = "convnet", protocol: str | Protocol = "hard", runs: int = 5, *,
            dataset: Optional[ImageDataset] = None, seed: int = 0, teacher=None, labels=None,
            model_options: Optional[dict] = None, name: str = "synthetic",
            lr_search: Optional[Sequence[float]] = None) -> RowPlan:
    """The plan of `evaluate` (see there): the set's row, with its learned lr and storage bytes."""
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
    search = None
    if lr_search:
        search = LrSearch(lr_candidates([*([lr] if lr is not None else []), *lr_search]),
                          functools.cache(lambda: (images, y, _validation(dataset))), learned_lr=lr)
    extra = set_budget(images, y, protocol, stored, synset.meta)
    if stored is not None:
        extra["labels"] = str(stored.path)
    return RowPlan(name, arch, dataset, protocol, runs, seed, synset.ipc, lambda s: (images, y), len(images), lr=lr,
                   search=search, record_lr=True, inputs=EvalInputs(teacher, stored, model_options), extra=extra)


def random_row(dataset: ImageDataset, ipc: int, arch: str = "convnet", protocol: str | Protocol = "hard",
               runs: int = 5, *, seed: int = 0, teacher=None, model_options=None,
               lr_search: Optional[Sequence[float]] = None) -> RowPlan:
    """The plan of `evaluate_random` (see there): run seed s draws its selection with generator seed 10_000 + s."""
    check_ipc(ipc)
    hard = for_real_images(get_protocol(protocol))

    def search_data():
        train_part, val = dataset.split_validation(LR_SEARCH_VAL_FRACTION, seed=LR_SEARCH_VAL_SEED)
        sel = SyntheticSet.from_real(train_part, ipc, torch.Generator().manual_seed(10_000 + seed))
        return sel.images, sel.labels, val

    def data(s):
        sel = SyntheticSet.from_real(dataset, ipc, torch.Generator().manual_seed(10_000 + s))
        return sel.images, sel.labels

    search = LrSearch(lr_candidates(lr_search), functools.cache(search_data)) if lr_search else None
    n = ipc * dataset.num_classes
    return RowPlan("random-real", arch, dataset, hard, runs, seed, ipc, data, n, search=search,
                   inputs=EvalInputs(teacher, None, model_options), extra=real_budget(n, dataset, hard, 0.0))


def full_row(dataset: ImageDataset, arch: str = "convnet", protocol: str | Protocol = "hard", runs: int = 1, *,
             epochs: Optional[int] = None, seed: int = 0, teacher=None, model_options=None) -> RowPlan:
    """The plan of `evaluate_full` (see there): every run trains on the whole training split."""
    hard = for_real_images(get_protocol(protocol).with_(epochs=epochs))
    x, y = dataset.train, dataset.train_labels  # the source, read batch by batch (never one float tensor)
    return RowPlan("full", arch, dataset, hard, runs, seed, None, lambda s: (x, y), len(x),
                   inputs=EvalInputs(teacher, None, model_options), extra=real_budget(len(x), dataset, hard, 0.0))


def run_rows(rows: Sequence[RowPlan], device="auto", *, group: Optional[ProcessGroup] = None,
             progress: bool = True) -> list[EvalResult]:
    """Every row's lr candidates (if it searches), then every run, each job computed by one rank of `group` (one
    process when None) and shared with all; returns the rows' EvalResults, in order, on every rank.

    Jobs are dealt by estimated cost (`deal`); each reseeds from the row's seed alone, so the results equal one
    process's whatever the number of ranks. EvalResult.seconds is the sum of its runs' times, wherever they ran.
    """
    group = group or ProcessGroup.single()
    device = resolve_device(device)
    searches = [(i, lr) for i, row in enumerate(rows) if row.search is not None for lr in row.search.candidates]
    scores, _ = _spread(searches, lambda job: _search_job(rows[job[0]], job[1], device), rows, group, progress,
                        "lr search")
    lrs, records = [row.lr for row in rows], [{} for _ in rows]
    for i, row in enumerate(rows):
        if row.search is not None:
            found = {lr: (None if math.isnan(v) else v) for (j, lr), v in zip(searches, scores) if j == i}
            lrs[i], records[i] = _best_lr(found, row.arch), _search_record(found)
            if row.search.learned_lr is not None:
                records[i]["learned_lr"] = row.search.learned_lr
    jobs = [(i, row.seed + r) for i, row in enumerate(rows) for r in range(row.runs)]
    accs, seconds = _spread(jobs, lambda job: _run_job(rows[job[0]], job[1], lrs[job[0]], device), rows, group,
                            progress, "eval runs")
    results = []
    for i, row in enumerate(rows):
        mine = [k for k, (j, _) in enumerate(jobs) if j == i]
        res = EvalResult(row.name, row.arch, row.dataset.name, [accs[k] for k in mine], row.protocol.to_dict(),
                         row.ipc, sum(seconds[k] for k in mine))
        if row.record_lr or row.search is not None:
            res.extra["lr"] = lrs[i] if lrs[i] is not None else row.protocol.lr
        res.extra.update(records[i])
        res.extra.update(row.extra)
        results.append(res)
    return results


def _search_job(row: RowPlan, lr: float, device) -> float:
    """One lr candidate of a row: its validation accuracy, NaN when the training diverged (None cannot be shared)."""
    images, labels, val = row.search.data()
    acc = _score_lr(images, labels, val, row.arch, row.protocol, lr, seed=row.seed, device=device, inputs=row.inputs)
    return float("nan") if acc is None else acc


def _run_job(row: RowPlan, seed: int, lr: Optional[float], device) -> float:
    """One run of a row: a fresh network seeded with `seed` on that run's data; its test accuracy."""
    x, y = row.data(seed)
    return train_and_test(x, y, row.dataset, row.arch, row.protocol, seed=seed, device=device, lr=lr, inputs=row.inputs)


def _spread(jobs: list[tuple[int, object]], work: Callable[[tuple[int, object]], float], rows: Sequence[RowPlan],
            group: ProcessGroup, progress: bool, desc: str) -> tuple[list[float], list[float]]:
    """(values, seconds) of every job (row index, argument): this rank computes the jobs `deal` gives it, then the
    table is shared so every rank holds all of them. One process computes all jobs in order, with no estimate."""
    if not jobs:
        return [], []
    if group.world > 1:
        flops = {}
        for i, _ in jobs:
            if i not in flops:
                flops[i] = _flops_per_image(rows[i])
        hand = deal([flops[i] * rows[i].train_size * rows[i].protocol.epochs for i, _ in jobs], group.world)[group.rank]
    else:
        hand = list(range(len(jobs)))
    done = {}
    bar = tqdm(hand, desc=desc, disable=not progress, leave=False)
    for k in hand:
        start = time.perf_counter()
        value = work(jobs[k])
        done[k] = (value, time.perf_counter() - start)
        row = rows[jobs[k][0]]
        bar.update()
        bar.set_postfix_str(f"{row.name} on {row.arch}: {100 * value:.2f}%")
    bar.close()
    table = group.share(len(jobs), done, 2)
    return table[:, 0].tolist(), table[:, 1].tolist()


def _flops_per_image(row: RowPlan) -> float:
    """Forward FLOPs of one image through a fresh network of the row's architecture (torch's FlopCounterMode, CPU,
    eval mode): what one image costs on this architecture relative to another, for dealing runs to ranks. Every
    rank computes the same number; the global RNG is left as it was."""
    from torch.utils.flop_counter import FlopCounterMode

    ds = row.dataset
    with torch.random.fork_rng(devices=[]):
        model = build_model(row.arch, ds.channels, ds.num_classes, ds.image_size, **(row.inputs.model_options or {})).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, ds.channels, *ds.image_size))
    return max(float(counter.get_total_flops()), 1.0)


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
    row = set_row(synset, arch, protocol, runs, dataset=dataset, seed=seed, teacher=teacher, labels=labels,
                  model_options=model_options, name=name, lr_search=lr_search)
    return run_rows([row], device, progress=progress)[0]


def evaluate_random(dataset: ImageDataset, ipc: int, arch: str = "convnet", protocol: str | Protocol = "hard",
                    runs: int = 5, *, device="auto", seed: int = 0, teacher=None, model_options=None,
                    progress: bool = True, lr_search: Optional[Sequence[float]] = None) -> EvalResult:
    """Random-real baseline: a fresh random selection of `ipc` images per class for every run (same protocol and
    teacher as the set it is compared with).

    lr_search: candidate lrs, chosen per architecture as for the set (see `search_lr`) on one random selection
    drawn with the run's seed from the training data *minus* the validation split, so the search never scores
    a network on images it trained on.
    """
    row = random_row(dataset, ipc, arch, protocol, runs, seed=seed, teacher=teacher, model_options=model_options,
                     lr_search=lr_search)
    return run_rows([row], device, progress=progress)[0]


def evaluate_full(dataset: ImageDataset, arch: str = "convnet", protocol: str | Protocol = "hard", runs: int = 1, *,
                  epochs: Optional[int] = None, device="auto", seed: int = 0, teacher=None, model_options=None,
                  progress: bool = True) -> EvalResult:
    """Full-data baseline: the whole training split under the same protocol (epochs may be overridden), read batch
    by batch from the dataset's source (uint8 normalized per batch, or files decoded by DataLoader workers)."""
    row = full_row(dataset, arch, protocol, runs, epochs=epochs, seed=seed, teacher=teacher,
                   model_options=model_options)
    return run_rows([row], device, progress=progress)[0]


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
                 lr_search: Optional[Sequence[float]] = None, group: Optional[ProcessGroup] = None,
                 coreset_net=None) -> "Report":
    """Synthetic set (if any) and the baselines, for each architecture, under one protocol (and one teacher).

    baselines: among dd.eval.baselines.BASELINES; the coreset selections (herding, kcenter, forgetting) read the
    embeddings/forgetting counts of `coreset_net`: a dd.coresets.Selector (shared between reports), a teacher spec,
    a module, or None (the teacher when there is one, else a network trained on the training split).

    lr_search: candidate lrs searched per architecture on a validation split of the training data, for the set and
    the random-real baseline alike; the full-data baseline keeps the protocol lr. group: the torchrun ranks to spread
    the runs over (every rank calls build_report alike and gets the same report, equal to one process's; see
    `run_rows`); None runs everything here. meta records the processes and the whole evaluation's wall time.
    """
    from dd.eval.report import Report

    start = time.perf_counter()
    protocol = get_protocol(protocol)
    for option, value in (("--runs", runs), ("full_runs", full_runs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{option} must be a positive integer (fresh networks per row), got {value!r}")
    if dataset is None:
        if synset is None:
            raise ValueError("pass a synthetic set or a dataset")
        dataset = dataset_for(synset)
    ipc = ipc if ipc is not None else (synset.ipc if synset is not None else None)
    baselines = check_baselines(baselines)
    if any(b in baselines for b in ("random", *SELECTIONS)) and ipc is None:
        raise ValueError("the random-real and coreset baselines need --ipc")
    selector = _selector(coreset_net, teacher, dataset, device, seed) if set(SELECTIONS) & set(baselines) else None
    plans: list[RowPlan] = []
    for arch in archs:
        if synset is not None:
            plans.append(set_row(synset, arch, protocol, runs, dataset=dataset, seed=seed, teacher=teacher,
                                 labels=labels, name=synset.meta.get("method", "synthetic"), lr_search=lr_search))
        if "random" in baselines:
            plans.append(random_row(dataset, ipc, arch, protocol, runs, seed=seed, teacher=teacher,
                                    lr_search=lr_search))
        plans += [coreset_row(selector, b, ipc, arch, protocol, runs, seed=seed, teacher=teacher, lr_search=lr_search)
                  for b in SELECTIONS if b in baselines]
        if "full" in baselines:
            plans.append(full_row(dataset, arch, protocol, full_runs, epochs=full_epochs, seed=seed, teacher=teacher))
    rows = run_rows(plans, device, group=group, progress=progress)
    meta = {"dataset": dataset.name, "protocol": protocol.to_dict(), "runs": runs,
            "synset": synset.meta if synset is not None else None}
    if lr_search:
        meta["lr_search"] = [float(c) for c in lr_search]
    meta["processes"] = group.world if group is not None else 1
    if selector is not None:
        meta["coreset_network"] = selector.source
    meta["wall_seconds"] = time.perf_counter() - start
    return Report(rows, meta=meta)


def _selector(coreset_net, teacher, dataset: ImageDataset, device, seed: int):
    """The coreset selections' Selector: the one given, else one reading `coreset_net` or else the teacher."""
    from dd.coresets import Selector

    if isinstance(coreset_net, Selector):
        return coreset_net
    return Selector(dataset, coreset_net if coreset_net is not None else teacher, device=resolve_device(device),
                    seed=seed)
