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

from dd.eval.harness import (EvalResult, _for_real_images, dataset_for, evaluate, evaluate_full, evaluate_random)
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


# ---- measuring the accuracies with the harness ----------------------------------------------------

def _key(kind: str, arch: str, protocol: dict, runs: int) -> tuple:
    return kind, arch, json.dumps(protocol, sort_keys=True, default=list), runs


def _kind(result: EvalResult) -> str:
    """The harness names its baseline rows 'random-real' and 'full'; any other row is the set."""
    return {"random-real": "random", "full": "full"}.get(result.name, "syn")


def measure_accuracies(synset, arch: str, protocol: str | Protocol | None = None, runs: int = 5, *, dataset=None,
                       hard_protocol: str | Protocol | None = None, ipc: Optional[int] = None, full_epochs: int = 30,
                       full_runs: int = 1, device="auto", seed: int = 0, teacher=None, labels=None,
                       progress: bool = True, reuse: Sequence[EvalResult] = ()) -> dict[str, EvalResult]:
    """The accuracies the scores need, each an EvalResult from dd's harness, keyed as `scores_from_accuracies` reads.

    protocol: the set's own protocol for IOR and ARS (default: the one the set records, else hard); hard_protocol:
    HLR's (default `hard_protocol_for(own)`). Evaluations that coincide (e.g. the own protocol is hard with DSA, so
    syn_hard = syn_own = syn_aug) run once. `reuse` takes rows already computed with the same dataset, seed and
    teacher (e.g. `build_report`'s) and skips evaluations whose kind, architecture, protocol and runs match.
    Stored teacher labels (`labels`) are used where the protocol draws crop views, the views they were stored for.
    """
    own = get_protocol(protocol) if protocol is not None else recorded_protocol(synset)
    hard = get_protocol(hard_protocol) if hard_protocol is not None else hard_protocol_for(own)
    dataset = dataset or dataset_for(synset)
    ipc = ipc or synset.ipc
    cache = {_key(_kind(r), r.arch, r.protocol, len(r.accs)): r for r in reuse}
    common = dict(device=device, seed=seed, progress=progress)

    def key(kind: str, p: Protocol) -> tuple:
        """What the harness records for this evaluation (baselines train real images on class ids under 'soft')."""
        if kind == "syn":
            return _key(kind, arch, p.to_dict(), runs)
        if kind == "random":
            return _key(kind, arch, _for_real_images(p).to_dict(), runs)
        return _key(kind, arch, _for_real_images(p.with_(epochs=full_epochs)).to_dict(), full_runs)

    def run(kind: str, p: Protocol) -> EvalResult:
        t = teacher if protocol_rule(p.labels).needs_teacher else None
        if kind == "syn":
            return evaluate(synset, arch, p, runs, dataset=dataset, teacher=t, labels=labels if p.crop else None,
                            name=synset.meta.get("method", "synthetic"), **common)
        if kind == "random":
            return evaluate_random(dataset, ipc, arch, p, runs, teacher=t, **common)
        return evaluate_full(dataset, arch, p, full_runs, epochs=full_epochs, teacher=t, **common)

    def get(kind: str, p: Protocol) -> EvalResult:
        k = key(kind, p)
        if k not in cache:
            cache[k] = run(kind, p)
        return cache[k]

    aug, plain = with_augmentation(own), without_augmentation(own)
    return {"syn_hard": get("syn", hard), "full_hard": get("full", hard),
            "syn_own": get("syn", own), "random_own": get("random", own),
            "syn_aug": get("syn", aug), "random_aug": get("random", aug),
            "syn_plain": get("syn", plain), "random_plain": get("random", plain)}


def evaluate_scores(synset, arch: str, protocol: str | Protocol | None = None, runs: int = 5, *, w: float = 0.5,
                    gamma: float = 0.5, **kwargs) -> dict:
    """HLR, IOR, LRS and ARS of `synset` on `arch`, with the accuracies (mean, std, runs) and protocols behind them;
    JSON-ready. kwargs go to `measure_accuracies`."""
    check_weight(w, "w")  # before any training, not after it
    check_weight(gamma, "gamma")
    results = measure_accuracies(synset, arch, protocol, runs, **kwargs)
    out = scores_from_accuracies({k: r.mean for k, r in results.items()}, w, gamma)
    out["arch"] = arch
    out["accuracies"] = {k: {"mean": r.mean, "std": r.std, "accs": list(r.accs), "protocol": r.protocol.get("name"),
                             "dsa": r.protocol.get("dsa"), "crop": r.protocol.get("crop"), "mix": r.protocol.get("mix"),
                             "labels": r.protocol.get("labels"), "epochs": r.protocol.get("epochs")}
                         for k, r in results.items()}
    return out


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
               w: float = 0.5, gamma: float = 0.5, **kwargs) -> ScoredReport:
    """`report` with meta['scores'] = {arch: evaluate_scores(...)}, reusing the report's own rows (same seed)."""
    check_weight(w, "w")
    check_weight(gamma, "gamma")
    scores = {arch: evaluate_scores(synset, arch, protocol, runs, w=w, gamma=gamma,
                                    reuse=[r for r in report.rows if r.arch == arch], **kwargs) for arch in archs}
    return ScoredReport(report.rows, {**report.meta, "scores": scores})
