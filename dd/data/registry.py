"""The dataset registry: one `DatasetEntry` per name carries its loader, the options it takes and its files check.

`@register_dataset(name, options={...}, missing=check)` beside a loader declares everything about it in one place:
`dd.data.load_dataset` refuses an option the entry does not declare, `dd.data.resolution` reads the declared `res`
default, and `dd.data.missing_files` asks `missing(root)` which files are absent without reading any of them
(`ddtk reproduce --dry-run` asks it about CIFAR, Tiny-ImageNet and ImageNet without decoding gigabytes of images).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from dd.registry import Registry

DATASETS: Registry = Registry("dataset")  # name -> DatasetEntry


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset: `loader(root=..., **options)` -> ImageDataset, the options it takes (name -> default), and
    `missing(root) -> [absent paths]` (None: the dataset is loaded once and a DatasetNotFoundError is its one missing
    entry). any_option: the loader also takes options it does not name (an undecorated user callable's **kwargs)."""

    name: str
    loader: Callable[..., Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    missing: Optional[Callable[[Path], list[Path]]] = None
    help: str = ""
    takes_root: bool = True
    any_option: bool = False

    def takes(self, key: str) -> bool:
        """May option `key` be given to the loader?"""
        return self.any_option or key in self.options

    def declares(self, key: str) -> bool:
        """Does the entry name `key` among its options (e.g. 'res': the dataset is read at a chosen resolution)?"""
        return key in self.options

    def default(self, key: str) -> Any:
        return self.options.get(key)

    @classmethod
    def from_callable(cls, name: str, fn: Callable[..., Any]) -> "DatasetEntry":
        """The entry of an undecorated user callable (`package.module:callable`): its named parameters are its options
        (any option when it takes **kwargs); a decorated one brings its own entry instead."""
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return cls(name, fn, {}, any_option=True)
        anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        named = {k: (None if p.default is inspect.Parameter.empty else p.default) for k, p in params.items()
                 if k != "root" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        return cls(name, fn, named, takes_root=anything or "root" in params, any_option=anything)


def register_dataset(name: str, *, help: str = "", options: Optional[Mapping[str, Any]] = None,
                     missing: Optional[Callable[[Path], list[Path]]] = None,
                     registry: Registry = DATASETS) -> Callable:
    """Registers the decorated `loader(root=None, **options)` as dataset `name` with its declared options (name ->
    default) and files check; the loader is returned unchanged (its entry is `loader.dataset_entry`)."""
    def deco(loader: Callable[..., Any]) -> Callable[..., Any]:
        doc = help or ((loader.__doc__ or "").strip().splitlines() or [""])[0]
        entry = DatasetEntry(name.lower(), loader, dict(options or {}), missing, doc)
        registry.add(name, entry, doc)
        loader.dataset_entry = entry  # type: ignore[attr-defined]
        return loader

    return deco


def data_root(root) -> Path:
    """The directory a loader reads under: --data-root (`root`, ~ expanded), else the working directory."""
    return Path(root if root is not None else ".").expanduser()


def absent(paths) -> list[Path]:
    """The paths in `paths` that do not exist."""
    return [p for p in paths if not p.exists()]


# the options of image trees (ImageNet, its subsets, folder:PATH): how files are read and stored
TREE_OPTIONS = {"resize": "center", "workers": None, "file_backed_above_mib": None, "skip_bad_images": False}
