"""The in-memory image dataset every method and the harness work on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or malformed; the message names the expected path and layout."""


@dataclass
class ImageDataset:
    """Normalized train/test tensors plus what a method needs to know about them.

    Images are float32 (N, C, H, W), already normalized with `mean`/`std` (and ZCA-whitened when
    `zca` is set); labels are int64 (N,). Use :meth:`real` for class-indexed sampling.
    """

    name: str
    channels: int
    image_size: tuple[int, int]
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    zca: Optional["ZCA"] = None  # noqa: F821 - defined in dd.data.zca
    flip_ok: bool = True  # False for digits: a mirrored digit is another symbol
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.ndim != 4 or x.shape[1] != self.channels:
                raise ValueError(f"{self.name}: {split} images must be (N, {self.channels}, H, W), got {tuple(x.shape)}")
            if len(x) != len(y):
                raise ValueError(f"{self.name}: {len(x)} {split} images but {len(y)} labels")

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
        }

    def real(self, device: str | torch.device = "cpu") -> "RealImages":
        """Class-indexed view of the training images on `device`."""
        return RealImages(self.train_images, self.train_labels, self.num_classes, device)

    def to(self, device: str | torch.device) -> "ImageDataset":
        """Moves the tensors (not a copy of the metadata)."""
        for attr in ("train_images", "train_labels", "test_images", "test_labels"):
            setattr(self, attr, getattr(self, attr).to(device))
        return self

    def with_train(self, images: torch.Tensor, labels: torch.Tensor, name_suffix: str = "") -> "ImageDataset":
        """A copy with another training split (e.g. the train part of a train/validation carve)."""
        return ImageDataset(
            name=self.name + name_suffix, channels=self.channels, image_size=self.image_size,
            num_classes=self.num_classes, class_names=self.class_names, mean=self.mean, std=self.std,
            train_images=images, train_labels=labels, test_images=self.test_images,
            test_labels=self.test_labels, zca=self.zca, flip_ok=self.flip_ok, info=dict(self.info),
        )

    def split_validation(self, fraction: float = 0.1, seed: int = 0) -> tuple["ImageDataset", "ImageDataset"]:
        """Carves a stratified validation split from the *training* data (never the test set).

        Returns (train_part, validation) where `validation.test_*` holds the held-out training images,
        so the harness can score a set on it without touching the test split.
        """
        train_idx, val_idx = stratified_split(self.train_labels.cpu().numpy(), fraction, seed)
        ti, vi = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
        train = self.with_train(self.train_images[ti], self.train_labels[ti])
        val = self.with_train(self.train_images[ti], self.train_labels[ti], name_suffix=":val")
        val.test_images, val.test_labels = self.train_images[vi], self.train_labels[vi]
        return train, val


class RealImages:
    """Class-indexed access to real training images: `real.sample(class_id, n)` on the chosen device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, device="cpu"):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.num_classes = num_classes
        self.indices = [torch.nonzero(self.labels == c, as_tuple=False).flatten() for c in range(num_classes)]
        empty = [c for c, idx in enumerate(self.indices) if len(idx) == 0]
        if empty:
            raise ValueError(f"classes {empty} have no training images")

    def count(self, class_id: int) -> int:
        return len(self.indices[class_id])

    def sample(self, class_id: int, n: int, generator: torch.Generator | None = None, replace: bool = False) -> torch.Tensor:
        """n random images of one class (without replacement unless n exceeds the class or replace=True)."""
        idx = self.sample_indices(class_id, n, generator, replace)
        return self.images[idx]

    def sample_indices(self, class_id: int, n: int, generator: torch.Generator | None = None, replace: bool = False) -> torch.Tensor:
        pool = self.indices[class_id]
        if replace or n > len(pool):
            pick = torch.randint(len(pool), (n,), generator=generator)
        else:
            pick = torch.randperm(len(pool), generator=generator)[:n]
        return pool[pick.to(pool.device)]

    def all_of(self, class_id: int) -> torch.Tensor:
        return self.images[self.indices[class_id]]


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
