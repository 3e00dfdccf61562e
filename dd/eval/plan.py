"""`EvalPlan` and `RelabelPlan`: one evaluation (or relabelling) of a set resolved and checked before any data is read;
`ddtk eval`, `ddtk relabel` and `evaluate_set` (hence `ddtk reproduce`) build one and hand it to dd.eval.run.

(dd.methods.base.Scoring is the other side: what a method records in its set about how the set is to be scored.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from dd.eval.protocol import Protocol
from dd.specs import TeacherSpec, parse_spec


def resolve_protocol(name: Optional[str], recorded=None, *, epochs: Optional[int] = None, lr: Optional[float] = None,
                     batch_size: Optional[int] = None, optimizer: Optional[str] = None,
                     temperature: Optional[float] = None, teacher_bn: Optional[str] = None, mix: Optional[str] = None,
                     options: Optional[dict] = None, names: Optional[dict] = None):
    """The protocol `name` (else the one a set records, else hard) with the given fields overridden (None: kept);
    `options` sets any other Protocol field by name (strings parsed as the field's type); a given lr also turns
    off a set's learned lr. Every value is checked against the field's rule, named as `names` gives it (a flag)."""
    from dd.eval.protocol import get_protocol
    from dd.methods.base import coerce_fields

    overrides = {"epochs": epochs, "batch_size": batch_size, "optimizer": optimizer, "temperature": temperature,
                 "teacher_bn": teacher_bn, "mix": mix}
    if lr is not None:
        overrides.update(lr=lr, use_learned_lr=False)
    overrides = coerce_fields(Protocol, {k: v for k, v in overrides.items() if v is not None}, names=names)
    options = dict(options or {})
    overrides.update(coerce_fields(Protocol, options, names={k: f"--protocol-option {k}" for k in options}))
    return get_protocol(name if name is not None else (recorded if recorded else "hard"), **overrides)


@dataclass(frozen=True)
class TeacherPlan:
    """The teachers an evaluation runs, opened and hash-checked: those given (an equal-weight committee when
    several), else the ones the set records (with their recorded weights); `module` builds them once data is read."""

    sources: tuple = ()  # dd.teachers.TeacherSource
    recorded: bool = False
    weights: Optional[tuple] = None  # recorded teachers' committee weights
    records: tuple = ()  # what a label directory records of them

    def module(self, dataset, device):
        from dd.teachers import Committee, recorded_module

        if self.recorded:
            return recorded_module(list(self.sources), dataset, device, list(self.weights) if self.weights else None)
        modules = [s.module(dataset, device) for s in self.sources]
        return modules[0] if len(modules) == 1 else Committee(modules, [1.0 / len(modules)] * len(modules))


def plan_teachers(teachers: Sequence[TeacherSpec], teacher_model, meta: Optional[dict], dataset: str,
                  zca: bool) -> Optional[TeacherPlan]:
    """The given teachers (checked against the dataset and ZCA setting), else those the set's metadata records
    (hashes checked); None when there are none."""
    from dd.teachers import open_recorded, open_teachers

    if teachers:
        sources = open_teachers(list(teachers), teacher_model)
        for s in sources:
            s.check_compatible(dataset, zca)
        return TeacherPlan(tuple(sources), records=tuple(s.describe() for s in sources))
    evaluation = (meta or {}).get("evaluation") or {}
    if evaluation.get("teachers"):
        weights = evaluation.get("teacher_weights")
        return TeacherPlan(tuple(open_recorded(evaluation["teachers"])), True, tuple(weights) if weights else None,
                           tuple(evaluation["teachers"]))
    return None


def set_source(synset) -> tuple[Any, Optional[dict]]:
    """(what evaluate reads, its metadata) of a set given as a SyntheticSet, a path or None: a .safetensors path is
    kept with its header's metadata (the tensors are read later); a .pt import has no header and is loaded here."""
    from dd.synset import SyntheticSet, read_meta

    if synset is None or isinstance(synset, SyntheticSet):
        return synset, (synset.meta if synset is not None else None)
    path = Path(synset)
    if path.suffix == ".pt":
        loaded = SyntheticSet.load(path)
        return loaded, loaded.meta
    return path, read_meta(path)


@dataclass(frozen=True)
class EvalPlan:
    """One report, every option checked and every input opened; dd.eval.run.evaluate runs it as is.

    synset: a set file (its tensors read by evaluate), a loaded SyntheticSet, or None (baselines alone); set_meta:
    its metadata, read from the header. protocols: resolved; with_teacher[i]: protocol i's rows run the teacher or
    stored `labels` (opened, verified); teacher: None when no row needs it. dataset/zca/data_options: what
    load_dataset reads. set_defaults: metadata filled into the loaded set where it records none (`ddtk eval`: the
    run log's wall time)."""

    synset: Any
    set_meta: Optional[dict]
    archs: tuple[str, ...]
    protocols: tuple[Protocol, ...]
    runs: int
    seed: int
    dataset: str
    zca: bool
    data_root: Optional[str] = None
    data_options: dict = field(default_factory=dict)
    baselines: tuple[str, ...] = ()
    ipc: Optional[int] = None
    full_epochs: int = 30
    full_runs: int = 1
    teachers: tuple[TeacherSpec, ...] = ()
    teacher_model: Any = None
    teacher: Optional[TeacherPlan] = None
    with_teacher: tuple[bool, ...] = ()
    labels: Any = None  # dd.eval.labels.StoredLabels
    lr_search: Optional[tuple[float, ...]] = None
    scores: Optional[tuple[float, float]] = None  # (LRS weight w, ARS weight gamma)
    coreset_net: Optional[str] = None
    set_defaults: dict = field(default_factory=dict)

    def load_set(self):
        """The set itself (None for baselines alone), with `set_defaults` filled in."""
        from dd.synset import SyntheticSet

        synset = SyntheticSet.load(self.synset) if isinstance(self.synset, Path) else self.synset
        if synset is not None:
            for k, v in self.set_defaults.items():
                synset.meta.setdefault(k, v)
        return synset


def _protocols(protocol, recorded, overrides: Optional[dict]) -> list[Protocol]:
    """Protocol objects as given; names (None: the recorded one, else hard) resolved with `overrides`."""
    given = list(protocol) if isinstance(protocol, (list, tuple)) else [protocol]
    return [p if isinstance(p, Protocol) else resolve_protocol(p, recorded, **(overrides or {})) for p in given]


def make_eval_plan(synset, archs: Sequence[str], protocol, runs: int, *, dataset: Optional[str] = None,
                   zca: bool = False, ipc: Optional[int] = None, baselines: Sequence[str] = (), full_epochs: int = 30,
                   full_runs: int = 1, teachers: Sequence = (), teacher_model=None, labels: Optional[str] = None,
                   lr_search: Optional[Sequence[float]] = None, scores: Optional[tuple[float, float]] = None,
                   seed: int = 0, data_root: Optional[str] = None, data_options: Optional[dict] = None,
                   coreset_net: Optional[str] = None, protocol_overrides: Optional[dict] = None,
                   set_defaults: Optional[dict] = None) -> EvalPlan:
    """The plan of `evaluate_set`'s arguments (see there), made without reading any dataset or set tensor.

    synset: a SyntheticSet, a set file or None; protocol: a Protocol, a name (None: the set's recorded one) or a list
    of them (one report, each protocol's rows in turn); names are resolved with `protocol_overrides` (the keyword
    arguments of `resolve_protocol`)."""
    from dd.coresets import check_network
    from dd.data import DEFAULT_DATASET
    from dd.eval.baselines import check_baselines
    from dd.eval.harness import lr_candidates, options_for_set
    from dd.eval.protocol import protocol_rule
    from dd.models import check_model

    source, meta = set_source(synset)
    recorded = (meta.get("evaluation") or {}).get("protocol") if meta is not None else None
    protocols = _protocols(protocol, recorded, protocol_overrides)
    archs = tuple(archs)
    for a in archs:
        check_model(a, "--models")
    baselines = tuple(check_baselines(list(baselines), "--baseline"))
    if source is None and not baselines:
        raise ValueError("give a synthetic set file or --baseline NAME")
    if scores is not None:
        from dd.eval.scores import check_weight

        if len(protocols) > 1:
            raise ValueError("--scores compares a set with its baselines under one protocol: give --protocol, not "
                             "--protocols")
        if source is None:
            raise ValueError("--scores compares a synthetic set with its baselines: give the set file")
        scores = (check_weight(scores[0], "--lrs-weight"), check_weight(scores[1], "--ars-weight"))
    with_teacher = tuple(protocol_rule(p.labels).needs_teacher for p in protocols)
    if labels and not any(with_teacher):
        raise ValueError("--labels holds teacher labels: use it with --protocol teacher (with --protocols, the teacher "
                         "protocol's rows read them)")
    stored = None
    if labels:  # its manifest and every epoch file checked before any data is read
        from dd.eval.labels import StoredLabels

        stored = StoredLabels(labels)
    sampled = [b for b in baselines if b != "full"]  # the baselines that draw ipc images per class
    if ipc is not None and not sampled:
        raise ValueError("--ipc sets the images per class of the random-real and coreset baselines, and this report "
                         "has none: drop --ipc or add --baseline random")
    if sampled and ipc is None and source is None:
        raise ValueError(f"--baseline {sampled[0]} needs --ipc N")
    check_network(coreset_net, baselines)
    if lr_search:
        lr_candidates(lr_search)  # refused here, before any data, not when the first row is planned
    lr_search = tuple(float(c) for c in lr_search) if lr_search else None
    name = dataset if dataset is not None else ((meta.get("dataset") if meta else None) or DEFAULT_DATASET)
    zca = bool(meta["zca"]) if meta is not None and "zca" in meta else zca
    options = dict(data_options or {})
    options = options_for_set(name, meta, options) if meta is not None else options
    specs = tuple(parse_spec(t, "teacher") for t in teachers or ())
    # stored labels stand in for the teacher on the set's rows; baseline rows and scores still run the teacher
    needs_teacher = any(with_teacher) and (stored is None or bool(baselines) or scores is not None)
    teacher = plan_teachers(specs, teacher_model, meta, name, zca) if needs_teacher else None
    if needs_teacher and teacher is None:
        raise ValueError(f"the {protocols[with_teacher.index(True)].name} protocol needs a teacher: pass --teacher "
                         "SPEC (e.g. a `ddtk buffer` directory)")
    return EvalPlan(source, meta, archs, tuple(protocols), runs, seed, name, zca, data_root, options, baselines, ipc,
                    full_epochs, full_runs, specs, teacher_model, teacher, with_teacher, stored, lr_search, scores,
                    coreset_net, dict(set_defaults or {}))


@dataclass(frozen=True)
class RelabelPlan:
    """One `ddtk relabel`: the set file, its teacher-protocol views' protocol, the teachers (opened), where the
    labels go and how many epochs of views; dd.eval.run.relabel_set runs it."""

    synset: Path
    set_meta: dict
    protocol: Protocol
    teacher: TeacherPlan
    out: Path
    epochs: int
    topk: int = 10
    seed: int = 0
    data_root: Optional[str] = None
    data_options: dict = field(default_factory=dict)


def make_relabel_plan(synset, out, epochs: Optional[int], *, protocol: Optional[str] = None,
                      protocol_overrides: Optional[dict] = None, teachers: Sequence = (), teacher_model=None,
                      topk: int = 10, seed: int = 0, data_root: Optional[str] = None,
                      data_options: Optional[dict] = None) -> RelabelPlan:
    """The plan of a relabelling, every option checked and the teachers opened before any data is read."""
    from dd.eval.harness import options_for_set
    from dd.eval.protocol import protocol_rule
    from dd.eval.rules import Teacher

    if not out:
        raise ValueError("ddtk relabel needs --out DIR (the label directory)")
    if epochs is None:
        raise ValueError("ddtk relabel needs --epochs E (how many epochs of views to store; training cycles through them)")
    source, meta = set_source(synset)
    if not isinstance(source, Path):
        raise ValueError(f"ddtk relabel reads a .safetensors synthetic set, not '{synset}'")
    recorded = (meta.get("evaluation") or {}).get("protocol") or "teacher"
    resolved = _protocols(protocol, recorded, protocol_overrides)[0]
    if not isinstance(protocol_rule(resolved.labels), Teacher):  # the teacher protocol or a user's subclass of it
        raise ValueError(f"the set is scored under the '{resolved.name}' protocol but stored labels are teacher labels "
                         "(the views and loss of the teacher protocol): pass --protocol teacher (with --teacher SPEC "
                         "if the set records no teacher)")
    teacher = plan_teachers(tuple(parse_spec(t, "teacher") for t in teachers or ()), teacher_model, meta, meta["dataset"],
                            bool(meta.get("zca")))
    if teacher is None:
        raise ValueError("pass --teacher SPEC (the set records no teacher)")
    options = options_for_set(meta["dataset"], meta, dict(data_options or {}))
    return RelabelPlan(source, meta, resolved, teacher, Path(out), epochs, topk, seed, data_root, options)
