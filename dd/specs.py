"""Typed input specs: what names an expert buffer (`BufferSpec`) or a teacher (`TeacherSpec`), parsed once.

`split_spec` is the one reader of the `DIR@E` expert suffix and `parse_spec` the one classifier of a spec (buffer
directory, checkpoint file or package.module:callable); openers (dd.teachers, dd.methods.plan) dispatch on `kind`.
A spec keeps the text it was given: identities and records name inputs by it, so a run made before still matches.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
SPEC_GRAMMAR = ("DIR or DIR@E (a `ddtk buffer` directory, expert number E >= 0, default 0), a checkpoint file "
                f"({', '.join(CHECKPOINT_SUFFIXES)}), or package.module:callable")


def split_spec(spec) -> tuple[str, Optional[int]]:
    """'DIR@E' -> ('DIR', E), anything else -> (spec, None): the one parser of the expert suffix (teachers, reproduce
    recipes, cache paths). An existing path is taken whole, so a directory whose name holds '@' still works."""
    spec = str(spec)
    if "@" not in spec or Path(spec).exists():
        return spec, None
    base, _, expert = spec.rpartition("@")
    if not base or not re.fullmatch(r"[0-9]+", expert):
        raise ValueError(f"teacher '{spec}': '@{expert}' is not an expert number; a teacher spec is {SPEC_GRAMMAR}")
    return base, int(expert)


@dataclass(frozen=True)
class InputSpec:
    """One input as given: `text` (what records name), `kind` ('buffer' | 'file' | 'callable'), `path` (the
    directory or file; None for a callable) and `expert` (DIR@E's E; None when not given)."""

    text: str
    kind: str
    path: Optional[str] = None
    expert: Optional[int] = None

    @property
    def target(self) -> str:
        """What `kind` opens: the directory or file, or 'package.module:callable'."""
        return self.path if self.path is not None else self.text

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class TeacherSpec(InputSpec):
    """A teacher: a `ddtk buffer` directory's expert (DIR, DIR@E), a checkpoint file, or package.module:callable."""


@dataclass(frozen=True)
class BufferSpec(InputSpec):
    """A method's expert buffer: a `ddtk buffer` directory, read whole (every expert)."""


def parse_spec(spec, role: str = "teacher") -> InputSpec:
    """`spec` (a string, a path or an InputSpec) as a TeacherSpec (role 'teacher') or BufferSpec (role 'buffer');
    a spec that names nothing there is an error naming it and the grammar. No file is read beyond its existence."""
    if isinstance(spec, InputSpec):
        return spec
    text = str(spec)
    if role == "buffer":
        path, expert = split_spec(text)
        if expert is not None:
            raise ValueError(f"buffer '{text}': a method reads a whole `ddtk buffer` directory; give DIR, not DIR@E")
        return BufferSpec(text, "buffer", path)
    if role != "teacher":
        raise ValueError(f"role must be 'teacher' or 'buffer', got {role!r}")
    path, expert = split_spec(text)
    if Path(path).is_dir():
        return TeacherSpec(text, "buffer", path, expert if expert is not None else 0)
    if expert is not None:
        raise FileNotFoundError(f"teacher '{text}': '{path}' is not a `ddtk buffer` directory; a teacher spec is "
                                f"{SPEC_GRAMMAR}")
    if Path(text).is_file():
        return TeacherSpec(text, "file", text)
    if ":" in text and not text.endswith(CHECKPOINT_SUFFIXES) and not Path(text).exists():
        return TeacherSpec(text, "callable")
    what = "is not a regular file or directory" if Path(text).exists() else "does not exist"
    raise FileNotFoundError(f"teacher '{text}' is neither a buffer directory, a checkpoint file nor a callable (it "
                            f"{what}); a teacher spec is {SPEC_GRAMMAR}; train one with `ddtk buffer --experts 1 --out DIR`")
