"""CV-DD, dataset distillation via committee voting: CDA's recovery and relabel with several teachers that vote.

Per batch (one IPC index, a block of classes) N voters are drawn from the committee (cycling, random, or the
top-N by prior); their weights are softmax(p / tau_synthesis) over the voters, p being each member's prior in
percent (`dd.methods.priors`: measured by dd, cached beside the teacher, never typed in). The recover loss is
  sum_i w_i * (CE(f_i(view), y) + r_bn * BN_i(view) / s_i),
where s_i = BN_i(x0) / mean_j BN_j(x0) over the batch's voters, x0 its initial images (bn_normalize='init'): each
member's BN term is measured relative to its own starting value, so a member with many or wide BN layers does not
dominate, while the voters' mean keeps the term at the paper's overall scale (r_bn keeps its meaning; dividing
by BN_i(x0) alone would shrink a noise start's BN term by orders of magnitude); bn_normalize='none' is the
paper's plain sum (s_i = 1). Soft labels are the
committee's logits weighted by softmax(p / tau_labels) over all members, with BatchNorm in train mode (each
batch's own statistics), on every view of the teacher protocol; stored (`relabel_epochs`, `ddtk relabel`) or on the fly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from dd.methods.base import Scoring
from dd.methods.recover import committee_loss, forward_with_bn_loss  # noqa: F401  (committee_loss: its public home was here)
from dd.methods.registry import METHODS
from dd.methods.sre2l import CDA, CDAConfig
from dd.teachers import Committee
from dd.validate import rule

SELECTIONS = ("cycle", "random", "top")
BN_NORMALIZE = ("init", "none")


@dataclass
class CVDDConfig(CDAConfig):
    """CDA's options plus the committee's; the paper's strong-baseline choices are the defaults."""

    init: str = "medium"  # 'medium': real images of median committee loss per class (the paper's medium patches); 'noise', 'real'
    voters: int = field(default=2, metadata=rule(ge=1))  # N members vote on each batch
    selection: str = "cycle"  # 'cycle' (IPC index i takes members i*N .. i*N+N-1, mod M), 'random', 'top' (by prior)
    # softmax temperature of the voters' weights (priors in percent)
    tau_synthesis: float = field(default=5.0, metadata=rule(gt=0))
    tau_labels: float = field(default=10.0, metadata=rule(gt=0))  # softmax temperature of the label weights
    bn_normalize: str = "init"  # 'init': each member's BN loss relative to its value on the batch's start; 'none'
    prior: str = "distilled"  # 'distilled' (CDA from the member alone, scored on a validation split) or 'teacher'
    # the lone member's CDA set used to score it (IPC 1 with ~100 training steps scored chance)
    prior_ipc: int = field(default=10, metadata=rule(ge=1))
    # the lone member's recover steps (the paper's priors ran the full budget: say so with --set)
    prior_iterations: int = field(default=300, metadata=rule(ge=1))
    # epochs of the post-training protocol (below) when scoring a member's own distilled set
    prior_epochs: int = field(default=300, metadata=rule(ge=1))
    # the teacher protocol's batch for the set (the paper's smaller post-training batch)
    post_batch_size: int = field(default=16, metadata=rule(ge=1))
    # the paper's gentler cosine (the schedule spans eta x epochs)
    post_cosine_eta: float = field(default=2.0, metadata=rule(ge=1))
    label_bn: str = "train"  # the committee's BatchNorm while labeling: 'train' (batch statistics, the paper) or 'eval'


def softmax_weights(priors: list[float], tau: float) -> list[float]:
    """softmax(p / tau) as plain floats (priors in percent, as the paper's code uses them)."""
    return torch.softmax(torch.tensor(priors, dtype=torch.float64) / tau, 0).tolist()


def select_voters(index: int, priors: list[float], n: int, mode: str, g: Optional[torch.Generator] = None) -> list[int]:
    """Which members vote on the batches of IPC index `index`."""
    m = len(priors)
    n = min(n, m)
    if mode == "cycle":
        return [(index * n + j) % m for j in range(n)]
    if mode == "top":
        return sorted(range(m), key=lambda i: (-priors[i], i))[:n]
    if mode == "random":
        return sorted(torch.randperm(m, generator=g)[:n].tolist())
    raise ValueError(f"unknown selection '{mode}'; choose one of {SELECTIONS}")


def bn_scales(start: list[float]) -> list[float]:
    """s_i = BN_i(x0) / mean_j BN_j(x0): equal footing for every voter, the voters' mean scale kept."""
    mean = sum(start) / len(start)
    return [v / mean for v in start]


@METHODS.register("cvdd", help="committee voting: several BN teachers vote on synthesis and soft labels; needs --teacher x2+")
class CVDD(CDA):
    """CDA with a committee of teachers weighted by measured priors, and committee-voted soft labels."""

    name = "cvdd"
    Config = CVDDConfig
    teachers = (2, None)
    smoke = {**CDA.smoke, "prior_iterations": 2, "prior_epochs": 1, "prior_ipc": 1}
    INITS = {**CDA.INITS, "medium": "medium_images"}
    model_from_teacher = False  # the report architecture `model` is not taken from any one member
    per_member_metrics = True

    def __init__(self, config, dataset, ipc, device, generator, inputs=None, group=None):
        c = config
        for name, value, allowed in (("selection", c.selection, SELECTIONS), ("bn_normalize", c.bn_normalize, BN_NORMALIZE),
                                     ("label_bn", c.label_bn, ("train", "eval"))):
            if value not in allowed:
                raise ValueError(f"unknown {name} '{value}'; choose one of {allowed}")
        if c.voters < 1:
            raise ValueError(f"voters must be >= 1, got {c.voters}")
        super().__init__(c, dataset, ipc, device, generator, inputs, group)
        from dd.methods.priors import member_priors

        self.members = [src.module(dataset, device) for src in self.sources]
        self.teacher = self.members[0]
        self.priors = member_priors(self.sources, dataset, config, device, self.post_protocol())
        self.label_weights = softmax_weights([p["value"] for p in self.priors], config.tau_labels)

    # -- the set's start: medium-difficulty real images -------------------------------------------------
    def medium_images(self, images: torch.Tensor) -> torch.Tensor:
        """Per class, the ipc real images whose label-weighted committee CE is closest to the class median."""
        committee = Committee(self.members, self.label_weights).eval()
        for c in range(self.dataset.num_classes):
            pool = self.real.all_of(c)
            with torch.no_grad():
                losses = torch.cat([F.cross_entropy(committee(b), torch.full((len(b),), c, device=b.device), reduction="none")
                                    for b in pool.split(512)])
            order = (losses - losses.median()).abs().argsort()[: self.ipc]
            images[c * self.ipc:(c + 1) * self.ipc] = pool[order.sort().values].cpu()
        return images

    # -- one batch: its voters, their weights and BN scales ----------------------------------------------
    def vote(self, b: int) -> tuple[list[int], list[float], list[float]]:
        values = [p["value"] for p in self.priors]
        g = torch.Generator().manual_seed(self.batch_seed(b, 2))
        voters = select_voters(self.plan[b][0], values, self.config.voters, self.config.selection, g)
        weights = softmax_weights([values[i] for i in voters], self.config.tau_synthesis)
        scales = [1.0] * len(voters)
        if self.config.bn_normalize == "init":
            with torch.no_grad():
                start = [max(float(forward_with_bn_loss(self.members[i], self.x, self.config.first_bn_weight)[1]), 1e-12)
                         for i in voters]
            scales = bn_scales(start)
        return voters, weights, scales

    # -- the committee's labels ---------------------------------------------------------------------------
    def post_protocol(self):
        """The teacher protocol with the paper's post-training choices: how the set (and each member's prior) is scored."""
        from dd.eval import get_protocol

        return get_protocol("teacher", batch_size=self.config.post_batch_size, cosine_eta=self.config.post_cosine_eta,
                            teacher_bn=self.config.label_bn)

    def evaluation(self) -> Scoring:
        committee = Committee(self.members, self.label_weights)
        return Scoring(self.post_protocol(), committee, [s.describe() for s in self.sources], self.label_weights, self.labels_dir)

    def finalize(self, synset, out, protocol):
        synset = super().finalize(synset, out, protocol)
        synset.meta["committee"] = [{**src.describe(), "prior": p, "label_weight": w}
                                    for src, p, w in zip(self.sources, self.priors, self.label_weights)]
        return synset
