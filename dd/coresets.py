"""Coreset selection: herding, k-center greedy and forgetting events, each choosing `ipc` real training images per class.

These are the baselines a distilled set must beat at the same budget (DeepCore's conventions, checked against
its code where stated). Every selection reads only the training split; the test split is never touched.

* **herding** (Welling 2009; iCaRL's exemplar rule): per class, with mu the mean embedding and S the sum of the k
  images picked so far, pick argmin_x ||(k+1) mu - S - x||, i.e. the image that keeps the running mean of the picks
  closest to mu ((k+1)||mu - (S+x)/(k+1)||). DeepCore's `herding.py` takes the *argmax* of the same distance
  (lines 80-82), which picks the image that pulls the running mean farthest from mu: the opposite of herding's
  purpose and of the paper, so dd follows the classic argmin. Ties: the lowest index.
* **k-center greedy** (Sener & Savarese 2018; DeepCore `kcentergreedy.py`): per class, Euclidean distance on the
  embedding; the first center is drawn from the seeded generator, then each next center is the image farthest
  from its nearest center. Ties: the lowest index.
* **forgetting** (Toneva et al. 2019): the expert of a `ddtk buffer` is evaluated at each recorded epoch on the
  training split; an example's score is its number of 1 -> 0 flips of correctness between consecutive snapshots.
  Snapshot 0 (the untrained initialization) is skipped: a chance-level "correct" there was never learned, and
  DeepCore starts every example at "not correct" (last_acc = 0) so a first wrong answer is no event. Never-learned
  examples count 0 events, as in DeepCore (`forgetting.py`), not #epochs as in Toneva's code; the highest counts
  per class are kept, ties broken by a seeded random order (DeepCore's unstable argsort leaves them arbitrary).
  Chosen over EL2N because it reads exactly what a buffer records (every epoch's parameters of one expert), while
  EL2N's own protocol averages one early checkpoint over >= 10 independently trained networks.

Embeddings for herding and k-center are the penultimate features (`model.features`) of, in order: the network
given (a teacher spec: `ddtk buffer` DIR or DIR@E, a checkpoint, module:callable; or a module), else a network
dd trains here on the training split: FEATURE_ARCH for FEATURE_EPOCHS epochs, SGD lr 0.01 momentum 0.9 wd 5e-4,
batch 256, no augmentation, seeded with the selection seed (deterministic; DeepCore trains ResNet18 for 40 epochs).
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import torch
from torch import nn

SELECTIONS = ("herding", "kcenter", "forgetting")
FEATURE_ARCH = "convnet-w32"
FEATURE_EPOCHS = 10
BATCH = 512


# ---- the selection rules, on one class's embeddings or scores ------------------------------------------------

def herding(features: torch.Tensor, k: int) -> list[int]:
    """Indices of `k` rows of `features` (n, d) picked by classic herding (argmin; see the module docstring)."""
    _check_k(k, len(features))
    f = features.double()
    mu, total = f.mean(0), torch.zeros(f.shape[1], dtype=f.dtype)
    free = torch.ones(len(f), dtype=torch.bool)
    picked = []
    for i in range(k):
        dist = ((i + 1) * mu - total - f).norm(dim=1)
        dist[~free] = float("inf")
        p = int(dist.argmin())  # the first of equal distances
        picked.append(p)
        free[p] = False
        total = total + f[p]
    return picked


def kcenter_greedy(features: torch.Tensor, k: int, generator: torch.Generator) -> list[int]:
    """Indices of `k` rows of `features` (n, d): a random first center, then farthest-from-nearest-center."""
    _check_k(k, len(features))
    f = features.double()
    first = int(torch.randint(len(f), (1,), generator=generator))
    picked = [first]
    nearest = (f - f[first]).norm(dim=1)
    for _ in range(k - 1):
        p = int(nearest.argmax())  # the first of equal distances
        picked.append(p)
        nearest = torch.minimum(nearest, (f - f[p]).norm(dim=1))
    return picked


def cover_radius(features: torch.Tensor, centers: Sequence[int]) -> float:
    """max over rows of the distance to the nearest center: what k-center greedy keeps small (2-approximation)."""
    f = features.double()
    return float(torch.cdist(f, f[list(centers)]).min(1).values.max())


def forgetting_counts(correct: torch.Tensor) -> torch.Tensor:
    """(T, n) correctness over T consecutive snapshots -> (n,) number of 1 -> 0 flips (never learned: 0)."""
    c = correct.bool()
    return (c[:-1] & ~c[1:]).sum(0)


def most_forgotten(counts: torch.Tensor, k: int, generator: torch.Generator) -> list[int]:
    """The `k` highest counts; ties in a random order drawn from `generator`."""
    _check_k(k, len(counts))
    shuffle = torch.randperm(len(counts), generator=generator)
    order = torch.sort(counts[shuffle], descending=True, stable=True).indices
    return shuffle[order[:k]].tolist()


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"cannot select {k} of {n} images of a class; lower --ipc")


# ---- what the rules read: embeddings of a network, correctness along a buffer's expert ----------------------

@torch.no_grad()
def embed(network: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
    """Penultimate features (`network.features`; a committee concatenates its members') of images, in eval mode."""
    members = list(network.members) if hasattr(network, "members") else [network]
    for m in members:
        if not hasattr(m, "features"):
            raise ValueError(f"the coreset network {type(m).__name__} has no .features (penultimate embedding); give a "
                             "dd architecture with --coreset-net (a `ddtk buffer` directory or a checkpoint)")
        m.eval()
    parts = [torch.cat([m.features(b.to(device)).flatten(1).cpu() for b in images.split(BATCH)]) for m in members]
    return torch.cat(parts, 1)


@torch.no_grad()
def correctness(network: nn.Module, images: torch.Tensor, label: int, device) -> torch.Tensor:
    network.eval()
    return torch.cat([network(b.to(device)).argmax(1).cpu() == label for b in images.split(BATCH)])


def train_feature_network(dataset, device, seed: int = 0, arch: str = FEATURE_ARCH,
                          epochs: int = FEATURE_EPOCHS) -> nn.Module:
    """The default embedding network: `arch` trained here on the training split only (see the module docstring)."""
    from dd.eval.protocol import Protocol
    from dd.eval.train import train_model
    from dd.models import build_model

    torch.manual_seed(seed)
    model = build_model(arch, dataset.channels, dataset.num_classes, dataset.image_size).to(device)
    protocol = Protocol(name="coreset-features", epochs=epochs, lr_decay_at=1.0, dsa=False)
    train_model(model, dataset.train.to(device), dataset.train_labels.to(device), protocol, seed=seed,
                flip_ok=dataset.flip_ok)
    return model.eval()


def check_network(spec: Optional[str], baselines, option: str = "--coreset-net") -> None:
    """Refuses, before any work, a coreset network given without a coreset baseline (it would be ignored) or one that
    cannot be opened as a teacher spec (DIR, DIR@E, a checkpoint, module:callable)."""
    if spec is None:
        return
    if not set(SELECTIONS) & set(baselines):
        raise ValueError(f"{option} is read by the herding, kcenter and forgetting baselines and this run has none: "
                         "drop it or add --baseline herding|kcenter|forgetting")
    from dd.teachers import open_teacher

    try:
        open_teacher(spec)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise ValueError(f"{option}: {e.args[0] if e.args else e}") from None


class Selector:
    """Class-balanced coreset selections of one dataset's training split; embeddings and forgetting counts are
    computed once and shared by every selection (every architecture, protocol and run of a report).

    network: a teacher spec (str), a module, or None (a network trained here, see `train_feature_network`).
    Forgetting needs a spec naming a `ddtk buffer` (DIR or DIR@E: expert E's recorded epochs).
    """

    def __init__(self, dataset, network=None, *, device="cpu", seed: int = 0, teacher_model: Optional[str] = None):
        self.dataset, self.network, self.device, self.seed = dataset, network, torch.device(device), seed
        self.teacher_model = teacher_model
        self._images: Optional[list[torch.Tensor]] = None
        self._features: Optional[list[torch.Tensor]] = None
        self._counts: Optional[list[torch.Tensor]] = None
        self.seconds = {"features": 0.0, "forgetting": 0.0}
        if isinstance(network, nn.Module):
            self.source = "network given"
        else:
            self.source = network or f"{FEATURE_ARCH} trained here ({FEATURE_EPOCHS} epochs, seed {seed})"

    @property
    def images(self) -> list[torch.Tensor]:
        """Every training image, per class (read on first use; the test split is never read)."""
        if self._images is None:
            real = self.dataset.real("cpu")
            self._images = [real.all_of(c) for c in range(self.dataset.num_classes)]
        return self._images

    def features(self) -> list[torch.Tensor]:
        if self._features is None:
            start = time.perf_counter()
            net = self._network()
            self._features = [embed(net, x, self.device) for x in self.images]
            self.seconds["features"] = time.perf_counter() - start
        return self._features

    def _network(self) -> nn.Module:
        if isinstance(self.network, nn.Module):
            return self.network.to(self.device)
        if self.network:
            from dd.teachers import open_teacher

            src = open_teacher(self.network, self.teacher_model)
            src.check_compatible(self.dataset.name, self.dataset.zca is not None)
            return src.module(self.dataset, self.device)
        return train_feature_network(self.dataset, self.device, self.seed, FEATURE_ARCH, FEATURE_EPOCHS)

    def forgetting(self) -> list[torch.Tensor]:
        if self._counts is None:
            start = time.perf_counter()
            store, expert = self._buffer()
            history = [[] for _ in self.images]
            for epoch in range(1, store.num_epochs):  # snapshot 0 is the untrained initialization
                net = store.module(expert, epoch, device=self.device)
                for c, x in enumerate(self.images):
                    history[c].append(correctness(net, x, c, self.device))
            self._counts = [forgetting_counts(torch.stack(h)) for h in history]
            self.seconds["forgetting"] = time.perf_counter() - start
        return self._counts

    def _buffer(self):
        from pathlib import Path

        from dd.buffers import TrajectoryStore

        from dd.teachers import split_spec

        path, expert = split_spec(self.network) if isinstance(self.network, str) else ("", None)
        if not (path and Path(path).is_dir()):
            raise ValueError("the forgetting baseline counts forgetting events along a `ddtk buffer` expert's epochs: "
                             "give the buffer with --coreset-net DIR (or DIR@E), or a --teacher that is one")
        from dd.data.base import base_name

        store = TrajectoryStore(path)
        store.check_compatible(dataset=base_name(self.dataset.name))
        if bool(store.config.get("zca", False)) != (self.dataset.zca is not None):
            raise ValueError(f"buffer '{path}' was recorded with zca={bool(store.config.get('zca'))} but the data here "
                             f"has zca={self.dataset.zca is not None}; use a buffer recorded on the same data")
        if store.num_epochs < 3:
            raise ValueError(f"buffer '{path}' records {store.num_epochs} snapshots; forgetting needs at least 2 "
                             "trained epochs")
        return store, expert or 0

    def indices(self, method: str, ipc: int, generator: torch.Generator) -> list[list[int]]:
        """Per class, the indices (into that class's training images) `method` picks."""
        if method == "herding":
            return [herding(f, ipc) for f in self.features()]
        if method == "kcenter":
            return [kcenter_greedy(f, ipc, generator) for f in self.features()]
        if method == "forgetting":
            return [most_forgotten(n, ipc, generator) for n in self.forgetting()]
        raise ValueError(f"unknown coreset selection '{method}'; known: {', '.join(SELECTIONS)}")

    def select(self, method: str, ipc: int, generator: torch.Generator):
        """A SyntheticSet of `ipc` real training images per class (hard labels) chosen by `method`; its meta
        records the selection, the network it read and `wall_seconds` (shared features + this selection)."""
        from dd.synset import SyntheticSet, dataset_extra, dataset_meta

        if method in SELECTIONS:  # the shared work first, so that it is counted once, not in `chosen`
            self.forgetting() if method == "forgetting" else self.features()
        start = time.perf_counter()
        picks = self.indices(method, ipc, generator)
        chosen = time.perf_counter() - start
        shared = self.seconds["forgetting" if method == "forgetting" else "features"]
        images = torch.cat([x[idx] for x, idx in zip(self.images, picks)])
        labels = torch.arange(self.dataset.num_classes).repeat_interleave(ipc)
        meta = dataset_meta(self.dataset, ipc=ipc, init="real", method=method, coreset_network=self.source,
                            wall_seconds=shared + chosen)
        return SyntheticSet(images, labels, self.dataset.num_classes, meta=meta, extra=dataset_extra(self.dataset))
