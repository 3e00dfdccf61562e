"""The image dataset every method and the harness work on: metadata plus a train and a test `ImageSource`."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from dd.data.errors import BadImageError, DatasetNotFoundError  # noqa: F401  (re-exported)
from dd.data.sources import Uint8Images, as_source


class ImageDataset:
    """Train/test images (each an `ImageSource`: uint8 in memory, a float32 tensor, or files) plus what a method
    needs to know about them.

    Images come out float32 (N, C, H, W), normalized with `mean`/`std` (and ZCA-whitened when `zca` is set); labels
    are int64 (N,). Read them with `ds.train.batches(batch_size)` / `ds.train.batch(indices)` (any kind) or, for
    in-memory sets, as one tensor `ds.train_images` (a normalized copy for uint8 sets; file-backed sets have none).
    `train_images`/`test_images` may be given (and assigned) as tensors or sources. Use :meth:`real` for
    class-indexed sampling.
    """

    def __init__(self, name: str, channels: int, image_size, num_classes: int, class_names: list[str],
                 mean: tuple[float, ...], std: tuple[float, ...], train_images, train_labels: torch.Tensor,
                 test_images, test_labels: torch.Tensor, zca: Optional["ZCA"] = None,  # noqa: F821 - dd.data.zca
                 flip_ok: bool = True, info: Optional[dict] = None):
        self.name = name
        self.channels = channels
        self.image_size = tuple(image_size)
        self.num_classes = num_classes
        self.class_names = class_names
        self.mean, self.std = mean, std
        self.train, self.train_labels = as_source(train_images), train_labels
        self.test, self.test_labels = as_source(test_images), test_labels
        self.zca = zca
        self.flip_ok = flip_ok  # False for digits: a mirrored digit is another symbol
        self.info = dict(info or {})
        self._check()

    def _check(self) -> None:
        for split in ("train", "test"):
            src, y = getattr(self, split), getattr(self, f"{split}_labels")
            shape = tuple(src.shape)
            if len(shape) != 4 or shape[1] != self.channels:
                raise ValueError(f"{self.name}: {split} images must be (N, {self.channels}, H, W), got {shape}")
            if len(src) != len(y):
                raise ValueError(f"{self.name}: {len(src)} {split} images but {len(y)} labels")
        std = [float(v) for v in (self.std if isinstance(self.std, (tuple, list)) else [self.std])]
        if not all(math.isfinite(v) and v > 0 for v in std):
            raise ValueError(f"{self.name}: per-channel std {tuple(std)} must be finite and > 0 (images are divided by "
                             "it); a channel with std 0 is constant: compute std over the training images")

    def check_labels(self) -> None:
        """Refuses labels outside 0..num_classes-1 (load_dataset runs it on every dataset it loads, so a user's
        loader is refused at load time, not with an IndexError once training has started)."""
        for split in ("train", "test"):
            y = getattr(self, f"{split}_labels")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"{self.name}: {split} labels range over {int(y.min())}..{int(y.max())} but the dataset "
                                 f"has {self.num_classes} classes (labels must be 0..{self.num_classes - 1}); fix the "
                                 "labels or the class count (class_names)")

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, {self.num_classes} classes, {self.channels}x{self.image_size[0]}x"
                f"{self.image_size[1]}, train {len(self.train)} ({self.train.kind}), test {len(self.test)} "
                f"({self.test.kind}){', zca' if self.zca is not None else ''})")

    # -- the splits as tensors (in-memory sets) ---------------------------------------------------
    @property
    def train_images(self) -> torch.Tensor:
        """The training images as one normalized float32 tensor (a copy for uint8 sets; file-backed sets raise)."""
        return self.train.materialize("train_images")

    @train_images.setter
    def train_images(self, images) -> None:
        self.train = as_source(images)

    @property
    def test_images(self) -> torch.Tensor:
        """The test images as one normalized float32 tensor (a copy for uint8 sets; file-backed sets raise)."""
        return self.test.materialize("test_images")

    @test_images.setter
    def test_images(self, images) -> None:
        self.test = as_source(images)

    @property
    def file_backed(self) -> bool:
        """Are the images decoded from files on demand (rather than held in memory)?"""
        return self.train.file_backed or self.test.file_backed

    @property
    def describe(self) -> dict:
        return {
            "name": self.name,
            "channels": self.channels,
            "image_size": list(self.image_size),
            "num_classes": self.num_classes,
            "train": len(self.train_labels),
            "test": len(self.test_labels),
            "mean": list(self.mean),
            "std": list(self.std),
            "zca": self.zca is not None,
            "storage": self.train.kind,
        }

    def real(self, device: str | torch.device = "cpu") -> "RealImages":
        """Class-indexed view of the training images on `device`."""
        return RealImages(self.train, self.train_labels, self.num_classes, device)

    def to(self, device: str | torch.device) -> "ImageDataset":
        """Moves the images (uint8/float tensors; file-backed sets decode onto `device`) and labels, in place."""
        self.train, self.test = self.train.to(device), self.test.to(device)
        self.train_labels, self.test_labels = self.train_labels.to(device), self.test_labels.to(device)
        return self

    def with_train(self, images, labels: torch.Tensor, name_suffix: str = "") -> "ImageDataset":
        """A copy with another training split (a tensor or a source, e.g. the train part of a train/validation carve)."""
        return ImageDataset(
            name=self.name + name_suffix, channels=self.channels, image_size=self.image_size,
            num_classes=self.num_classes, class_names=self.class_names, mean=self.mean, std=self.std,
            train_images=images, train_labels=labels, test_images=self.test,
            test_labels=self.test_labels, zca=self.zca, flip_ok=self.flip_ok, info=dict(self.info),
        )

    def split_validation(self, fraction: float = 0.1, seed: int = 0) -> tuple["ImageDataset", "ImageDataset"]:
        """Carves a stratified validation split from the *training* data (never the test set).

        Returns (train_part, validation) where `validation.test_*` holds the held-out training images,
        so the harness can score a set on it without touching the test split. File-backed sets carve their index.
        """
        train_idx, val_idx = stratified_split(self.train_labels.cpu().numpy(), fraction, seed)
        ti, vi = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
        part = self.train.subset(ti)
        labels = self.train_labels[ti.to(self.train_labels.device)]
        train = self.with_train(part, labels)
        val = self.with_train(part, labels, name_suffix=VAL_SUFFIX)
        val.test, val.test_labels = self.train.subset(vi), self.train_labels[vi.to(self.train_labels.device)]
        return train, val

    @classmethod
    def from_uint8(cls, name: str, train_pixels, train_labels, test_pixels, test_labels, mean, std,
                   class_names: Optional[list[str]] = None, flip_ok: bool = True, info: Optional[dict] = None) -> "ImageDataset":
        """A dataset from uint8 pixel arrays (N, C, H, W) or (N, H, W) and int labels, kept as uint8 and normalized
        per batch with mean/std (per channel, on the [0, 1] scale); what a `package.module:callable` loader can return."""
        def pixels(a):
            t = torch.as_tensor(np.ascontiguousarray(a))
            return t.unsqueeze(1) if t.ndim == 3 else t

        x_tr, x_te = pixels(train_pixels), pixels(test_pixels)
        y_tr = torch.as_tensor(np.asarray(train_labels), dtype=torch.int64)
        y_te = torch.as_tensor(np.asarray(test_labels), dtype=torch.int64)
        k = len(class_names) if class_names is not None else int(torch.cat([y_tr, y_te]).max()) + 1
        return cls(name=name, channels=x_tr.shape[1], image_size=tuple(x_tr.shape[-2:]), num_classes=k,
                   class_names=list(class_names) if class_names is not None else [str(i) for i in range(k)],
                   mean=tuple(mean), std=tuple(std), train_images=Uint8Images(x_tr, mean, std), train_labels=y_tr,
                   test_images=Uint8Images(x_te, mean, std), test_labels=y_te, flip_ok=flip_ok, info=info)


VAL_SUFFIX = ":val"  # the name of a validation carve: '<dataset>:val'


def base_name(name: str) -> str:
    """A dataset's name without the validation suffix ('cifar10:val' -> 'cifar10'; 'folder:/data/x' unchanged)."""
    return name[: -len(VAL_SUFFIX)] if name.endswith(VAL_SUFFIX) else name


class RealImages:
    """Class-indexed access to real training images: `real.sample(class_id, n)` on the chosen device.

    `images` is a tensor or an ImageSource; only the images asked for are read (a file-backed set decodes just
    the sampled files). With a dataset that skips unreadable files, a skipped draw is replaced by another image
    of the same class from the same generator.
    """

    def __init__(self, images, labels: torch.Tensor, num_classes: int, device="cpu"):
        self.device = torch.device(device)
        self.source = as_source(images).to(self.device)
        self.labels = labels.to(self.device)
        self.num_classes = num_classes
        # one stable sort, not a scan per class (ImageNet: 1000 classes); indices ascend within a class
        order = torch.argsort(self.labels, stable=True)
        bounds = torch.searchsorted(self.labels[order], torch.arange(num_classes + 1, device=self.device)).tolist()
        self.indices = [order[bounds[c]:bounds[c + 1]] for c in range(num_classes)]
        empty = [c for c, idx in enumerate(self.indices) if len(idx) == 0]
        if empty:
            raise ValueError(f"classes {empty} have no training images")

    @property
    def images(self) -> torch.Tensor:
        """All training images as one tensor (in-memory sources only)."""
        return self.source.materialize("images")

    def count(self, class_id: int) -> int:
        return len(self.indices[class_id])

    def sample(self, class_id: int, n: int, generator: torch.Generator | None = None, replace: bool = False) -> torch.Tensor:
        """n random images of one class (without replacement unless n exceeds the class or replace=True)."""
        idx = self.sample_indices(class_id, n, generator, replace)
        kept, x = self.source.fetch(idx)
        if len(kept) < len(idx):
            x = self._refill(class_id, idx, kept, x, generator)
        return x

    def _refill(self, class_id: int, idx: torch.Tensor, kept: torch.Tensor, x: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
        """Replaces skipped (unreadable) draws with other images of the class not drawn yet, until n are read."""
        tried = set(idx.tolist())
        parts, need = [x], len(idx) - len(kept)
        pool = self.indices[class_id]
        while need > 0:
            left = pool[torch.tensor([int(i) not in tried for i in pool.tolist()], dtype=torch.bool, device=pool.device)]
            if len(left) == 0:
                raise ValueError(f"class {class_id} has fewer than {len(idx)} readable training images "
                                 f"(unreadable files were skipped)")
            more = left[torch.randperm(len(left), generator=generator)[:need].to(left.device)]
            tried.update(more.tolist())
            got, xs = self.source.fetch(more)
            parts.append(xs)
            need -= len(got)
        return torch.cat(parts)

    def sample_indices(self, class_id: int, n: int, generator: torch.Generator | None = None, replace: bool = False) -> torch.Tensor:
        pool = self.indices[class_id]
        if replace or n > len(pool):
            pick = torch.randint(len(pool), (n,), generator=generator)
        else:
            pick = torch.randperm(len(pool), generator=generator)[:n]
        return pool[pick.to(pool.device)]

    def all_of(self, class_id: int) -> torch.Tensor:
        """Every image of the class (a file-backed set decodes the class's files; unreadable ones skipped if allowed)."""
        return self.source.fetch(self.indices[class_id])[1]


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train_idx, test_idx), both sorted; the test size is round(N * test_fraction) exactly.

    Per-class test counts are floor(n_c * f), and the remainder goes to the classes with the largest
    fractional parts (ties broken by class id), so the split is exact and reproducible from `seed`.
    """
    labels = np.asarray(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
    total_test = int(round(len(labels) * test_fraction))
    exact = counts * test_fraction
    per_class = np.floor(exact).astype(int)
    remainder = total_test - per_class.sum()
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - per_class[i]), i))
    for i in order[:remainder]:
        per_class[i] += 1
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c, k in zip(classes, per_class):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def normalize_uint8(images: np.ndarray, mean, std, channels_last: bool = True) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> normalized float32 (N, C, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif channels_last:
        x = x.permute(0, 3, 1, 2).contiguous()
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s
