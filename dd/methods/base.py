"""The synthesizer interface every method implements, and helpers for checkpointable state.

A method owns its learnable tensors and optimizers; the driver (`dd.methods.driver`) owns the loop,
checkpoints, validation and logging. All randomness comes from the generator the driver passes in,
so a resumed run continues the same random stream.
"""
from __future__ import annotations

import contextlib
import dataclasses
import typing
from dataclasses import dataclass
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
    init: str = "real"  # 'real' (random real images per class) or 'noise'
    dsa: bool = True  # differentiable siamese augmentation during distillation
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    zca: bool = False  # whiten the dataset with ZCA (MTT does for CIFAR)


class Method:
    """Base class: subclasses set `name`, `Config`, and implement `step` (one outer iteration).

    Lifecycle: __init__(config, dataset, ipc, device, generator, buffer) -> init_synset() ->
    step(it) x K -> current_set(). `state()`/`load_state()` checkpoint everything that changes.
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type] = MethodConfig
    needs_buffer: ClassVar[bool] = False

    def __init__(self, config: MethodConfig, dataset: ImageDataset, ipc: int, device: torch.device,
                 generator: torch.Generator, buffer=None):
        self.config = config
        self.dataset = dataset
        self.ipc = ipc
        self.device = device
        self.g = generator
        self.buffer = buffer
        if self.needs_buffer and buffer is None:
            raise ValueError(f"method '{self.name}' needs an expert buffer: pass --buffer DIR (record one with `dd buffer`)")
        self.real = dataset.real(device)

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


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Builds a config dataclass, rejecting unknown keys with the list of known ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in values.items():
        out[k] = _coerce(v, hints.get(k, Any), k)
    return cls(**out)


def _coerce(v, typ, name):
    if not isinstance(v, str):
        return v
    origin = typing.get_origin(typ)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        if v.lower() in ("none", "null"):
            return None
        typ = args[0]
    if typ is bool:
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"option {name} expects true/false, got {v!r}")
    if typ in (int, float):
        return typ(float(v)) if typ is int and "e" in v.lower() else typ(v)
    return v
