"""Datasets: a registry of loaders that read files the user already has (never download).

`load_dataset("mnist10k")` works with no setup; other names read torchvision's on-disk formats,
Tiny-ImageNet's folder layout or an ImageFolder tree under `root`.
"""
from __future__ import annotations

from dd.data.base import DatasetNotFoundError, ImageDataset, RealImages, stratified_split
from dd.data.registry import DATASETS, FILES
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


def missing_files(name: str, root: str | None = None) -> list[str]:
    """What dataset `name` would read from `root` and is absent, without loading it ([] when nothing is missing).

    Built-in loaders list the expected paths (a whole directory when it is absent); a dataset registered without
    such a check is loaded once and a DatasetNotFoundError becomes its one entry. Unknown names raise KeyError.
    """
    from pathlib import Path

    loader = DATASETS.get(name)  # KeyError naming the known datasets
    check = FILES.get(name.lower())
    if check is not None:
        return [str(p) for p in check(Path(root if root is not None else ".").expanduser())]
    try:
        loader(root=root)
    except DatasetNotFoundError as e:
        return [str(e)]
    return []


__all__ = ["DATASETS", "DEFAULT_DATASET", "DatasetNotFoundError", "ImageDataset", "RealImages", "load_dataset",
           "missing_files", "stratified_split"]
