"""Running an evaluation plan (dd.eval.plan) from start to report: data, teacher, every protocol's rows, optional scores;
and a relabelling plan. `ddtk eval`/`ddtk relabel` build their plan from argv, `evaluate_set` from its arguments.
"""
from __future__ import annotations

from typing import Optional, Sequence

from dd.eval.plan import EvalPlan, RelabelPlan, make_eval_plan, resolve_protocol  # noqa: F401 (resolve_protocol: reproduce reads it here)


def evaluate(plan: EvalPlan, group):
    """The report of `plan`: the runs are spread over `group`'s ranks (the scores' further runs too) and rank 0
    gets the Report (the others None)."""
    from dd.data import load_dataset
    from dd.eval.harness import build_report
    from dd.utils import seed_everything

    seed_everything(plan.seed)
    synset = plan.load_set()
    data = load_dataset(plan.dataset, root=plan.data_root, zca=plan.zca, **plan.data_options)
    device = group.local_device()
    teacher = plan.teacher.module(data, device) if plan.teacher is not None else None
    specs = [t.text for t in plan.teachers]
    selector = coreset_selector(plan.coreset_net, specs, plan.teacher_model, synset, data, device, plan.seed,
                                plan.baselines)
    archs, baselines, stored = list(plan.archs), list(plan.baselines), plan.labels
    lr_search = list(plan.lr_search) if plan.lr_search else None
    reports = [build_report(synset, archs, p, plan.runs, dataset=data, ipc=plan.ipc, baselines=baselines,
                            full_epochs=plan.full_epochs, full_runs=plan.full_runs, device=device, seed=plan.seed,
                            teacher=teacher if t else None, labels=stored if t else None, lr_search=lr_search,
                            group=group, progress=group.is_main, coreset_net=selector)
               for p, t in zip(plan.protocols, plan.with_teacher)]
    report = merge_reports(reports)
    if plan.scores is not None:  # its further rows are planned and spread over the ranks like the report's
        from dd.eval.scores import add_scores

        report = add_scores(report, synset, archs, plan.protocols[0], plan.runs, w=plan.scores[0],
                            gamma=plan.scores[1], dataset=data, ipc=plan.ipc, full_epochs=plan.full_epochs,
                            full_runs=plan.full_runs, device=device, seed=plan.seed, teacher=teacher, labels=stored,
                            group=group, progress=group.is_main)
    return report if group.is_main else None


def evaluate_set(synset, archs: Sequence[str], protocol, runs: int, *, group, dataset: Optional[str] = None,
                 zca: bool = False, ipc: Optional[int] = None, baselines: Sequence[str] = (), full_epochs: int = 30,
                 full_runs: int = 1, teachers: Sequence[str] = (), teacher_model=None, labels: Optional[str] = None,
                 lr_search: Optional[list[float]] = None, scores: Optional[tuple[float, float]] = None,
                 seed: int = 0, data_root: Optional[str] = None, data_options: Optional[dict] = None,
                 coreset_net: Optional[str] = None):
    """The report of `synset` (a SyntheticSet, a set file, or None for baselines alone) on `archs` under `protocol`
    (a Protocol, or a list of them: one report with each protocol's rows, label regimes side by side), `runs` fresh
    networks per row, beside `baselines` (dd.eval.baselines.BASELINES); the runs are spread over `group`'s ranks and
    rank 0 gets the Report (the others None). `scores` = (LRS weight, ARS weight) adds DD-Ranking's scores (one
    protocol). make_eval_plan -> evaluate: every option is checked before any data is read."""
    plan = make_eval_plan(synset, archs, protocol, runs, dataset=dataset, zca=zca, ipc=ipc, baselines=baselines,
                          full_epochs=full_epochs, full_runs=full_runs, teachers=teachers, teacher_model=teacher_model,
                          labels=labels, lr_search=lr_search, scores=scores, seed=seed, data_root=data_root,
                          data_options=data_options, coreset_net=coreset_net)
    return evaluate(plan, group)


def relabel_set(plan: RelabelPlan, device):
    """Runs a relabelling plan: the teacher's top-k logits of every epoch's views of the set, stored under plan.out;
    returns (the label directory, the set)."""
    from dd.data import load_dataset
    from dd.eval.labels import relabel
    from dd.synset import SyntheticSet

    synset = SyntheticSet.load(plan.synset)
    dataset = load_dataset(plan.set_meta["dataset"], root=plan.data_root, zca=bool(plan.set_meta.get("zca")),
                           **plan.data_options)
    teacher = plan.teacher.module(dataset, device)
    out = relabel(synset.images, teacher, plan.protocol, plan.epochs, plan.out, seed=plan.seed, topk=plan.topk,
                  flip=dataset.flip_ok, teachers=list(plan.teacher.records), device=device)
    return out, synset


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
