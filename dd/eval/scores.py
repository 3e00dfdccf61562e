"""DD-Ranking scores of a synthetic set: HLR, IOR, LRS and ARS, on accuracies given as fractions in [0, 1].

Definitions (DD-Ranking, `NUS-HPC-AI-Lab/DD-Ranking`):

* HLR (hard-label recovery) = Acc(real full data, hard labels) - Acc(synthetic set, hard labels); lower is better.
* IOR (improvement over random) = Acc(set, its own labels and protocol) - Acc(random real subset of the same size,
  same protocol); higher is better.
* LRS (label-robust score) = (e^alpha - e^-1) / (e - e^-1) with alpha = w * IOR - (1 - w) * HLR, w = 0.5.
* ARS (augmentation-robust score) = (e^beta - e^-1) / (e - e^-1) with
  beta = gamma * (Acc_syn - Acc_rdm, with augmentation) + (1 - gamma) * (Acc_syn - Acc_rdm, without), gamma = 0.5.

Accuracies are fractions, so HLR, IOR, alpha and beta lie in [-1, 1] and LRS and ARS in [0, 1], which is the range
the normalization (e^x - e^-1) / (e - e^-1) is made for. DD-Ranking 0.2.0's released code feeds percentages into
this normalization meant for [-1, 1], which pushes scores outside [0, 1] (e.g. HLR 30, IOR 5 -> LRS about -0.157;
IOR 10, HLR 0 -> about 63.0); dd uses fractions and refuses accuracies outside [0, 1].

"Augmentation" for ARS is the training-time augmentation of the protocol: DSA (per-sample differentiable siamese
augmentation) for the hard and soft protocols; random-resized crop views (+ flip) and CutMix/MixUp for the teacher
protocol. "With" is the set's own protocol with its augmentation (turned on when that protocol has none: DSA, or crop
views for the teacher protocol); "without" is the same protocol with DSA, crops and mixing all off.

Differences from DD-Ranking's evaluator, by design: every accuracy comes from dd's harness (last-epoch accuracy,
seeded runs, no lr grid search, the set's learned lr when it has one), scores are computed from mean accuracies over
the runs, and under the `soft` protocol the random subset trains on its class ids (dd has no soft labels for it).
"""
from __future__ import annotations

import json
import math
from typing import Optional, Sequence

from dd.eval.harness import EvalResult, RowPlan, dataset_for, full_row, random_row, run_rows, set_row
from dd.eval.protocol import Protocol, get_protocol, protocol_rule
from dd.eval.report import Report

_LOW, _HIGH = math.exp(-1.0), math.e


# ---- the scores ----------------------------------------------------------------------------------

def check_accuracy(value: float, name: str = "accuracy") -> float:
    """`value` as a float when it is a fraction in [0, 1]; a ValueError naming it otherwise (percentages, NaN)."""
    v = float(value)
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise ValueError(f"{name}={value!r} is outside [0, 1]: DD-Ranking scores in dd take accuracies as fractions "
                         f"(e.g. 0.853, not 85.3); divide percentages by 100")
    return v


def _check_difference(value: float, name: str) -> float:
    """A difference of two fractions lies in [-1, 1]; anything else was made from percentages."""
    v = float(value)
    if not (-1.0 <= v <= 1.0):
        raise ValueError(f"{name}={value!r} is outside [-1, 1]: it is a difference of accuracies, which dd takes as "
                         f"fractions in [0, 1] (e.g. 0.30, not 30); divide percentages by 100")
    return v


def check_weight(value: float, name: str) -> float:
    v = float(value)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name}={value!r} must lie in [0, 1] (it weighs two terms that add up to one)")
    return v


def hlr(full_hard: float, syn_hard: float) -> float:
    """Hard-label recovery: how much accuracy the set loses against the full data, both with hard labels."""
    return check_accuracy(full_hard, "full-data hard-label accuracy") - check_accuracy(syn_hard, "set hard-label accuracy")


def ior(syn: float, random: float) -> float:
    """Improvement over random: the set against a random real subset of its size under the same protocol."""
    return check_accuracy(syn, "set accuracy") - check_accuracy(random, "random-subset accuracy")


def normalized_score(x: float) -> float:
    """(e^x - e^-1) / (e - e^-1): maps x in [-1, 1] monotonically onto [0, 1] (0 at x = -1, 1 at x = 1)."""
    x = _check_difference(x, "score argument")
    return (math.exp(x) - _LOW) / (_HIGH - _LOW)


def lrs(hlr_value: float, ior_value: float, w: float = 0.5) -> float:
    """Label-robust score from HLR and IOR (fractions): normalized_score(w * IOR - (1 - w) * HLR)."""
    w = check_weight(w, "w")
    h, i = _check_difference(hlr_value, "HLR"), _check_difference(ior_value, "IOR")
    alpha = w * i - (1 - w) * h
    return normalized_score(alpha)


def ars(syn_aug: float, random_aug: float, syn_plain: float, random_plain: float, gamma: float = 0.5) -> float:
    """Augmentation-robust score: normalized_score of gamma * (gap with augmentation) + (1 - gamma) * (gap without)."""
    gamma = check_weight(gamma, "gamma")
    beta = gamma * ior(syn_aug, random_aug) + (1 - gamma) * ior(syn_plain, random_plain)
    return normalized_score(beta)


def scores_from_accuracies(acc: dict, w: float = 0.5, gamma: float = 0.5) -> dict:
    """Every score from mean accuracies keyed syn_hard, full_hard, syn_own, random_own (and, for ARS, syn_aug,
    random_aug, syn_plain, random_plain); intermediate alpha and beta included so a reader can check them."""
    h = hlr(acc["full_hard"], acc["syn_hard"])
    i = ior(acc["syn_own"], acc["random_own"])
    out = {"hlr": h, "ior": i, "w": w, "alpha": w * i - (1 - w) * h, "lrs": lrs(h, i, w)}
    if all(k in acc for k in ("syn_aug", "random_aug", "syn_plain", "random_plain")):
        gap_aug, gap_plain = ior(acc["syn_aug"], acc["random_aug"]), ior(acc["syn_plain"], acc["random_plain"])
        out.update(gamma=gamma, gap_aug=gap_aug, gap_plain=gap_plain, beta=gamma * gap_aug + (1 - gamma) * gap_plain,
                   ars=ars(acc["syn_aug"], acc["random_aug"], acc["syn_plain"], acc["random_plain"], gamma))
    return out


# ---- the protocols each accuracy is measured under ---------------------------------------------------

def recorded_protocol(synset) -> Protocol:
    """The protocol a set records for its own evaluation (teacher protocol of SRe2L/CDA, soft of DATM), else hard."""
    return get_protocol((synset.meta.get("evaluation") or {}).get("protocol") or "hard")


def hard_protocol_for(own: Protocol) -> Protocol:
    """HLR's protocol: the own one when it already trains on class ids, else the DC/MTT hard protocol with the same
    number of epochs (so both accuracies of the set come from the same training budget)."""
    return own if own.labels == "hard" else get_protocol("hard", epochs=own.epochs)


def with_augmentation(p: Protocol) -> Protocol:
    """p when it augments; else p with DSA on (hard/soft) or random-resized crop views on (teacher)."""
    if p.dsa or p.crop or p.mix != "none":
        return p
    return p.with_(crop=True) if protocol_rule(p.labels).needs_teacher else p.with_(dsa=True)


def without_augmentation(p: Protocol) -> Protocol:
    """p with DSA, crop views and batch mixing all off: the network sees the set's images as they are."""
    return p.with_(dsa=False, crop=False, mix="none")


# ---- measuring the accuracies with the harness: rows planned like a report's, run by its row runner ------------

def _key(kind: str, arch: str, protocol: dict, runs: int) -> tuple:
    return kind, arch, json.dumps(protocol, sort_keys=True, default=list), runs


def _reusable(rows: Sequence[EvalResult], set_name: str) -> dict[tuple, EvalResult]:
    """The rows of a report (same dataset, seed and teacher) the scores can take as they are, by what they are: the
    set's row, 'random-real' and 'full' (coreset rows are none of them); the first of equal keys is kept."""
    kinds = {"random-real": "random", "full": "full", set_name: "syn"}
    out: dict[tuple, EvalResult] = {}
    for r in rows:
        if r.name in kinds:
            out.setdefault(_key(kinds[r.name], r.arch, r.protocol, len(r.accs)), r)
    return out


def score_rows(synset, arch: str, protocol: str | Protocol | None = None, runs: int = 5, *, dataset=None,
               hard_protocol: str | Protocol | None = None, ipc: Optional[int] = None, full_epochs: int = 30,
               full_runs: int = 1, seed: int = 0, teacher=None, labels=None) -> dict[str, tuple[tuple, RowPlan]]:
    """{accuracy name (as `scores_from_accuracies` reads them): (key, row plan)}: the report rows whose mean accuracies the scores of `synset` on
    `arch` read; rows that coincide (e.g. the own protocol is hard with DSA, so syn_hard = syn_own = syn_aug) have
    equal keys and run once. protocol: the set's own for IOR and ARS (default: the one it records, else hard);
    hard_protocol: HLR's (default `hard_protocol_for(own)`); stored teacher `labels` are used where the protocol
    draws crop views, the views they were stored for."""
    own = get_protocol(protocol) if protocol is not None else recorded_protocol(synset)
    hard = get_protocol(hard_protocol) if hard_protocol is not None else hard_protocol_for(own)
    dataset = dataset or dataset_for(synset)
    ipc = ipc or synset.ipc

    def row(kind: str, p: Protocol) -> tuple[tuple, RowPlan]:
        t = teacher if protocol_rule(p.labels).needs_teacher else None
        if kind == "syn":
            plan = set_row(synset, arch, p, runs, dataset=dataset, seed=seed, teacher=t,
                           labels=labels if p.crop else None, name=synset.meta.get("method", "synthetic"))
        elif kind == "random":
            plan = random_row(dataset, ipc, arch, p, runs, seed=seed, teacher=t)
        else:
            plan = full_row(dataset, arch, p, full_runs, epochs=full_epochs, seed=seed, teacher=t)
        return _key(kind, arch, plan.protocol.to_dict(), plan.runs), plan  # what the harness records for the row

    aug, plain = with_augmentation(own), without_augmentation(own)
    wanted = {"syn_hard": ("syn", hard), "full_hard": ("full", hard), "syn_own": ("syn", own),
              "random_own": ("random", own), "syn_aug": ("syn", aug), "random_aug": ("random", aug),
              "syn_plain": ("syn", plain), "random_plain": ("random", plain)}
    return {name: row(kind, p) for name, (kind, p) in wanted.items()}


def _run_score_rows(planned: Sequence[dict[str, tuple[tuple, RowPlan]]], known: dict[tuple, EvalResult], *,
                    device="auto", group=None, progress: bool = True) -> list[dict[str, EvalResult]]:
    """Each of `planned` (score_rows' answers) as {accuracy name: EvalResult}: rows in `known` are taken as they are,
    the others run once each, all in one `run_rows` call (spread over `group`'s ranks like a report's)."""
    todo: dict[tuple, RowPlan] = {}
    for rows in planned:
        for key, plan in rows.values():
            if key not in known:
                todo.setdefault(key, plan)
    done = dict(known)
    done.update(zip(todo, run_rows(list(todo.values()), device, group=group, progress=progress)))
    return [{name: done[key] for name, (key, _) in rows.items()} for rows in planned]


def measure_accuracies(synset, arch: str, protocol: str | Protocol | None = None, runs: int = 5, *, dataset=None,
                       hard_protocol: str | Protocol | None = None, ipc: Optional[int] = None, full_epochs: int = 30,
                       full_runs: int = 1, device="auto", seed: int = 0, teacher=None, labels=None,
                       progress: bool = True, reuse: Sequence[EvalResult] = (), group=None) -> dict[str, EvalResult]:
    """The accuracies the scores need, each an EvalResult from dd's harness, keyed as `scores_from_accuracies` reads
    (see `score_rows`). `reuse` takes rows already computed with the same dataset, seed and teacher (e.g.
    `build_report`'s) and skips evaluations whose kind, architecture, protocol and runs match; group: the torchrun
    ranks the other runs are spread over (see `run_rows`)."""
    rows = score_rows(synset, arch, protocol, runs, dataset=dataset, hard_protocol=hard_protocol, ipc=ipc,
                      full_epochs=full_epochs, full_runs=full_runs, seed=seed, teacher=teacher, labels=labels)
    known = _reusable(reuse, synset.meta.get("method", "synthetic"))
    return _run_score_rows([rows], known, device=device, group=group, progress=progress)[0]


def scores_of(results: dict[str, EvalResult], arch: str, w: float = 0.5, gamma: float = 0.5) -> dict:
    """HLR, IOR, LRS and ARS from measured accuracies, with the accuracies (mean, std, runs) and protocols behind
    them; JSON-ready."""
    out = scores_from_accuracies({k: r.mean for k, r in results.items()}, w, gamma)
    out["arch"] = arch
    out["accuracies"] = {k: {"mean": r.mean, "std": r.std, "accs": list(r.accs), "protocol": r.protocol.get("name"),
                             "dsa": r.protocol.get("dsa"), "crop": r.protocol.get("crop"), "mix": r.protocol.get("mix"),
                             "labels": r.protocol.get("labels"), "epochs": r.protocol.get("epochs")}
                         for k, r in results.items()}
    return out


def evaluate_scores(synset, arch: str, protocol: str | Protocol | None = None, runs: int = 5, *, w: float = 0.5,
                    gamma: float = 0.5, **kwargs) -> dict:
    """HLR, IOR, LRS and ARS of `synset` on `arch` (see `scores_of`); kwargs go to `measure_accuracies`."""
    check_weight(w, "w")  # before any training, not after it
    check_weight(gamma, "gamma")
    return scores_of(measure_accuracies(synset, arch, protocol, runs, **kwargs), arch, w, gamma)


# ---- in the report ---------------------------------------------------------------------------------

def scores_markdown(scores: dict) -> str:
    """A Markdown block, one row per architecture, of the scores in `scores` ({arch: evaluate_scores(...)})."""
    if not scores:
        return ""

    def pct(s: dict, k: str) -> str:
        return f"{100 * s['accuracies'][k]['mean']:.2f}"

    first = next(iter(scores.values()))
    lines = [f"### DD-Ranking scores (w = {first['w']}, gamma = {first.get('gamma', '-')}; accuracies in %, "
             "scores from fractions)", "",
             "| arch | syn hard | full hard | HLR (lower better) | syn own | random own | IOR | LRS | "
             "syn aug / plain | random aug / plain | ARS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch, s in scores.items():
        lines.append(f"| {arch} | {pct(s, 'syn_hard')} | {pct(s, 'full_hard')} | {s['hlr']:.4f} | {pct(s, 'syn_own')} | "
                     f"{pct(s, 'random_own')} | {s['ior']:.4f} | {s['lrs']:.4f} | {pct(s, 'syn_aug')} / "
                     f"{pct(s, 'syn_plain')} | {pct(s, 'random_aug')} / {pct(s, 'random_plain')} | {s['ars']:.4f} |")
    lines += ["", "LRS = (e^alpha - e^-1)/(e - e^-1), alpha = w IOR - (1-w) HLR; ARS likewise of beta = gamma (syn - "
              "random, augmented) + (1-gamma) (syn - random, not augmented). Augmentation: DSA (hard/soft protocols) or "
              "crop views + mixing (teacher protocol)."]
    return "\n".join(lines) + "\n"


class ScoredReport(Report):
    """A Report whose Markdown ends with the DD-Ranking scores block of meta['scores']."""

    def to_markdown(self) -> str:
        block = scores_markdown(self.meta.get("scores") or {})
        return super().to_markdown() + (f"\n{block}" if block else "")


def add_scores(report: Report, synset, archs: Sequence[str], protocol: str | Protocol | None, runs: int, *,
               w: float = 0.5, gamma: float = 0.5, device="auto", group=None, progress: bool = True,
               **kwargs) -> ScoredReport:
    """`report` with meta['scores'] = {arch: scores_of(...)}: the report's own rows (same seed) are reused and every
    architecture's further rows run in one `run_rows` call, over `group`'s ranks when given (every rank calls this
    alike and gets the same scored report). kwargs go to `score_rows`."""
    check_weight(w, "w")
    check_weight(gamma, "gamma")
    planned = [score_rows(synset, arch, protocol, runs, **kwargs) for arch in archs]
    known = _reusable(report.rows, synset.meta.get("method", "synthetic"))
    measured = _run_score_rows(planned, known, device=device, group=group, progress=progress)
    scores = {arch: scores_of(results, arch, w, gamma) for arch, results in zip(archs, measured)}
    return ScoredReport(report.rows, {**report.meta, "scores": scores})
