"""`RunPlan`: one distill run resolved before any data is read (method class and checked config, opened inputs,
dataset, run options, identity); `ddtk distill`, `dd.distill` and `ddtk reproduce` build one and hand it over.

Resolution order: user > config file > preset > default (the method's `resolve_config`, with rules that read the
inputs, e.g. SRe2L's model = its teacher's architecture); the identity is computed here once and never again.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from dd.coresets import check_network
from dd.data import ImageDataset, base_name
from dd.eval import Protocol
from dd.eval.baselines import BASELINES
from dd.methods.base import Inputs, check_input_counts, coerce_fields, config_from_dict
from dd.methods.registry import METHODS
from dd.models import check_model
from dd.utils import check_ipc, to_jsonable
from dd.validate import check_dataclass, rule


@dataclass
class RunConfig:
    """The driver's options (the method's own live in its Config)."""

    # outer iterations (per batch of images for methods that recover batch by batch)
    iterations: int = field(default=1000, metadata=rule(ge=1))
    # validate every N iterations (0: never; the final set is then the last one)
    eval_every: int = field(default=100, metadata=rule(ge=0))
    val_fraction: float = field(default=0.1, metadata=rule(ge=0, lt=1))  # carved, stratified, from the training split
    val_epochs: int = field(default=300, metadata=rule(ge=1))
    val_runs: int = field(default=1, metadata=rule(ge=1))
    eval_models: tuple[str, ...] = ()  # architectures of the final report (default: the method's model)
    # epochs of the final report (None: the protocol's own, 1000 hard / 300 teacher)
    eval_epochs: Optional[int] = field(default=None, metadata=rule(ge=1))
    eval_runs: int = field(default=5, metadata=rule(ge=0))  # 0: no final report
    eval_options: dict = field(default_factory=dict)  # other Protocol fields of the final report (e.g. temperature)
    # scored beside the set, under its protocol and teacher
    baselines: tuple[str, ...] = field(default=("random", "full"), metadata=rule(choices=BASELINES))
    coreset_net: Optional[str] = None  # herding/kcenter embeddings, forgetting's buffer (None: the teacher or buffer)
    full_epochs: int = field(default=30, metadata=rule(ge=1))
    checkpoint_minutes: float = field(default=5.0, metadata=rule(ge=0))
    checkpoint_every: int = field(default=0, metadata=rule(ge=0))  # also every N iterations (0: time-based only)
    wandb: bool = False
    wandb_project: str = "dd"
    progress: bool = True


# RunConfig options that only change how often a run saves or what it prints, never its result
CADENCE = frozenset({"checkpoint_minutes", "checkpoint_every", "progress", "wandb", "wandb_project"})


def identity(cls: type, mcfg, inputs: Inputs, dataset: str | ImageDataset, ipc: int, seed: int, run: RunConfig, *,
             world: int = 1, data_options: Optional[dict] = None, out: str | Path | None = None) -> dict:
    """What must match for a checkpoint to be resumed (cadence and iteration count may change), called by make_plan
    only: for a given ImageDataset its name and size, for a name (unread) its size from the data options.
    `image_size` only for datasets read at a chosen resolution (image trees), so other checkpoints keep their
    identity; `method_module` only for a method defined outside dd/ (`ddtk plot` imports it from there).
    The inputs' paths are written relative to `out` (the run's directory): information for people; what a rerun
    compares is their content (same_run), so a moved or renamed input, or OUT moved with its buffers, is the same
    run."""
    from dd.data import resolution
    from dd.teachers import map_input_paths

    if isinstance(dataset, ImageDataset):
        name = dataset.name
        image_size = list(dataset.image_size) if resolution(base_name(name)) is not None else None
    else:
        name = base_name(dataset)
        name = name if ":" in name else name.lower()  # folder:PATH and module:callable keep their case
        res = resolution(name, data_options)
        image_size = [res, res] if res is not None else None
    keep = {"val_fraction", "val_epochs", "val_runs"}
    hashes = inputs.hashes()
    if out is not None:
        base = os.path.abspath(out)
        hashes = map_input_paths(hashes, lambda p: os.path.relpath(os.path.abspath(p), base))
    outside = {} if cls.__module__.split(".")[0] == "dd" else {"method_module": cls.__module__}  # where it registers
    return to_jsonable({"method": cls.name, **outside, "dataset": name, "ipc": ipc, "seed": seed, "config": asdict(mcfg),
                        "run": {k: v for k, v in asdict(run).items() if k in keep}, "inputs": hashes,
                        "buffer_sha256": hashes["buffers"][0]["sha256"] if hashes["buffers"] else None,
                        **({"processes": world} if world > 1 else {}),
                        **({"image_size": image_size} if image_size is not None else {})})


def content_identity(ident: dict) -> dict:
    """An identity without its inputs' paths (their sha256 stays): what two runs must share to be the same run. A
    config.json or checkpoint written before paths were recorded relative to OUT (absolute ones) compares equal."""
    from dd.teachers import map_input_paths

    return {**ident, "inputs": map_input_paths(ident["inputs"], lambda p: None)} if "inputs" in ident else ident


def same_run(a: Optional[dict], b: Optional[dict]) -> bool:
    """Do two identities (config.json, a checkpoint's, a plan's) name the same run (content_identity)?"""
    return isinstance(a, dict) and isinstance(b, dict) and content_identity(a) == content_identity(b)


def open_inputs(cls: type, buffers: Sequence = (), teachers: Sequence = (), teacher_model=None,
                verify: str = "open") -> Inputs:
    """Opens (and hash-checks) every buffer and teacher a method is given; refuses counts it does not declare.

    verify: how buffer shards are checked (dd.buffers.TrajectoryStore); 'lazy' reads none of them here, for callers
    that only need the inputs' identity (their manifests' hashes)."""
    from dd.buffers import TrajectoryStore
    from dd.specs import parse_spec
    from dd.teachers import TeacherSource, open_teachers

    buffers = [b for b in buffers if b]
    teachers = [t for t in teachers if t]
    check_input_counts(cls, len(buffers), len(teachers))
    buffers = [parse_spec(b, "buffer") for b in buffers]  # BufferSpec / TeacherSpec (dd.specs)
    # an opened TeacherSource (a nested plan's member) is passed through as open_teachers takes it
    teachers = [t if isinstance(t, TeacherSource) else parse_spec(t, "teacher") for t in teachers]
    return Inputs([TrajectoryStore(b.path, verify=verify) for b in buffers], open_teachers(teachers, teacher_model))


def check_inputs(inputs: Inputs, dataset: str, cfg) -> None:
    """Every buffer and teacher must come from this dataset and ZCA setting; buffers also from the method's model."""
    for store in inputs.buffers:
        store.check_compatible(dataset=base_name(dataset), model=cfg.model)
        if bool(store.config.get("zca", False)) != bool(cfg.zca):
            raise ValueError(f"buffer '{store.path}' was recorded with zca={bool(store.config.get('zca'))} but this run "
                             f"resolves zca={bool(cfg.zca)}; set zca to match or record another buffer")
    for teacher in inputs.teachers:
        teacher.check_compatible(dataset, cfg.zca)


def method_class(name: str) -> type:
    """A registered method by name; `package.module:name` imports the user's module first (it registers itself)."""
    if ":" in name:
        import importlib

        module, _, name = name.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise KeyError(f"cannot import the module of method '{module}:{name}': {e}") from e
    return METHODS.get(name)


def resolve(method: str, dataset: str, ipc: int, config: dict | None = None, *, buffers: Sequence = (),
            teachers: Sequence = (), teacher_model=None, verify: str = "open"):
    """(method class, resolved config, opened inputs) of a run, without reading any data.

    Order: open and hash the inputs -> resolve the config (user > config file > preset > default, plus rules that
    read the inputs) -> check the inputs against it.
    """
    cls = method_class(method)
    check_ipc(ipc)
    inputs = open_inputs(cls, buffers, teachers, teacher_model, verify=verify)
    mcfg = cls.resolve_config(dict(config or {}), dataset, ipc, inputs)
    check_model(mcfg.model, f"option 'model' of method '{cls.name}' (--model)")
    check_inputs(inputs, dataset, mcfg)
    return cls, mcfg, inputs


def run_config(run: RunConfig | dict | None) -> RunConfig:
    """The driver's options as a checked RunConfig (its eval_options typed as Protocol fields), before any work."""
    if isinstance(run, RunConfig):
        check_dataclass(run)
    else:
        run = config_from_dict(RunConfig, dict(run or {}))
    for arch in run.eval_models:
        check_model(arch, "eval_models (--eval-models)")
    check_network(run.coreset_net, run.baselines, "coreset_net (--coreset-net)")
    return replace(run, eval_options=coerce_fields(Protocol, run.eval_options), baselines=tuple(run.baselines))


def run_identity(method: str, dataset: str, ipc: int, *, buffer: str | Path | None = None, buffers: Sequence = (),
                 teachers: Sequence = (), teacher_model=None, config: dict | None = None,
                 run: RunConfig | dict | None = None, seed: int = 0, data_options: Optional[dict] = None,
                 out: str | Path | None = None) -> dict:
    """The identity a one-process `distill` with these arguments writes to OUT/config.json and its checkpoint
    (what must match for a resume, see same_run): the identity of their plan, made without reading the data or the
    buffers' shards (manifest hashes only); give `out` for the inputs' paths as OUT records them."""
    name = base_name(dataset)
    name = name if ":" in name else name.lower()  # folder:PATH and module:callable keep their case
    return make_plan(method, name, ipc, buffer=buffer, buffers=buffers, teachers=teachers, teacher_model=teacher_model,
                     config=config, run=run, seed=seed, data_options=data_options, world=1, verify="lazy",
                     out=out).identity


@dataclass(frozen=True)
class RunPlan:
    """One distill run, resolved and checked before any data is read; `dd.methods.driver.run_plan` runs it as is.

    dataset: a name (read by the driver with data_root/data_options and the config's ZCA setting) or a loaded
    ImageDataset; identity: what OUT/config.json and every checkpoint record (computed once, by make_plan)."""

    method: type
    config: Any  # the method's Config, fully resolved and checked
    inputs: Inputs  # opened and hashed buffers and teachers
    dataset: str | ImageDataset
    ipc: int
    run: RunConfig
    identity: dict
    seed: int = 0
    device: Any = "auto"
    out: Optional[Path] = None
    resume: bool = True
    data_root: Optional[str] = None
    data_options: dict = field(default_factory=dict)
    world: int = 1

    @property
    def dataset_name(self) -> str:
        return base_name(self.dataset.name) if isinstance(self.dataset, ImageDataset) else self.dataset


def make_plan(method: str = "dm", dataset: str | ImageDataset = "mnist10k", ipc: int = 10, *,
              out: str | Path | None = None, buffer: str | Path | None = None, buffers: Sequence = (),
              teachers: Sequence = (), teacher_model=None, config: dict | None = None,
              run: RunConfig | dict | None = None, device="auto", seed: int = 0, data_root: str | None = None,
              resume: bool = True, data_options: Optional[dict] = None, world: Optional[int] = None,
              verify: str = "open") -> RunPlan:
    """The plan of a distill run (the arguments of `dd.distill`): run options checked, inputs opened and hashed, the
    method's config resolved and checked against them, and the identity computed; no data is read.

    world: the number of processes (default: torchrun's WORLD_SIZE, as dd.distributed.ProcessGroup reads it);
    verify: how buffer shards are checked ('lazy': manifests only, for callers that only need the identity)."""
    run = run_config(run)
    name = base_name(dataset.name) if isinstance(dataset, ImageDataset) else dataset
    cls, mcfg, inputs = resolve(method, name, ipc, config, buffers=[buffer, *buffers], teachers=teachers,
                                teacher_model=teacher_model, verify=verify)
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    options = dict(data_options or {})
    ident = identity(cls, mcfg, inputs, dataset, ipc, seed, run, world=world, data_options=options, out=out)
    return RunPlan(cls, mcfg, inputs, dataset, ipc, run, ident, seed=seed, device=device,
                   out=Path(out) if out is not None else None, resume=resume, data_root=data_root,
                   data_options=options, world=world)
