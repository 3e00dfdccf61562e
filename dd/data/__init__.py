"""Datasets: a registry of loaders that read files the user already has (never download).

`load_dataset("mnist10k")` works with no setup; other names read torchvision's on-disk formats, Tiny-ImageNet's
folder layout or an ImageNet tree under `root`; `folder:PATH` reads any ImageFolder tree PATH/{train,val}/<class>/*
and `package.module:callable` calls a user's loader (like user models). Small datasets are held in memory as
uint8 and normalized per batch; large image trees are file-backed (see dd.data.sources).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

from dd.data.base import (BadImageError, DatasetNotFoundError, ImageDataset, RealImages, base_name,
                          stratified_split)
from dd.data.registry import DATASETS, FILES
from dd.data.sources import FileImages, ImageSource, TensorImages, Uint8Images
from dd.data import embedded as _embedded  # noqa: F401  (registers mnist10k, digits)
from dd.data import folders as _folders  # noqa: F401  (tinyimagenet, imagenet and MTT's subsets)
from dd.data import torchvision_formats as _tv  # noqa: F401  (mnist, fashion-mnist, svhn, cifar10, cifar100)
from dd.data.folders import FOLDER_PREFIX, folder_dataset, folder_missing

DEFAULT_DATASET = "mnist10k"

# options of how images are read, which only some loaders take: given to one that does not, they are an error
DATA_OPTIONS = {
    "res": "--res",
    "resize": "--resize",
    "workers": "--data-workers",
    "file_backed_above_mib": "--file-backed-above",
    "skip_bad_images": "--skip-bad-images",
}


def dataset_loader(name: str) -> Callable[..., ImageDataset]:
    """The loader behind a dataset name: a registered name, `folder:PATH`, or `package.module:callable`."""
    if name.startswith(FOLDER_PREFIX):
        def load(root=None, **kwargs):
            return folder_dataset(name, root=root, **kwargs)

        load.__signature__ = inspect.signature(folder_dataset).replace(  # type: ignore[attr-defined]
            parameters=list(inspect.signature(folder_dataset).parameters.values())[1:])
        return load
    if ":" in name:
        return _user_loader(name)
    return DATASETS.get(name)


def _user_loader(spec: str) -> Callable[..., ImageDataset]:
    """`package.module:callable` -> the user's callable (it returns an ImageDataset; see load_dataset)."""
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise KeyError(f"cannot load user dataset '{spec}': {e}; expected 'package.module:callable' returning a "
                       "dd.data.ImageDataset (e.g. ImageDataset.from_uint8(...)), or a registered name "
                       "(see `ddtk datasets`), or folder:PATH") from e
    if not callable(fn):
        raise KeyError(f"user dataset '{spec}' is a {type(fn).__name__}, not a callable returning an ImageDataset")
    return fn


def _accepts(fn: Callable, key: str) -> bool:
    """Does the loader declare `key` (or take **kwargs, for a user's loader)?"""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _declares(fn: Callable, key: str) -> bool:
    """Does the loader name `key` as a parameter (registered loaders swallow unknown options with **_)?"""
    try:
        return key in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def takes_option(name: str, key: str) -> bool:
    """Does dataset `name`'s loader name the data option `key` as a parameter (e.g. 'res')? Used to pass a set's
    resolution back and to know which datasets are read at a chosen resolution."""
    try:
        fn = dataset_loader(name)
    except KeyError:
        return False
    return _declares(fn, key)


def resolution(name: str, options: dict | None = None) -> int | None:
    """The side dataset `name` is read at when its loader takes `res`: options['res'], else the loader's default;
    None for datasets of a fixed size. Known without reading any data (a run's identity records it)."""
    if not takes_option(name, "res"):
        return None
    if options and options.get("res") is not None:
        return int(options["res"])
    default = inspect.signature(dataset_loader(name)).parameters["res"].default
    return int(default) if isinstance(default, int) and not isinstance(default, bool) else None


def load_dataset(name: str = DEFAULT_DATASET, root: str | None = None, zca: bool = False, **kwargs) -> ImageDataset:
    """Loads a dataset; with zca=True fits ZCA whitening on its training split (as MTT does for CIFAR).

    kwargs go to the loader: `res`, `resize`, `workers`, `file_backed_above_mib`, `skip_bad_images` (image trees),
    `classes`, `train_per_class` (ImageNet). A data option the dataset does not take is an error naming it.
    A user's `package.module:callable` is called with root= (when it takes it) and kwargs, and must return an
    ImageDataset; the dataset is renamed to the spec so sets and buffers made from it can load it again.
    """
    fn = dataset_loader(name)
    is_user = ":" in name and not name.startswith(FOLDER_PREFIX)
    for key, value in kwargs.items():
        if key in DATA_OPTIONS and value is not None and not (_accepts(fn, key) if is_user else _declares(fn, key)):
            raise ValueError(f"dataset '{name}' does not take {DATA_OPTIONS[key]} ({key}={value!r}): it applies to "
                             "image-folder datasets (imagenet, its subsets, tinyimagenet's storage options, folder:PATH)")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if is_user:
        try:
            ds = fn(**({"root": root} if root is not None and _accepts(fn, "root") else {}), **kwargs)
        except DatasetNotFoundError:
            raise
        except Exception as e:
            raise ValueError(f"user dataset '{name}' (the dataset loader) raised {type(e).__name__}: {e}") from e
        if not isinstance(ds, ImageDataset):
            raise ValueError(f"user dataset '{name}' returned a {type(ds).__name__}, expected a dd.data.ImageDataset "
                             "(build one with ImageDataset.from_uint8(...) or ImageDataset(...))")
        ds.info.setdefault("user_name", ds.name)
        ds.name = name
    else:
        ds = fn(root=root, **kwargs)
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
    from pathlib import Path

    if name.startswith(FOLDER_PREFIX):
        return [str(p) for p in folder_missing(name, root)]
    dataset_loader(name)  # KeyError naming the known datasets (or the user module that cannot be imported)
    check = FILES.get(name.lower())
    if check is not None:
        return [str(p) for p in check(Path(root if root is not None else ".").expanduser())]
    try:
        load_dataset(name, root=root)
    except DatasetNotFoundError as e:
        return [str(e)]
    return []


__all__ = ["DATASETS", "DATA_OPTIONS", "DEFAULT_DATASET", "BadImageError", "DatasetNotFoundError", "FileImages",
           "ImageDataset", "ImageSource", "RealImages", "TensorImages", "Uint8Images", "base_name", "dataset_loader",
           "folder_dataset", "load_dataset", "missing_files", "resolution", "stratified_split", "takes_option"]
