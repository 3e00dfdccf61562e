"""The synthesizer interface every method implements, and helpers for checkpointable state.

A method owns its learnable tensors and optimizers; the driver (`dd.methods.driver`) owns the loop,
checkpoints, validation and logging. All randomness comes from the generator the driver passes in,
so a resumed run continues the same random stream.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch

from dd.data import ImageDataset
from dd.synset import SyntheticSet


class DistillationDiverged(RuntimeError):
    """Raised by a method when its state has become invalid (NaN/inf loss, negative lr, zero distance)."""


@dataclass
class MethodConfig:
    """Options every method shares; subclasses add their own with the paper's defaults."""

    model: str = "convnet"  # architecture the method distils with
    init: str = "real"  # 'real' (random real images per class) or 'noise'; some methods add their own
    dsa: bool = True  # differentiable siamese augmentation during distillation
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    zca: bool = False  # whiten the dataset with ZCA (MTT does for CIFAR)


@dataclass
class Inputs:
    """What a method reads besides the data, opened, checked and hashed by the driver: expert buffers, teachers."""

    buffers: list = field(default_factory=list)  # dd.buffers.TrajectoryStore
    teachers: list = field(default_factory=list)  # dd.teachers.TeacherSource

    def hashes(self) -> dict:
        """Every input's hash, for the checkpoint identity and the set's metadata."""
        return {"buffers": [{"path": str(b.path), "sha256": b.manifest_sha256} for b in self.buffers],
                "teachers": [t.describe() for t in self.teachers]}


@dataclass
class Scoring:
    """How a method's set must be scored: the protocol, the teacher module (if any) and its records, stored labels."""

    protocol: Any = "hard"  # a protocol name or dd.eval.Protocol
    teacher: Optional[torch.nn.Module] = None
    teachers: list = field(default_factory=list)  # describe() records of the teachers behind `teacher`
    teacher_weights: Optional[list] = None
    labels: Optional[str] = None  # a directory written by `ddtk relabel` (None: labels on the fly)

    def to_meta(self) -> dict:
        from dd.eval import get_protocol

        return {"protocol": get_protocol(self.protocol).to_dict(), "teachers": self.teachers,
                "teacher_weights": self.teacher_weights, "labels": self.labels}


class Method:
    """Base class: subclasses set `name`, `Config`, and implement `step` (one outer iteration).

    Lifecycle: resolve_config(...) -> __init__(config, dataset, ipc, device, generator, inputs) -> init_synset() ->
    step(it) x num_steps(iterations) -> current_set() -> finalize(set, out, protocol) -> evaluation().
    `state()`/`load_state()` checkpoint everything that changes. Inputs are declared as (min, max) counts.
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type] = MethodConfig
    buffers: ClassVar[tuple[int, Optional[int]]] = (0, 0)  # expert buffers it reads (min, max; None: any number)
    teachers: ClassVar[tuple[int, Optional[int]]] = (0, 0)  # teachers it reads
    shardable: ClassVar[bool] = False  # step() may run under torchrun, each rank on its share (see num_steps)
    partial_sets: ClassVar[bool] = False  # current_set() mid-run is partly unoptimized: validate only at the end
    model_from_teacher: ClassVar[bool] = False  # an unset option `model` is the first teacher's architecture
    # option -> small value `ddtk reproduce --smoke` shrinks it to (min with the configured value), for its own fields
    smoke: ClassVar[dict] = {}
    # metrics step() logs that are not worth a curve in `ddtk plot` (flags, draws); it, sec, val_acc are always left out
    bookkeeping: ClassVar[frozenset] = frozenset()
    # a metric whose truthy value says step() skipped its update: a non-finite loss then is not a divergence
    skip_flag: ClassVar[Optional[str]] = None

    def __init__(self, config: MethodConfig, dataset: ImageDataset, ipc: int, device: torch.device,
                 generator: torch.Generator, inputs: Optional[Inputs] = None, group=None):
        from dd.distributed import ProcessGroup

        self.config = config
        self.dataset = dataset
        self.ipc = ipc
        self.device = device
        self.g = generator
        self.inputs = inputs or Inputs()
        check_input_counts(type(self), len(self.inputs.buffers), len(self.inputs.teachers))
        self.buffer = self.inputs.buffers[0] if self.inputs.buffers else None
        self.group = group or ProcessGroup.single()  # rank/world under torchrun (shardable methods only)
        self.real = dataset.real(device)

    # -- configuration, before any data is loaded ----------------------------------------------
    @classmethod
    def preset(cls, dataset: str, ipc: int) -> dict[str, Any]:
        """Options the method's papers use for (dataset, ipc); they fill what the user and config file leave unset."""
        return {}

    @classmethod
    def resolve_config(cls, values: dict[str, Any], dataset: str, ipc: int, inputs: Inputs) -> MethodConfig:
        """user/config-file values > the preset for (dataset, ipc) > the dataclass defaults, as one typed config;
        with `model_from_teacher`, an unset `model` is the first teacher's architecture (before the preset's)."""
        values = dict(values)
        first = inputs.teachers[0] if inputs.teachers else None
        if cls.model_from_teacher and "model" not in values and first and first.arch and not first.arch_options:
            values["model"] = first.arch
        return config_from_dict(cls.Config, {**cls.preset(dataset, ipc), **values})

    # -- loop length and phases after the loop -----------------------------------------------------
    def num_steps(self, iterations: int) -> int:
        """How many step() calls `iterations` means for this method (and this rank); the default is one each."""
        return iterations

    def finalize(self, synset: SyntheticSet, out: Optional[Path], protocol) -> SyntheticSet:
        """Runs once after the loop on the chosen set (e.g. relabeling under `protocol`, the report's); returns it."""
        return synset

    def evaluation(self) -> Scoring:
        """The protocol (and teacher) the set is scored with: hard labels, or soft when the set has label distributions."""
        return Scoring("soft" if self.current_set().soft else "hard")

    # -- to implement ---------------------------------------------------------------------------
    def init_synset(self) -> SyntheticSet:
        """Creates the initial set and its optimizers (real or noise init by default)."""
        raise NotImplementedError

    def step(self, it: int) -> dict[str, float]:
        """One outer iteration; returns scalar metrics to log (must include 'loss')."""
        raise NotImplementedError

    def current_set(self) -> SyntheticSet:
        """The set to validate and save now (a detached copy)."""
        raise NotImplementedError

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, json) holding everything `load_state` needs to continue exactly."""
        raise NotImplementedError

    def load_state(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------------------
    def initial_set(self) -> SyntheticSet:
        """Random real images per class or noise, as config.init says, drawn from the method's generator."""
        make = {"real": SyntheticSet.from_real, "noise": SyntheticSet.from_noise}.get(self.config.init)
        if make is None:
            raise ValueError(f"unknown init '{self.config.init}'; choose 'real' or 'noise'")
        return make(self.dataset, self.ipc, self.g, method=self.name)

    def seed_int(self) -> int:
        """A fresh integer seed from the method's generator (for model construction)."""
        return int(torch.randint(0, 2**62, (1,), generator=self.g))

    @contextlib.contextmanager
    def seeded(self):
        """Runs a block (e.g. building a random network) under a seed drawn from the method's generator."""
        seed = self.seed_int()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield


def optimizer_state(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flattens an optimizer's per-parameter state into named tensors plus JSON scalars."""
    tensors, info = {}, {"param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for k, v in opt.state.get(p, {}).items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.{i}.{k}"] = v.detach().clone()
            else:
                info[f"{i}.{k}"] = v
    return tensors, info


def load_optimizer_state(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], info: dict) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    for g, saved in zip(opt.param_groups, info["param_groups"]):
        g.update(saved)
    for i, p in enumerate(params):
        st = {}
        for name, v in tensors.items():
            if name.startswith(f"{prefix}.{i}."):
                st[name[len(f"{prefix}.{i}."):]] = v.to(p.device)
        for k, v in info.items():
            if k.startswith(f"{i}."):
                st[k[len(f"{i}."):]] = v
        if st:
            opt.state[p] = st


def check_input_counts(cls: type, buffers: int, teachers: int) -> None:
    """Refuses too few or too many buffers/teachers for a method, saying how to pass them."""
    for kind, have, flag, how in (("buffers", buffers, "--buffer DIR", "record one with `ddtk buffer`"),
                                  ("teachers", teachers, "--teacher SPEC",
                                   "train one with `ddtk buffer --experts 1 --out DIR` and pass DIR")):
        lo, hi = getattr(cls, kind)
        if have < lo:
            raise ValueError(f"method '{cls.name}' needs {lo if hi == lo else f'at least {lo}'} {kind[:-1]}"
                             f"{'s' if lo > 1 else ''}: pass {flag} ({how})")
        if hi is not None and have > hi:
            raise ValueError(f"method '{cls.name}' takes {'no' if hi == 0 else f'at most {hi}'} {kind} "
                             f"({flag.split()[0]}), got {have}")


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Builds a config dataclass, rejecting unknown keys (with the known ones) and mistyped values (see coerce_fields)."""
    return cls(**coerce_fields(cls, values))


def coerce_fields(cls: type, values: dict[str, Any], names: Optional[dict] = None) -> dict[str, Any]:
    """Parses command-line strings and checks JSON values (--config files, the Python API) against a dataclass's
    field types and declared rules (dd.validate); an unknown key is refused with the known ones, a wrong value with
    its key (or its flag in `names`) and what is expected."""
    from dd.validate import check_fields

    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        given = ", ".join(names[k] for k in unknown if names and k in names)
        raise ValueError(f"{given + ': ' if given else ''}unknown option(s) {unknown} for {cls.__name__}; known: "
                         f"{sorted(fields)}")
    hints = typing.get_type_hints(cls)
    out = {k: coerce_value(v, hints.get(k, Any), k, cls.__name__) for k, v in values.items()}
    return check_fields(cls, out, names)


class _Mismatch(Exception):
    """A value that does not fit a type (turned into a ValueError naming the option by coerce_value)."""


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_UNION = (typing.Union, getattr(types, "UnionType", typing.Union))
_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def coerce_value(v: Any, typ: Any, name: str, owner: str = "") -> Any:
    """One option's value as its declared type: a string is parsed (e.g. --set lr=0.1), any other value must
    already fit (a number for a float, a list for a tuple); else a ValueError names the option and the type."""
    try:
        return _convert(v, typ)
    except _Mismatch:
        where = f" of {owner}" if owner else ""
        raise ValueError(f"option {name!r}{where} expects {describe_type(typ)}, got {v!r}") from None


def describe_type(typ: Any) -> str:
    """A type as an error message says it: 'an integer', 'a number or none', '2 comma-separated numbers' ..."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in _UNION:
        inner = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or none" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a comma-separated list of {_PLURAL.get(args[0], 'values')}"
        kinds = {_PLURAL.get(a, "values") for a in args}
        return f"{len(args)} comma-separated {kinds.pop() if len(kinds) == 1 else 'values'}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            dict: "a JSON object"}.get(typ, getattr(typ, "__name__", str(typ)))


def _convert(v: Any, typ: Any) -> Any:
    """coerce_value's work: the converted value, or _Mismatch."""
    origin = typing.get_origin(typ)
    if origin in _UNION:
        return _convert_union(v, typing.get_args(typ))
    if origin is tuple:
        return _convert_tuple(v, typing.get_args(typ))
    if typ is bool:
        return _convert_bool(v)
    if typ is int:
        return _convert_int(v)
    if typ is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if typ is str:
        if isinstance(v, str):
            return v
        raise _Mismatch
    if typ is dict:
        return _convert_dict(v)
    return v  # Any, or a type the options do not use: taken as given


def _convert_union(v: Any, args: tuple) -> Any:
    if type(None) in args and (v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null"))):
        return None
    for a in args:
        if a is type(None):
            continue
        try:
            return _convert(v, a)
        except _Mismatch:
            pass
    raise _Mismatch


def _convert_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    raise _Mismatch


def _convert_int(v: Any) -> int:
    """Integers, and whole numbers written as floats ('1e3', 1000.0); 1.5 or 'abc' do not fit."""
    if isinstance(v, bool):
        raise _Mismatch
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                v = float(v)
            except ValueError:
                raise _Mismatch from None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise _Mismatch


def _convert_dict(v: Any) -> dict:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            raise _Mismatch from None
    if isinstance(v, dict):
        return v
    raise _Mismatch


def _convert_tuple(v: Any, args: tuple) -> tuple:
    """A list/tuple, or a comma-separated string ('0.08,1' or '(0.08, 1)'), element by element."""
    if isinstance(v, str):
        text = v.strip().strip("()[]").strip()
        v = [p.strip() for p in text.split(",")] if text else []
    if not isinstance(v, (list, tuple)):
        raise _Mismatch
    if len(args) == 2 and args[1] is Ellipsis:
        kinds = [args[0]] * len(v)
    elif len(args) == len(v):
        kinds = list(args)
    else:
        raise _Mismatch
    return tuple(_convert(item, kind) for item, kind in zip(v, kinds))
