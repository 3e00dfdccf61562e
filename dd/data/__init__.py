"""Datasets: a registry of loaders that read files the user already has (never download).

`load_dataset("mnist10k")` works with no setup; other names read torchvision's on-disk formats,
Tiny-ImageNet's folder layout or an ImageFolder tree under `root`.
"""
from __future__ import annotations

from dd.data.base import DatasetNotFoundError, ImageDataset, RealImages, stratified_split
from dd.data.registry import DATASETS
from dd.data import embedded as _embedded  # noqa: F401  (registers mnist10k, digits)
from dd.data import folders as _folders  # noqa: F401  (tinyimagenet, imagenet and MTT's subsets)
from dd.data import torchvision_formats as _tv  # noqa: F401  (mnist, fashion-mnist, svhn, cifar10, cifar100)

DEFAULT_DATASET = "mnist10k"


def load_dataset(name: str = DEFAULT_DATASET, root: str | None = None, zca: bool = False, **kwargs) -> ImageDataset:
    """Loads a registered dataset; with zca=True fits ZCA whitening on its training split (as MTT does for CIFAR)."""
    ds = DATASETS.get(name)(root=root, **kwargs)
    if zca:
        from dd.data.zca import apply_zca

        ds = apply_zca(ds)
    return ds


__all__ = ["DATASETS", "DEFAULT_DATASET", "DatasetNotFoundError", "ImageDataset", "RealImages", "load_dataset", "stratified_split"]
