"""A name -> constructor registry, one per kind (datasets, models, methods).

Like timm's model registry: a name on the command line maps to exactly one callable.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to constructors; unknown names raise a KeyError listing the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            self.add(name, fn, help)
            return fn

        return deco

    def add(self, name: str, fn: Callable[..., T], help: str = "") -> None:
        key = name.lower()
        if key in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[key] = fn
        doc = help or (fn.__doc__ or "").strip().splitlines()[0:1]
        self._help[key] = doc if isinstance(doc, str) else (doc[0] if doc else "")

    def get(self, name: str) -> Callable[..., T]:
        key = name.lower()
        if key not in self._items:
            known = ", ".join(sorted(self._items))
            raise KeyError(f"unknown {self.kind} '{name}'; known {self.kind}s: {known}")
        return self._items[key]

    def help(self, name: str) -> str:
        return self._help[name.lower()]

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)


def import_callable(spec: str, kind: str, expected: str) -> Callable:
    """`package.module:callable` -> that callable (the user's model, dataset, teacher or protocol); a spec that cannot
    be imported is a KeyError naming the `kind`, the spec and `expected` (what the callable must be)."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise KeyError(f"cannot load {kind} '{spec}': {e}; {expected}") from e
    if not callable(fn):
        raise KeyError(f"{kind} '{spec}' is a {type(fn).__name__}, not a callable; {expected}")
    return fn


def call_user(fn: Callable, spec: str, kind: str, role: str, *args, **kwargs):
    """Calls a user's `package.module:callable`; what it raises becomes a ValueError naming the spec and the role it
    was loaded for, then the user's own error (a missing-data error passes through: it already names the path)."""
    from dd.data.errors import DatasetNotFoundError

    try:
        return fn(*args, **kwargs)
    except DatasetNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: any error is reported with its origin
        raise ValueError(f"user {kind} '{spec}' ({role}) raised {type(e).__name__}: {e}") from e
