"""Teachers: trained networks that methods (SRe2L, CDA, CV-DD) and the teacher protocol read, named by one spec.

A spec is one of
  * `DIR` or `DIR@E`: a `ddtk buffer` directory; expert E's (default 0) last recorded epoch, with its BatchNorm
    statistics. `ddtk buffer --experts 1 --out DIR` trains exactly such a teacher.
  * a checkpoint file: `.safetensors` (a state dict; its metadata may name `model`, `model_options`, `dataset`,
    `zca`), or a foreign `.pt`/`.pth`/`.ckpt`, read with `weights_only=True` (a state dict, or a dict holding one
    under `state_dict`/`model`/`model_state_dict`); pass `teacher_model=NAME` when the file does not say its
    architecture. torchvision ResNet weights load into `resnet18-tv`/`resnet50-tv`.
  * `package.module:callable`: called with no arguments, returns a trained `nn.Module`.
`open_teacher` reads what identifies a teacher (its hash, architecture, dataset) without building it;
`TeacherSource.module(dataset)` builds it for a dataset's shapes, frozen and in eval mode.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from dd.registry import call_user, import_callable
from dd.utils import read_safetensors, sha256_bytes, sha256_file
from dd.data.base import base_name
from dd.specs import CHECKPOINT_SUFFIXES, SPEC_GRAMMAR, TeacherSpec, parse_spec, split_spec  # noqa: F401 (re-exported)

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "teacher")


@dataclass
class TeacherSource:
    """What identifies a teacher (spec, kind, sha256, architecture, dataset, ZCA) and how to build it."""

    spec: str
    kind: str  # 'buffer' | 'file' | 'callable'
    sha256: str
    arch: Optional[str] = None
    arch_options: dict = field(default_factory=dict)
    dataset: Optional[str] = None
    zca: Optional[bool] = None
    _build: Optional[Callable[[int, int, tuple, torch.device], nn.Module]] = field(default=None, repr=False)
    _module: Optional[nn.Module] = field(default=None, repr=False)

    def describe(self) -> dict:
        """The JSON record stored in checkpoints, set metadata and label manifests."""
        return {"spec": self.spec, "kind": self.kind, "sha256": self.sha256, "arch": self.arch,
                "dataset": self.dataset}

    def check_compatible(self, dataset: str, zca: bool) -> None:
        """Refuses a teacher recorded on another dataset or with the other ZCA setting, naming both sides."""
        name = base_name(dataset).lower()
        if self.dataset is not None and base_name(self.dataset).lower() != name:
            raise ValueError(f"teacher '{self.spec}' was trained on dataset '{self.dataset}' but this run uses "
                             f"'{dataset}'; train one with `ddtk buffer --dataset {dataset} --experts 1 --out DIR`")
        if self.zca is not None and bool(self.zca) != bool(zca):
            raise ValueError(f"teacher '{self.spec}' was trained {'with' if self.zca else 'without'} ZCA whitening but "
                             f"this run uses zca={bool(zca)}; set zca={bool(self.zca)} or use a matching teacher")

    def module(self, dataset, device="cpu") -> nn.Module:
        """The teacher for `dataset`'s shapes on `device`: frozen, eval mode; its output size is checked."""
        if self._module is None:
            model = self._build(dataset.channels, dataset.num_classes, tuple(dataset.image_size), torch.device("cpu"))
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            with torch.no_grad():
                out = model(torch.zeros(2, dataset.channels, *dataset.image_size))
            if out.ndim != 2 or out.shape[1] != dataset.num_classes:
                raise ValueError(f"teacher '{self.spec}' outputs shape {tuple(out.shape)} but dataset '{dataset.name}' "
                                 f"has {dataset.num_classes} classes")
            self._module = model
        return self._module.to(device)


def absolute_spec(spec: str) -> str:
    """A spec that names an existing path, made absolute (DIR@E keeps its suffix); a callable's spec unchanged."""
    path, expert = split_spec(spec)
    if not Path(path).exists():
        return spec
    return os.path.abspath(path) + (f"@{expert}" if expert is not None else "")


def open_teacher(spec: str | TeacherSpec, teacher_model: Optional[str] = None) -> TeacherSource:
    """Parses (dd.specs.parse_spec) and hashes a teacher spec (see the module docstring); errors name the spec and
    the fix."""
    parsed = parse_spec(spec, "teacher")
    if parsed.kind == "buffer":
        return _from_buffer(parsed.text, Path(parsed.path), parsed.expert)
    if parsed.kind == "file":
        return _from_file(parsed.text, Path(parsed.path), teacher_model)
    return _from_callable(parsed.text)


def open_teachers(specs, teacher_model=None) -> list[TeacherSource]:
    """Several specs; teacher_model is one architecture for every checkpoint file, or a list with one per spec.
    A TeacherSource already opened is taken as it is (a nested plan's member: not hashed or built again)."""
    specs = list(specs)
    models = teacher_model if isinstance(teacher_model, (list, tuple)) else [teacher_model]
    if len(models) == 1:
        models = models * len(specs)
    if len(models) != len(specs):
        raise ValueError(f"--teacher-model was given {len(models)} times for {len(specs)} teachers: give it once (for "
                         "every checkpoint file) or once per --teacher, in the same order")
    for m in models:
        if m is not None:
            from dd.models import check_model

            check_model(m, "--teacher-model")
    sources = [s if isinstance(s, TeacherSource) else open_teacher(s, m) for s, m in zip(specs, models)]
    seen: dict = {}
    for src in sources:
        if src.sha256 in seen:
            raise ValueError(f"--teacher '{src.spec}' is the same teacher as --teacher '{seen[src.sha256]}' (sha256 "
                             f"{src.sha256[:12]}...): each teacher would vote twice; pass each teacher once")
        seen[src.sha256] = src.spec
    return sources


def _from_buffer(spec: str, path: Path, expert: int) -> TeacherSource:
    from dd.buffers import TrajectoryStore

    store = TrajectoryStore(path)
    if not 0 <= expert < store.num_experts:
        raise ValueError(f"teacher '{spec}': expert {expert} out of range; the buffer has {store.num_experts} experts")
    digest = sha256_bytes(f"{store.manifest_sha256}@{expert}".encode())

    def build(channels, num_classes, image_size, device):
        m = store.manifest["model"]
        if (m["channels"], m["num_classes"], tuple(m["image_size"])) != (channels, num_classes, tuple(image_size)):
            raise ValueError(f"teacher '{spec}' takes {m['channels']}x{tuple(m['image_size'])} images and "
                             f"{m['num_classes']} classes, not {channels}x{tuple(image_size)} and {num_classes}")
        return store.module(expert, -1, device=device)

    return TeacherSource(spec, "buffer", digest, store.model_name, dict(store.model_options), store.dataset_name,
                         bool(store.config.get("zca", False)), build)


def _from_file(spec: str, path: Path, teacher_model: Optional[str]) -> TeacherSource:
    digest = sha256_file(path)
    meta: dict = {}
    if path.suffix == ".safetensors":
        try:
            meta, state = read_safetensors(path)
        except Exception as e:
            raise ValueError(f"teacher '{spec}' is not a readable safetensors file ({e})") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"teacher '{spec}' could not be read as a weights-only checkpoint ({e}); dd never "
                             "unpickles arbitrary objects: save a state dict (torch.save(model.state_dict(), f))") from e
        state, meta = _state_dict_of(obj, spec)
    arch = teacher_model or meta.get("model") or meta.get("arch")
    if not arch:
        raise ValueError(f"checkpoint '{spec}' does not say its architecture; pass --teacher-model NAME (see `ddtk models`)")
    options = json.loads(meta["model_options"]) if isinstance(meta.get("model_options"), str) else {}
    zca = meta.get("zca")
    zca = None if zca is None else str(zca).lower() in ("1", "true")
    state = {k.removeprefix("module."): v for k, v in state.items()}

    def build(channels, num_classes, image_size, device):
        from dd.models import build_model

        model = build_model(arch, channels, num_classes, image_size, **options)
        adapt = getattr(model, "adapt_state_dict", None)
        sd = adapt(state) if adapt is not None else state
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"checkpoint '{spec}' does not fit model '{arch}': {str(e).splitlines()[0]} ...; "
                             "pass the right --teacher-model") from e
        return model.to(device)

    return TeacherSource(spec, "file", digest, arch, options, meta.get("dataset"), zca, build)


def _state_dict_of(obj, spec: str) -> tuple[dict, dict]:
    """(state dict, string metadata) from what a foreign checkpoint holds."""
    if not isinstance(obj, dict):
        raise ValueError(f"teacher '{spec}' holds a {type(obj).__name__}, not a state dict")
    meta = {k: v for k, v in obj.items() if isinstance(v, str)}
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, meta
    for key in _STATE_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner, meta
    raise ValueError(f"teacher '{spec}' has no state dict (looked for a dict of tensors at the top level and under "
                     f"{list(_STATE_KEYS)})")


def _from_callable(spec: str) -> TeacherSource:
    fn = import_callable(spec, "teacher", "expected 'package.module:callable' returning an nn.Module")
    model = call_user(fn, spec, "teacher", "called to build the teacher")
    if not isinstance(model, nn.Module):
        raise ValueError(f"teacher '{spec}' returned a {type(model).__name__}, not an nn.Module")
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return TeacherSource(spec, "callable", h.hexdigest(), spec, {}, None, None, lambda *a: model)


class Committee(nn.Module):
    """Weighted sum of several teachers' logits (one teacher with weight 1 is that teacher)."""

    def __init__(self, members: list[nn.Module], weights: list[float]):
        super().__init__()
        if len(members) != len(weights) or not members:
            raise ValueError("a committee needs one weight per member and at least one member")
        self.members = nn.ModuleList(members)
        self.weights = [float(w) for w in weights]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(w * m(x) for w, m in zip(self.weights, self.members))


PATH_KINDS = ("buffer", "file")  # teacher kinds whose spec is a path (a callable's spec names code, not a place)


def map_input_paths(records: Optional[dict], fn: Callable[[str], Optional[str]]) -> Optional[dict]:
    """An inputs record ({"buffers": [{"path", "sha256"}], "teachers": [describe()]}, what identities and set
    metadata hold) with `fn` applied to every path in it (a None result drops the field): one place knows which
    fields are paths, for writing them relative to a file's directory and for comparing runs by content."""
    if not isinstance(records, dict):
        return records

    def one(rec: dict, key: str) -> dict:
        if key not in rec or (key == "spec" and rec.get("kind") not in PATH_KINDS):
            return rec
        value = fn(str(rec[key]))
        return {k: v for k, v in rec.items() if k != key} if value is None else {**rec, key: value}

    return {**records, **({"buffers": [one(b, "path") for b in records["buffers"]]} if "buffers" in records else {}),
            **({"teachers": [one(t, "spec") for t in records["teachers"]]} if "teachers" in records else {})}


def open_recorded(records: list[dict]) -> list[TeacherSource]:
    """Re-opens the teachers a set's metadata names and checks each one's hash against the record."""
    sources = []
    for rec in records:
        try:
            src = open_teacher(rec["spec"], rec.get("arch") if rec.get("kind") == "file" else None)
        except (FileNotFoundError, KeyError) as e:
            raise FileNotFoundError(f"the set's recorded teacher '{rec['spec']}' cannot be opened "
                                    f"({e.args[0] if e.args else e}); pass the teacher with --teacher SPEC, or labels "
                                    "stored by `ddtk relabel` with --labels DIR") from e
        if rec.get("sha256") and src.sha256 != rec["sha256"]:
            raise ValueError(f"teacher '{rec['spec']}' has changed since the set was made (sha256 {src.sha256[:12]}... "
                             f"vs recorded {rec['sha256'][:12]}...); pass the original teacher with --teacher")
        sources.append(src)
    return sources


def recorded_module(sources: list[TeacherSource], dataset, device="cpu", weights: Optional[list[float]] = None) -> nn.Module:
    """One module of a set's recorded teachers (open_recorded): the teacher itself, or a Committee of several."""
    members = [src.module(dataset, device) for src in sources]
    if len(members) == 1 and not weights:
        return members[0]
    return Committee(members, weights or [1.0 / len(members)] * len(members)).to(device)


def teacher_from_records(records: list[dict], dataset, device="cpu", weights: Optional[list[float]] = None) -> nn.Module:
    """Re-opens the teachers a set's metadata names, checks each hash, and returns one module (a Committee if several)."""
    return recorded_module(open_recorded(records), dataset, device, weights)
