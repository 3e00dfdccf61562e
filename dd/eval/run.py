"""One evaluation of a set (or of baselines) from start to report: protocol, data, teacher, runs, optional scores.

`ddtk eval` parses its options into these calls and `ddtk reproduce` makes them directly, so both mean the same.
"""
from __future__ import annotations

from typing import Optional, Sequence


def resolve_protocol(name: Optional[str], recorded=None, *, epochs: Optional[int] = None, lr: Optional[float] = None,
                     batch_size: Optional[int] = None, optimizer: Optional[str] = None,
                     temperature: Optional[float] = None, teacher_bn: Optional[str] = None, mix: Optional[str] = None,
                     options: Optional[dict] = None, names: Optional[dict] = None):
    """The protocol `name` (else the one a set records, else hard) with the given fields overridden (None: kept);
    `options` sets any other Protocol field by name (strings parsed as the field's type); a given lr also turns
    off a set's learned lr. Every value is checked against the field's rule, named as `names` gives it (a flag)."""
    from dd.eval.protocol import Protocol, get_protocol
    from dd.methods.base import coerce_fields

    overrides = {"epochs": epochs, "batch_size": batch_size, "optimizer": optimizer, "temperature": temperature,
                 "teacher_bn": teacher_bn, "mix": mix}
    if lr is not None:
        overrides.update(lr=lr, use_learned_lr=False)
    overrides = coerce_fields(Protocol, {k: v for k, v in overrides.items() if v is not None}, names=names)
    options = dict(options or {})
    overrides.update(coerce_fields(Protocol, options, names={k: f"--protocol-option {k}" for k in options}))
    return get_protocol(name if name is not None else (recorded if recorded else "hard"), **overrides)


def teacher_for(teachers: Sequence[str], teacher_model, synset, dataset, device):
    """The given teachers (several: an equal-weight committee), else the teacher(s) the set records; None when
    there is none."""
    from dd.teachers import Committee, open_teachers, teacher_from_records

    if teachers:
        members = open_teachers(list(teachers), teacher_model)
        for m in members:
            m.check_compatible(dataset.name, dataset.zca is not None)
        modules = [m.module(dataset, device) for m in members]
        return modules[0] if len(modules) == 1 else Committee(modules, [1.0 / len(modules)] * len(modules))
    evaluation = (synset.meta.get("evaluation") or {}) if synset is not None else {}
    if evaluation.get("teachers"):
        return teacher_from_records(evaluation["teachers"], dataset, device, evaluation.get("teacher_weights"))
    return None


def evaluate_set(synset, archs: Sequence[str], protocol, runs: int, *, group, dataset: Optional[str] = None,
                 zca: bool = False, ipc: Optional[int] = None, baselines: Sequence[str] = (), full_epochs: int = 30,
                 full_runs: int = 1, teachers: Sequence[str] = (), teacher_model=None, labels: Optional[str] = None,
                 lr_search: Optional[list[float]] = None, scores: Optional[tuple[float, float]] = None,
                 seed: int = 0, data_root: Optional[str] = None, data_options: Optional[dict] = None,
                 coreset_net: Optional[str] = None):
    """The report of `synset` (a SyntheticSet, or None for baselines alone) on `archs` under `protocol` (a Protocol,
    or a list of them: one report with each protocol's rows, label regimes side by side), `runs` fresh networks per
    row, beside `baselines` (dd.eval.baselines.BASELINES); the runs are spread over `group`'s ranks and rank 0 gets
    the Report (the others None). `scores` = (LRS weight, ARS weight) adds DD-Ranking's scores (one protocol)."""
    from dd.data import DEFAULT_DATASET, load_dataset
    from dd.eval.harness import build_report, options_for_set
    from dd.eval.protocol import protocol_rule
    from dd.utils import seed_everything

    protocols = list(protocol) if isinstance(protocol, (list, tuple)) else [protocol]
    seed_everything(seed)
    if synset is None and not baselines:
        raise ValueError("give a synthetic set file or --baseline NAME")
    if scores is not None:
        from dd.eval.scores import check_weight

        if len(protocols) > 1:
            raise ValueError("--scores compares a set with its baselines under one protocol: give --protocol, not "
                             "--protocols")
        if synset is None:
            raise ValueError("--scores compares a synthetic set with its baselines: give the set file")
        check_weight(scores[0], "--lrs-weight")  # before any training
        check_weight(scores[1], "--ars-weight")
    with_teacher = [protocol_rule(p.labels).needs_teacher for p in protocols]
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
    if sampled and ipc is None and synset is None:
        raise ValueError(f"--baseline {sampled[0]} needs --ipc N")
    from dd.coresets import check_network

    check_network(coreset_net, baselines)
    name = dataset if dataset is not None else ((synset.meta.get("dataset") if synset else None) or DEFAULT_DATASET)
    zca = bool(synset.meta["zca"]) if synset is not None and "zca" in synset.meta else zca
    options = dict(data_options or {})
    data = load_dataset(name, root=data_root, zca=zca,
                        **(options_for_set(name, synset.meta, options) if synset is not None else options))
    device = group.local_device()
    # stored labels stand in for the teacher on the set's rows; baseline rows and scores still run the teacher
    needs_teacher = any(with_teacher) and (stored is None or bool(baselines) or scores is not None)
    teacher = teacher_for(teachers, teacher_model, synset, data, device) if needs_teacher else None
    if needs_teacher and teacher is None:
        raise ValueError(f"the {protocols[with_teacher.index(True)].name} protocol needs a teacher: pass --teacher "
                         "SPEC (e.g. a `ddtk buffer` directory)")
    selector = coreset_selector(coreset_net, teachers, teacher_model, synset, data, device, seed, baselines)
    reports = [build_report(synset, list(archs), p, runs, dataset=data, ipc=ipc, baselines=list(baselines),
                            full_epochs=full_epochs, full_runs=full_runs, device=device, seed=seed,
                            teacher=teacher if t else None, labels=stored if t else None, lr_search=lr_search,
                            group=group, progress=group.is_main, coreset_net=selector)
               for p, t in zip(protocols, with_teacher)]
    if not group.is_main:
        return None
    report = merge_reports(reports)
    if scores is not None:
        from dd.eval.scores import add_scores

        if group.world > 1:
            print(f"--scores: the report's runs were spread over {group.world} processes; the scores' further "
                  "evaluations run in this one (rank 0)")
        report = add_scores(report, synset, list(archs), protocols[0], runs, w=scores[0], gamma=scores[1],
                            dataset=data, ipc=ipc, full_epochs=full_epochs, full_runs=full_runs, device=device,
                            seed=seed, teacher=teacher, labels=stored)
    return report


def merge_reports(reports: list):
    """One report of several protocols' reports: every row in turn, the first one's meta with each protocol and
    the summed wall time."""
    from dd.eval.report import Report

    if len(reports) == 1:
        return reports[0]
    meta = dict(reports[0].meta)
    meta["protocols"] = [r.meta["protocol"] for r in reports]
    meta["wall_seconds"] = sum(r.meta["wall_seconds"] for r in reports)
    return Report([row for r in reports for row in r.rows], meta=meta)


def coreset_selector(coreset_net: Optional[str], teachers: Sequence[str], teacher_model, synset, dataset, device,
                     seed: int, baselines: Sequence[str]):
    """One Selector shared by every protocol's report (embeddings computed once), reading `coreset_net`, else the
    first teacher given, else the teacher the set records, else a network trained on the training split; None when no
    coreset baseline is asked for."""
    from dd.coresets import SELECTIONS, Selector

    if not set(SELECTIONS) & set(baselines):
        return None
    records = ((synset.meta.get("evaluation") or {}).get("teachers") or []) if synset is not None else []
    spec = coreset_net or (teachers[0] if teachers else None) or (records[0]["spec"] if records else None)
    model = teacher_model[0] if teacher_model and not coreset_net else None
    return Selector(dataset, spec, device=device, seed=seed, teacher_model=model)
