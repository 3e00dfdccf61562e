"""One outside module, as a user would write it: a method, an evaluation protocol, a teacher and a dataset that reach
`ddtk` as `ext_plugin:NAME` with no edit under dd/ (tests/test_extensions.py drives them through every command).

Importable under pytest because tests/ is on sys.path (rootdir conftest, no package); nothing here is dd's own code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dd.data import DatasetNotFoundError, ImageDataset, load_dataset, register_dataset
from dd.eval.rules import Teacher
from dd.methods import METHODS, Method, MethodConfig
from dd.methods.base import Scoring, load_optimizer_state, optimizer_state
from dd.synset import SyntheticSet

METHOD = "ext-invert"
DATASET = "ext-digits"
PROTOCOL = "ext_plugin:ext_protocol"
FILES = ("train.npz", "test.npz")


# -- the dataset: two .npz files under ROOT/ext_digits, checked without reading them ------------------------------
def ext_missing(root: Path) -> list[Path]:
    """The dataset's files that are absent under `root` (what `ddtk reproduce --dry-run` reports)."""
    return [p for p in (root / "ext_digits" / name for name in FILES) if not p.exists()]


@register_dataset(DATASET, help="digits stored by the user as ROOT/ext_digits/{train,test}.npz", missing=ext_missing,
                  options={"classes": 10})
def ext_digits(root=None, classes: int = 10) -> ImageDataset:
    """Reads ROOT/ext_digits/{train,test}.npz (uint8 `x` (N, 8, 8), int `y`), keeping the first `classes` classes."""
    base = Path(root or ".") / "ext_digits"
    absent = ext_missing(Path(root or "."))
    if absent:
        raise DatasetNotFoundError(f"dataset '{DATASET}' needs {', '.join(map(str, absent))} (see write_ext_digits)")
    tr, te = np.load(base / "train.npz"), np.load(base / "test.npz")
    keep_tr, keep_te = tr["y"] < classes, te["y"] < classes
    return ImageDataset.from_uint8(DATASET, tr["x"][keep_tr], tr["y"][keep_tr], te["x"][keep_te], te["y"][keep_te],
                                   mean=(0.3,), std=(0.35,), class_names=[str(c) for c in range(classes)],
                                   flip_ok=False)


def write_ext_digits(root: Path, per_class: int = 30) -> Path:
    """Writes the dataset's files under `root` from scikit-learn's digits (`per_class` training images per class)."""
    d = load_dataset("digits")
    to_uint8 = lambda imgs: (imgs.float() * d.std[0] + d.mean[0]).mul(255).round().clamp(0, 255).to(torch.uint8)  # noqa: E731
    y = d.train_labels
    idx = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(10)])
    base = Path(root) / "ext_digits"
    base.mkdir(parents=True, exist_ok=True)
    np.savez(base / "train.npz", x=to_uint8(d.train_images[idx])[:, 0].numpy(), y=y[idx].numpy())
    np.savez(base / "test.npz", x=to_uint8(d.test_images)[:, 0].numpy(), y=d.test_labels.numpy())
    return base


# -- the teacher: a softmax regression fitted on digits, the same every call --------------------------------------
_TEACHER: dict = {}


def ext_teacher() -> nn.Module:
    """A linear classifier of 8x8 digits (normalized as ext-digits normalizes them), fitted by 200 full-batch steps."""
    if "net" not in _TEACHER:
        d = load_dataset("digits")
        x = (d.train_images.float() * d.std[0] + d.mean[0] - 0.3) / 0.35
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        for _ in range(200):
            opt.zero_grad()
            F.cross_entropy(net(x), d.train_labels).backward()
            opt.step()
        _TEACHER["net"] = net
    return _TEACHER["net"]


# -- the protocol: knowledge distillation on crop views at its own temperature and schedule ------------------------
class ExtKD(Teacher):
    """KD from the teacher at T=4 on crop views without mixing, 20 epochs of AdamW: the extension's own protocol."""

    settings = dict(epochs=20, lr=1e-2, use_learned_lr=False, weight_decay=0.0, batch_size=16, optimizer="adamw",
                    schedule="cosine", dsa=False, crop=True, crop_scale=(0.5, 1.0), mix="none", temperature=4.0)


def ext_protocol() -> ExtKD:
    return ExtKD()


# -- the method: images that the teacher classifies confidently, relabelled by the teacher at the end -------------
@dataclass
class ExtConfig(MethodConfig):
    model: str = "mlp"  # the architecture its sets are evaluated with by default
    dsa: bool = False
    lr_img: float = 0.5
    inner: int = 4  # image updates per iteration (its smoke size is 1)
    temperature: float = 4.0  # the soft labels finalize() writes


class ExtInvert(Method):
    """Moves real-initialized images down the teacher's cross-entropy of their class; finalize() stores the
    teacher's softened predictions as the set's labels, and the set is scored under the extension's protocol."""

    name = METHOD
    Config = ExtConfig
    teachers = (1, 1)
    smoke = {"inner": 1}
    bookkeeping = frozenset({"ext_draw"})

    def init_synset(self) -> SyntheticSet:
        self.source = self.inputs.teachers[0]
        self.teacher = self.source.module(self.dataset, self.device)
        self.set = self.initial_set()
        self.images = self.set.images.clone().to(self.device).requires_grad_(True)
        self.opt = torch.optim.SGD([self.images], lr=self.config.lr_img)
        return self.set

    def step(self, it: int) -> dict[str, float]:
        y = self.set.labels.to(self.device)
        for _ in range(self.config.inner):
            self.opt.zero_grad()
            loss = F.cross_entropy(self.teacher(self.images), y)
            loss.backward()
            self.opt.step()
        with torch.no_grad():
            conf = self.teacher(self.images).softmax(1).gather(1, y[:, None]).mean()
        return {"loss": loss.item(), "ext_confidence": float(conf), "ext_draw": float(it % 2)}

    def current_set(self) -> SyntheticSet:
        s = self.set.detach()
        s.images = self.images.detach().cpu().clone()
        return s

    def finalize(self, synset: SyntheticSet, out, protocol) -> SyntheticSet:
        with torch.no_grad():
            logits = self.teacher(synset.images.to(self.device)).cpu()
        synset.labels = (logits / self.config.temperature).softmax(1)
        return synset

    def evaluation(self) -> Scoring:
        return Scoring(PROTOCOL, self.teacher, [self.source.describe()])

    def state(self):
        tensors, info = optimizer_state(self.opt, "opt")
        return {"images": self.images.detach(), **tensors}, {"opt": info}

    def load_state(self, tensors, info) -> None:
        with torch.no_grad():
            self.images.copy_(tensors["images"])
        load_optimizer_state(self.opt, "opt", tensors, info["opt"])


if METHOD not in METHODS:
    METHODS.add(METHOD, ExtInvert)
