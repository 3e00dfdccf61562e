"""Datasets: a registry of loaders that read files the user already has (never download).

`load_dataset("mnist10k")` works with no setup; other names read torchvision's on-disk formats, Tiny-ImageNet's
folder layout or an ImageNet tree under `root`; `folder:PATH` reads any ImageFolder tree PATH/{train,val}/<class>/*
and `package.module:callable` calls a user's loader (like user models). Small datasets are held in memory as
uint8 and normalized per batch; large image trees are file-backed (see dd.data.file_images).
"""
from __future__ import annotations

from typing import Callable

from dd.data.base import (BadImageError, DatasetNotFoundError, ImageDataset, RealImages, base_name,
                          stratified_split)
from dd.data.registry import DATASETS, DatasetEntry, data_root, register_dataset
from dd.registry import call_user, import_callable
from dd.data.file_images import FileImages
from dd.data.sources import ImageSource, TensorImages, Uint8Images
from dd.data import embedded as _embedded  # noqa: F401  (registers mnist10k, digits)
from dd.data import folders as _folders  # noqa: F401  (tinyimagenet, imagenet and MTT's subsets)
from dd.data import torchvision_formats as _tv  # noqa: F401  (mnist, fashion-mnist, svhn, cifar10, cifar100)
from dd.data.folders import FOLDER_PREFIX, folder_dataset, folder_entry

DEFAULT_DATASET = "mnist10k"

# options of how images are read, which only some loaders take: given to one that does not, they are an error
DATA_OPTIONS = {
    "res": "--res",
    "resize": "--resize",
    "workers": "--data-workers",
    "file_backed_above_mib": "--file-backed-above",
    "skip_bad_images": "--skip-bad-images",
}


def dataset_entry(name: str) -> DatasetEntry:
    """The entry behind a dataset name: a registered name, `folder:PATH`, or `package.module:callable` (a callable the
    user's module registered with @register_dataset brings its entry; an undecorated one gets one from its signature)."""
    if name.startswith(FOLDER_PREFIX):
        return folder_entry(name)
    if ":" in name:
        return _user_entry(name)
    return DATASETS.get(name)


def dataset_loader(name: str) -> Callable[..., ImageDataset]:
    """The loader behind a dataset name (see dataset_entry)."""
    return dataset_entry(name).loader


def _user_entry(spec: str) -> DatasetEntry:
    """`package.module:callable` -> the entry of the user's callable (it returns an ImageDataset; see load_dataset)."""
    fn = import_callable(spec, "user dataset", "expected 'package.module:callable' returning a dd.data.ImageDataset "
                                               "(e.g. ImageDataset.from_uint8(...)), or a registered name (see "
                                               "`ddtk datasets`), or folder:PATH")
    entry = getattr(fn, "dataset_entry", None)
    return entry if isinstance(entry, DatasetEntry) else DatasetEntry.from_callable(spec, fn)


def takes_option(name: str, key: str) -> bool:
    """Does dataset `name` declare the data option `key` (e.g. 'res')? Used to pass a set's resolution back and to
    know which datasets are read at a chosen resolution."""
    try:
        return dataset_entry(name).declares(key)
    except KeyError:
        return False


def resolution(name: str, options: dict | None = None) -> int | None:
    """The side dataset `name` is read at when it takes `res`: options['res'], else its declared default; None for
    datasets of a fixed size. Known without reading any data (a run's identity records it)."""
    if not takes_option(name, "res"):
        return None
    if options and options.get("res") is not None:
        return int(options["res"])
    default = dataset_entry(name).default("res")
    return int(default) if isinstance(default, int) and not isinstance(default, bool) else None


def load_dataset(name: str = DEFAULT_DATASET, root: str | None = None, zca: bool = False, **kwargs) -> ImageDataset:
    """Loads a dataset; with zca=True fits ZCA whitening on its training split (as MTT does for CIFAR).

    kwargs go to the loader: `res`, `resize`, `workers`, `file_backed_above_mib`, `skip_bad_images` (image trees),
    `classes`, `train_per_class` (ImageNet). A data option the dataset does not take is an error naming it.
    A user's `package.module:callable` is called with root= (when it takes it) and kwargs, and must return an
    ImageDataset; the dataset is renamed to the spec so sets and buffers made from it can load it again.
    """
    entry = dataset_entry(name)
    is_user = ":" in name and not name.startswith(FOLDER_PREFIX)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    for key, value in kwargs.items():
        if entry.takes(key):
            continue
        if key in DATA_OPTIONS:
            raise ValueError(f"dataset '{name}' does not take {DATA_OPTIONS[key]} ({key}={value!r}): it applies to "
                             "image-folder datasets (imagenet, its subsets, tinyimagenet's storage options, folder:PATH)")
        raise ValueError(f"dataset '{name}' takes no option {key!r}; it takes: {', '.join(sorted(entry.options)) or 'none'}")
    if is_user:
        ds = call_user(entry.loader, name, "dataset", "the dataset loader",
                       **({"root": root} if root is not None and entry.takes_root else {}), **kwargs)
        if not isinstance(ds, ImageDataset):
            raise ValueError(f"user dataset '{name}' returned a {type(ds).__name__}, expected a dd.data.ImageDataset "
                             "(build one with ImageDataset.from_uint8(...) or ImageDataset(...))")
        ds.info.setdefault("user_name", ds.name)
        ds.name = name
    else:
        ds = entry.loader(root=root, **kwargs)
    ds.check_labels()
    if zca:
        from dd.data.zca import apply_zca

        ds = apply_zca(ds)
    return ds


def missing_files(name: str, root: str | None = None) -> list[str]:
    """What dataset `name` would read from `root` and is absent, without loading it ([] when nothing is missing).

    Built-in loaders list the expected paths (a whole directory when it is absent); `folder:PATH` lists the tree's
    absent train/val directories; a dataset registered without such a check, or a `package.module:callable`, is
    loaded once and a DatasetNotFoundError becomes its one entry. Unknown names raise KeyError.
    """
    entry = dataset_entry(name)  # KeyError naming the known datasets (or the user module that cannot be imported)
    if entry.missing is not None:
        return [str(p) for p in entry.missing(data_root(root))]
    try:
        load_dataset(name, root=root)
    except DatasetNotFoundError as e:
        return [str(e)]
    return []


__all__ = ["DATASETS", "DATA_OPTIONS", "DEFAULT_DATASET", "BadImageError", "DatasetEntry", "DatasetNotFoundError",
           "FileImages", "ImageDataset", "ImageSource", "RealImages", "TensorImages", "Uint8Images", "base_name",
           "dataset_entry", "dataset_loader", "register_dataset",
           "folder_dataset", "load_dataset", "missing_files", "resolution", "stratified_split", "takes_option"]
