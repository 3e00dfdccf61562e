"""SRe2L (Yin et al., NeurIPS 2023) and CDA (Yin & Shen, TMLR 2024): squeeze, recover, relabel.

Squeeze is training a BatchNorm teacher (`ddtk buffer --experts 1`, passed as `--teacher DIR`). Recover optimizes
images from noise (or real images) so the frozen teacher classifies their augmented views as their class while
each BN layer's batch statistics match its running statistics (loss in `recover.py`). One batch holds one image
per class for up to `batch_classes` classes at one IPC index (the public code's `targets = arange(K)` blocks);
batches are independent (own seeds, own Adam(betas 0.5, 0.9) with a cosine lr over `--iterations` steps), so they
shard over torchrun ranks and the images do not depend on the number of processes. CDA anneals the lower
RandomResizedCrop scale from 1.0 to 0.08 (cosine by default). Relabel/evaluation: the teacher protocol,
with labels on the fly or stored (`relabel_epochs`, or `ddtk relabel` afterwards).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch

from dd.methods.base import Scoring, Method, MethodConfig, load_optimizer_state, optimizer_state
from dd.methods.recover import (SCHEDULES, batchnorm_layers, committee_loss, cosine_lr, crop_scale_min, forward_with_bn_loss,
                                recover_view)
from dd.methods.registry import METHODS
from dd.synset import SyntheticSet
from dd.validate import rule


@dataclass
class SRe2LConfig(MethodConfig):
    """Recover options; the defaults are the ImageNet-1K recover settings of the SRe2L code (lr 0.25, r_bn 0.01)."""

    init: str = "noise"  # 'noise' (standard normal in the normalized space, the paper) or 'real'
    dsa: bool = False  # unused: recovery has its own views (crop, flip, jitter)
    lr: float = field(default=0.25, metadata=rule(gt=0))  # Adam lr (cosine to 0 over the iterations)
    beta1: float = 0.5
    beta2: float = 0.9
    r_bn: float = field(default=0.01, metadata=rule(ge=0))  # weight of the BN-statistics loss
    first_bn_weight: float = 10.0  # extra weight of the first BN layer (the public code's first_bn_multiplier)
    # random roll by 0..jitter pixels per axis (32 for ImageNet-1K at 224 px)
    jitter: int = field(default=4, metadata=rule(ge=0))
    batch_classes: int = field(default=100, metadata=rule(ge=1))  # classes per batch (one image each, at one IPC index)
    crop: bool = True  # random-resized crop + flip of the batch (False: whole image, the SRe2L CIFAR code)
    # lower crop scale (SRe2L: fixed; CDA: the end of its curriculum)
    crop_scale: float = field(default=0.08, metadata=rule(gt=0, le=1))
    # > 0: after recovery, store this many epochs of teacher labels in OUT/labels
    relabel_epochs: int = field(default=0, metadata=rule(ge=0))
    relabel_topk: int = field(default=10, metadata=rule(ge=1))


@dataclass
class CDAConfig(SRe2LConfig):
    """SRe2L's options plus CDA's curriculum: the lower crop scale goes 1.0 -> crop_scale over `milestone` of the run."""

    schedule: str = "cosine"  # 'cosine', 'linear' or 'step' (1.0 until the milestone)
    milestone: float = 1.0  # fraction of each batch's iterations over which the scale anneals


def batch_plan(num_classes: int, ipc: int, batch_classes: int) -> list[tuple[int, list[int]]]:
    """Every batch as (IPC index, its classes): IPC index outer, blocks of `batch_classes` classes inner."""
    if batch_classes < 1:
        raise ValueError(f"batch_classes must be >= 1, got {batch_classes}")
    blocks = [list(range(c, min(c + batch_classes, num_classes))) for c in range(0, num_classes, batch_classes)]
    return [(i, block) for i in range(ipc) for block in blocks]


@METHODS.register("sre2l", help="squeeze-recover-relabel from a BatchNorm teacher (Yin et al. 2023); needs --teacher")
class SRe2L(Method):
    """Recovers images from a teacher's BN statistics and classifier, batch by batch; scored under the teacher protocol."""

    name = "sre2l"
    Config = SRe2LConfig
    teachers = (1, 1)
    smoke = {"relabel_epochs": 1}  # only where the config stores labels (0 stays 0)
    bookkeeping = frozenset({"batch"})  # which batch of images the iteration recovers
    shardable = True
    partial_sets = True
    # declared, not overridden: init name -> the method filling the set's start; whether the distillation `model`
    # (the report's default architecture) is the teacher's; whether the lower crop scale follows the Config's
    # curriculum (schedule, milestone: CDA) or stays at crop_scale
    INITS: ClassVar[dict[str, str]] = {"noise": "noise_images", "real": "real_images"}
    model_from_teacher: ClassVar[bool] = True
    crop_curriculum: ClassVar[bool] = False
    per_member_metrics: ClassVar[bool] = False  # log each voter's CE and BN terms under its architecture (CV-DD)

    def __init__(self, config, dataset, ipc, device, generator, inputs=None, group=None):
        super().__init__(config, dataset, ipc, device, generator, inputs, group)
        c = config
        if c.zca:
            raise ValueError(f"{self.name} recovers images in pixel space (clamped to the valid range); set zca=false")
        if c.init not in self.INITS:
            raise ValueError(f"unknown init '{c.init}' for {self.name}; choose one of {tuple(self.INITS)}")
        if c.jitter < 0 or not 0 < c.crop_scale <= 1:
            raise ValueError("jitter must be >= 0 and crop_scale in (0, 1]")
        self.sources = self.inputs.teachers
        self.source = self.sources[0]
        self.teacher = self.source.module(dataset, device)
        self.members = [self.teacher]  # the committee recovering the images: SRe2L's is its teacher alone
        batchnorm_layers(self.teacher) or forward_with_bn_loss(self.teacher, torch.zeros(1))  # raises the clear error
        mean = torch.tensor(dataset.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(dataset.std, device=device).view(1, -1, 1, 1)
        self.lo, self.hi = (0 - mean) / std, (1 - mean) / std
        self.plan = batch_plan(dataset.num_classes, ipc, c.batch_classes)
        self.owned = [b for b in range(len(self.plan)) if b % self.group.world == self.group.rank]
        self.base_seed = self.seed_int()
        self.iterations: Optional[int] = None
        self.labels_dir: Optional[str] = None
        self.current: Optional[int] = None  # the batch being recovered

    # -- the set and its batches -------------------------------------------------------------------
    def positions(self, b: int) -> torch.Tensor:
        """Where batch b's images sit in the class-major set (class c, IPC index i -> c * ipc + i)."""
        i, classes = self.plan[b]
        return torch.tensor([c * self.ipc + i for c in classes])

    def batch_seed(self, b: int, stream: int) -> int:
        return (self.base_seed * 1_000_003 + 2 * b + stream) % (2**63)

    def init_synset(self) -> SyntheticSet:
        s = SyntheticSet.from_noise(self.dataset, self.ipc, torch.Generator().manual_seed(0), method=self.name)
        s.meta["init"] = self.config.init
        self._template = s
        self.labels = s.labels
        fill = getattr(self, self.INITS[self.config.init])
        self.images = fill(torch.empty_like(s.images)).clamp(self.lo.cpu(), self.hi.cpu())
        self.done = torch.zeros(len(self.plan), dtype=torch.bool)
        return s

    def real_images(self, images: torch.Tensor) -> torch.Tensor:
        """Fills the class-major set with distinct real images per class, from a per-class stream."""
        for c in range(self.dataset.num_classes):
            g = torch.Generator().manual_seed(self.batch_seed(c, 0) ^ 0x5EED)
            images[c * self.ipc:(c + 1) * self.ipc] = self.real.sample(c, self.ipc, g).cpu()
        return images

    def noise_images(self, images: torch.Tensor) -> torch.Tensor:
        """Fills the class-major set with standard normal noise, per batch from its own stream."""
        for b in range(len(self.plan)):
            g = torch.Generator().manual_seed(self.batch_seed(b, 0))
            images[self.positions(b)] = torch.randn(len(self.plan[b][1]), *images.shape[1:], generator=g)
        return images

    def num_steps(self, iterations: int) -> int:
        """`iterations` recover steps for every batch this rank owns."""
        if iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {iterations}")
        self.iterations = iterations
        return len(self.owned) * iterations

    def start_batch(self, b: int) -> None:
        self.current = b
        self.x = self.images[self.positions(b)].to(self.device).clone().requires_grad_(True)
        self.y = self.labels[self.positions(b)].to(self.device)
        self.opt = torch.optim.Adam([self.x], lr=self.config.lr, betas=(self.config.beta1, self.config.beta2), eps=1e-8)
        self.g_aug = torch.Generator().manual_seed(self.batch_seed(b, 1))
        self.voters, self.weights, self.scales = self.vote(b)

    def vote(self, b: int) -> tuple[list[int], list[float], list[float]]:
        """Batch b's voters (indices into self.members), their loss weights and BN scales: the one teacher, 1, 1."""
        return [0], [1.0], [1.0]

    def scale_min(self, k: int) -> Optional[float]:
        """The lower crop scale at iteration k of a batch (None: no crop): crop_scale, or the curriculum's value."""
        c = self.config
        if not c.crop:
            return None
        if self.crop_curriculum:
            return crop_scale_min(k, self.iterations, c.schedule, c.milestone, 1.0, c.crop_scale)
        return c.crop_scale

    # -- one iteration of one batch ------------------------------------------------------------------
    def step(self, it: int) -> dict[str, float]:
        if self.iterations is None:
            raise RuntimeError("call num_steps(iterations) before step()")
        j, k = divmod(it, self.iterations)
        b = self.owned[j]
        if self.current != b:
            self.start_batch(b)
        for grp in self.opt.param_groups:
            grp["lr"] = cosine_lr(self.config.lr, k, self.iterations)
        smin = self.scale_min(k)
        view = recover_view(self.x, self.g_aug, scale_min=smin, flip=self.dataset.flip_ok, jitter=self.config.jitter)
        loss, parts = self.recover_loss(view)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.x.copy_(torch.maximum(torch.minimum(self.x, self.hi), self.lo))
        if k == self.iterations - 1:
            self.images[self.positions(b)] = self.x.detach().cpu()
            self.done[b] = True
            self.current = None
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}, "batch": b,
                "crop_scale_min": smin if smin is not None else 1.0}

    def recover_loss(self, view: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """sum over the batch's voters of w (CE(f(view), y) + r_bn * BN-statistics loss of f on the view / s)."""
        loss, ces, bns = committee_loss([self.members[i] for i in self.voters], self.weights, self.scales, view, self.y,
                                        self.config.r_bn, self.config.first_bn_weight)
        if not self.per_member_metrics:
            return loss, {"ce": ces[0], "bn": bns[0]}
        parts = {f"ce/{self.sources[i].arch}": ce for i, ce in zip(self.voters, ces)}
        parts.update({f"bn/{self.sources[i].arch}": bn for i, bn in zip(self.voters, bns)})
        return loss, parts

    def current_set(self) -> SyntheticSet:
        """The set now (finished batches recovered, the rest as initialized); under torchrun every rank's batches."""
        images = self.images.clone()
        if self.current is not None:
            images[self.positions(self.current)] = self.x.detach().cpu()
        if self.group.world > 1:
            mine = torch.zeros_like(images)
            for b in self.owned:
                mine[self.positions(b)] = images[self.positions(b)]
            images = self.group.sum(mine)
        t = self._template
        return SyntheticSet(images, self.labels.clone(), t.num_classes, None, dict(t.meta), dict(t.extra))

    # -- after the loop ------------------------------------------------------------------------------
    def finalize(self, synset, out, protocol):
        if self.config.relabel_epochs > 0 and out is not None:
            from dd.eval.labels import relabel

            plan = self.evaluation()
            path = relabel(synset.images, plan.teacher, protocol, self.config.relabel_epochs, out / "labels",
                           seed=self.base_seed % (2**31), topk=self.config.relabel_topk, flip=self.dataset.flip_ok,
                           teachers=plan.teachers, device=self.device)
            self.labels_dir = str(path)
        return synset

    def evaluation(self) -> Scoring:
        return Scoring("teacher", self.teacher, [self.source.describe()], None, self.labels_dir)

    # -- checkpoints -----------------------------------------------------------------------------------
    def state(self):
        tensors = {"images": self.images, "done": self.done.to(torch.uint8)}
        info = {"iterations": self.iterations, "current": self.current}
        if self.current is not None:
            t, i = optimizer_state(self.opt, "opt")
            tensors.update(t)
            tensors["x"] = self.x.detach()
            tensors["g_aug"] = self.g_aug.get_state()
            info["opt"] = i
        return tensors, info

    def load_state(self, tensors, info) -> None:
        if info["iterations"] != self.iterations:
            raise ValueError(f"the checkpoint recovered each batch for {info['iterations']} iterations, this run asks "
                             f"for {self.iterations}; use the same --iterations or another --out")
        self.images = tensors["images"].clone()
        self.done = tensors["done"].bool()
        self.current = None
        if info["current"] is not None:
            self.start_batch(int(info["current"]))
            with torch.no_grad():
                self.x.copy_(tensors["x"].to(self.device))
            load_optimizer_state(self.opt, "opt", {k: v for k, v in tensors.items() if k.startswith("opt.")}, info["opt"])
            self.g_aug.set_state(tensors["g_aug"])


@METHODS.register("cda", help="curriculum data augmentation: SRe2L with a crop-scale curriculum (Yin & Shen 2024); needs --teacher")
class CDA(SRe2L):
    """SRe2L whose RandomResizedCrop lower scale anneals from 1.0 (whole image) to crop_scale: global to local."""

    name = "cda"
    Config = CDAConfig
    crop_curriculum = True

    def __init__(self, config, dataset, ipc, device, generator, inputs=None, group=None):
        if config.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{config.schedule}'; choose one of {SCHEDULES}")
        if not config.crop:
            raise ValueError("CDA's curriculum is a crop schedule: keep crop=true")
        super().__init__(config, dataset, ipc, device, generator, inputs, group)
