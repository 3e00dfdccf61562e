"""Option rules (finite, sign, range, choices), declared where an option is defined and checked by one function.

A dataclass field declares its rule with `field(default, metadata=rule(gt=0))`; `check_fields` checks values against
those rules (and every number for finiteness) when a configuration is resolved, whatever it came from: the command
line, a config file, a reproduce spec or the Python API. Commands name their flags through `names`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Iterable, Optional

_BOUNDS = (("gt", ">", lambda v, b: v > b), ("ge", ">=", lambda v, b: v >= b),
           ("lt", "<", lambda v, b: v < b), ("le", "<=", lambda v, b: v <= b))


def rule(*, gt: Optional[float] = None, ge: Optional[float] = None, lt: Optional[float] = None,
         le: Optional[float] = None, choices: Optional[Iterable] = None, finite: bool = True) -> dict:
    """Field metadata declaring an option's constraints: bounds on a number (each element of a tuple), or its choices."""
    r = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    if choices is not None:
        r["choices"] = tuple(choices)
    r["finite"] = finite
    return {"rule": r}


def check_value(value: Any, label: str, r: Optional[dict] = None) -> None:
    """Refuses `value` (a number, a string or a tuple of them; None is 'unset' and passes) that breaks rule `r`, or
    any non-finite number unless the rule allows it; the ValueError starts with `label` and says what is allowed."""
    r = r or {}
    items = value if isinstance(value, (tuple, list)) else (value,)
    for v in items:
        if v is None or isinstance(v, bool):
            continue
        if "choices" in r and v not in r["choices"]:
            allowed = ", ".join(repr(c) for c in r["choices"])
            raise ValueError(f"{label} must be one of {allowed}; got {value!r}")
        if not isinstance(v, numbers.Real):
            continue
        if r.get("finite", True) and not math.isfinite(v):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
        for key, sign, ok in _BOUNDS:
            if key in r and not ok(v, r[key]):
                bounds = " and ".join(f"{s} {r[k]}" for k, s, _ in _BOUNDS if k in r)
                raise ValueError(f"{label} must be {bounds}, got {value!r}")


def check_fields(cls: type, values: dict, names: Optional[dict] = None, owner: Optional[str] = None) -> dict:
    """Checks the given values of dataclass `cls`'s fields against their declared rules; returns `values`.

    names: how a caller spells an option (e.g. {'lr': '--lr'}); otherwise an error says "option 'lr' of Protocol"."""
    names = names or {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            label = names.get(f.name) or f"option '{f.name}' of {owner or cls.__name__}"
            check_value(values[f.name], label, f.metadata.get("rule"))
    return values


def check_dataclass(obj: Any, names: Optional[dict] = None) -> None:
    """check_fields on every field of a built dataclass (a __post_init__ calls it, so the Python API is checked too)."""
    check_fields(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, names)
