"""The dataset registry: `DATASETS.get(name)(root=...)` -> ImageDataset.

Loaders that read the user's files also register, under the same name, a check that lists which of those files are
absent without reading any of them (`FILES`, used by `dd.data.missing_files`: `ddtk reproduce --dry-run` asks it
about CIFAR, Tiny-ImageNet and ImageNet without decoding gigabytes of images).
"""
from pathlib import Path
from typing import Callable

from dd.registry import Registry

DATASETS: Registry = Registry("dataset")

# dataset name -> check(root) returning the expected paths that are absent (an empty list: everything is there)
FILES: dict[str, Callable[[Path], list[Path]]] = {}


def expects_files(name: str):
    """Registers `check(root) -> [absent paths]` for dataset `name` (a decorator, next to the loader it mirrors)."""
    def deco(check: Callable[[Path], list[Path]]) -> Callable[[Path], list[Path]]:
        FILES[name.lower()] = check
        return check

    return deco


def absent(paths) -> list[Path]:
    """The paths in `paths` that do not exist."""
    return [p for p in paths if not p.exists()]
