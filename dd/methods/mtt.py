"""MTT, matching training trajectories (Cazenavette et al., CVPR 2022), with a constant-memory gradient option.

Per iteration: a student starts at an expert's epoch-t parameters, takes `syn_steps` SGD steps on the
synthetic set (per-sample DSA), and the normalized distance to the expert's epoch t+M parameters is
minimized over the images and the student lr. The gradient is exact either way: unrolled graph, or
per-step recomputation (memory constant in syn_steps), chosen by `memory`. AST options are flags.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.func import functional_call

from dd.augment.dsa import DSA, DSAParams
from dd.methods.base import DistillationDiverged, Method, MethodConfig, load_optimizer_state, optimizer_state
from dd.methods.registry import METHODS
from dd.methods.trajectory import (ConvNetForward, ParamLayout, ZeroTrajectoryDistance, constant_memory_grad, draw_plans,
                                   graph_bytes_per_step, unrolled_grad)
from dd.methods.trajectory_presets import mtt_defaults
from dd.models import build_model
from dd.synset import SyntheticSet
from dd.validate import rule

MEMORY_MODES = ("auto", "unrolled", "constant")
INTERMEDIATE = ("none", "uniform", "linear")


@dataclass
class MTTConfig(MethodConfig):
    """Options left as None take the MTT paper's value for the dataset and IPC (dd.methods.trajectory_presets)."""

    syn_steps: Optional[int] = field(default=None, metadata=rule(ge=1))  # N: student steps per iteration
    # M: the target is the expert M epochs after the start
    expert_epochs: Optional[int] = field(default=None, metadata=rule(ge=1))
    max_start_epoch: Optional[int] = field(default=None, metadata=rule(ge=0))  # T+: start epochs are drawn from 0..T+
    # synthetic minibatch of the student (None or 0: the whole set)
    batch_syn: Optional[int] = field(default=None, metadata=rule(ge=0))
    lr_img: Optional[float] = field(default=None, metadata=rule(gt=0))
    lr_lr: Optional[float] = field(default=None, metadata=rule(ge=0))
    # initial student lr; None: the buffer's expert lr (manifest), else the table's
    lr_teacher: Optional[float] = field(default=None, metadata=rule(gt=0))
    img_momentum: float = field(default=0.5, metadata=rule(ge=0, lt=1))
    lr_momentum: float = field(default=0.5, metadata=rule(ge=0, lt=1))
    memory: str = "auto"  # 'unrolled', 'constant' (TESLA-style recomputation), or 'auto' (constant when unrolled won't fit)
    memory_fraction: float = 0.5  # auto: use unrolled while its graph needs less than this fraction of free memory
    # AST (smooth experts) options
    # student SGD momentum (0.9 mirrors momentum experts)
    inner_momentum: float = field(default=0.0, metadata=rule(ge=0, lt=1))
    intermediate: str = "none"  # also match the intermediate expert epochs: 'uniform' (weights 1) or 'linear' (i/M)
    weight_perturb: bool = False  # start from W + (d/||d||_F) * W on conv weights, d ~ N(0, 1)
    balanced: bool = False  # the student's loss averages per-class mean losses


def perturb_conv_weights(flat: torch.Tensor, layout: ParamLayout, g: torch.Generator) -> torch.Tensor:
    """AST weight perturbation: each conv weight W becomes W + (d / ||d||_F) * W with d ~ N(0, 1)."""
    params = layout.unflatten(flat.clone())
    for name, shape in zip(layout.names, layout.shapes):
        if len(shape) == 4:
            d = torch.randn(shape, generator=g).to(flat)
            params[name].add_(d / d.norm() * params[name])
    return layout.flatten(params)


def kmeans_nearest(x: torch.Tensor, k: int, g: torch.Generator, iters: int = 25) -> torch.Tensor:
    """Indices of the k distinct rows of x nearest the centers of a k-means clustering (Lloyd, seeded init)."""
    if len(x) < k:
        raise ValueError(f"k-means init needs at least ipc={k} images per class, got {len(x)}")
    centers = x[torch.randperm(len(x), generator=g)[:k].to(x.device)].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centers[j] = members.mean(0)
    d = torch.cdist(centers, x)
    chosen: list[int] = []
    for j in range(k):
        order = d[j].argsort()
        chosen.append(int(next(i for i in order.tolist() if i not in chosen)))
    return torch.tensor(chosen, device=x.device)


def ema_update(avg: torch.Tensor, value: torch.Tensor, decay: float) -> None:
    """avg <- decay * avg + (1 - decay) * value, in place."""
    avg.mul_(decay).add_(value, alpha=1.0 - decay)


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


@METHODS.register("mtt", help="matching training trajectories of experts (Cazenavette et al. 2022); needs --buffer")
class MTT(Method):
    """Learns images and the student lr so N student steps land where the expert got in M epochs."""

    name = "mtt"
    Config = MTTConfig
    buffers = (1, 1)
    smoke = {"syn_steps": 2, "expert_epochs": 1}
    bookkeeping = frozenset({"start_epoch"})  # the segment's random start

    HP_KEYS = ("syn_steps", "expert_epochs", "max_start_epoch", "batch_syn", "lr_img", "lr_lr", "lr_teacher")

    @classmethod
    def preset(cls, dataset: str, ipc: int) -> dict:
        return mtt_defaults(dataset, ipc)

    @classmethod
    def resolve_config(cls, values, dataset, ipc, inputs):
        """As every method, plus MTT's rule: an unset lr_teacher starts at the lr the buffer's experts were trained with."""
        values = dict(values)
        expert_lr = (inputs.buffers[0].manifest.get("config", {}).get("lr") if inputs.buffers else None)
        if values.get("lr_teacher") is None and expert_lr:
            values["lr_teacher"] = float(expert_lr)
        return super().resolve_config(values, dataset, ipc, inputs)

    def __init__(self, config, dataset, ipc, device, generator, inputs=None, group=None):
        super().__init__(config, dataset, ipc, device, generator, inputs, group)
        c = config
        self.hp = {k: getattr(c, k) for k in self.HP_KEYS}
        # what a variant's Config declares, read here (no hook to override): `ema_decay` keeps an EMA of the images that
        # is validated and saved instead of them (FTD, DATM; 0: none), `soft_labels` learns the labels too (DATM)
        self.ema_decay = float(getattr(c, "ema_decay", 0.0))
        self.learn_labels = bool(getattr(c, "soft_labels", False))
        unset = [k for k in MTT.HP_KEYS if self.hp[k] is None and k != "batch_syn"]
        if unset:
            raise ValueError(f"{self.name}: options {unset} are unset; build the method through its resolved config "
                             "(dd.methods.build_method or distill) so the paper presets fill them")
        if c.memory not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode '{c.memory}'; choose one of {MEMORY_MODES}")
        if c.intermediate not in INTERMEDIATE:
            raise ValueError(f"unknown intermediate '{c.intermediate}'; choose one of {INTERMEDIATE}")
        if self.hp["expert_epochs"] < 1 or self.hp["syn_steps"] < 1:
            raise ValueError("expert_epochs and syn_steps must be >= 1 (a zero trajectory has no direction to match)")
        store = self.buffer
        last = store.num_epochs - 1
        if self.hp["expert_epochs"] > last:
            raise ValueError(f"expert_epochs={self.hp['expert_epochs']} but the buffer holds only {last} epochs per expert")
        self.max_start = min(int(self.hp["max_start_epoch"]), last - self.hp["expert_epochs"])
        name = getattr(store, "model_name", None) or c.model
        self.model = build_model(name, dataset.channels, dataset.num_classes, dataset.image_size,
                                 **(getattr(store, "model_options", None) or {})).to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layout = ParamLayout.of(self.model)
        self.forward = ConvNetForward.of(self.model)  # plain functional ops for ConvNets, the module otherwise
        names = tuple(getattr(store, "param_names", self.layout.names))
        if names != self.layout.names:
            raise ValueError(f"the buffer's parameters {names[:3]}... do not match model '{name}' "
                             f"({self.layout.names[:3]}...); distil with the buffer's model")
        self.dsa = DSA(DSAParams(strategy=c.dsa_strategy), allow_flip=dataset.flip_ok) if c.dsa else None
        self.mode: Optional[str] = None if c.memory == "auto" else c.memory

    # -- setup -----------------------------------------------------------------------------------
    def init_synset(self) -> SyntheticSet:
        s = self.representative_set() if self.config.init == "kmeans" else self.initial_set()
        self._template = s
        self.init_learnables(s.images, s.labels)
        return s

    def init_learnables(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """The learned images and student lr with their optimizers, the labels, and the image EMA when it is on."""
        self.images = images.to(self.device).detach().clone().requires_grad_(True)
        self.labels = labels.to(self.device)
        self.syn_lr = torch.tensor(float(self.hp["lr_teacher"]), device=self.device).requires_grad_(True)
        self.opt_img = torch.optim.SGD([self.images], lr=self.hp["lr_img"], momentum=self.config.img_momentum)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=self.hp["lr_lr"], momentum=self.config.lr_momentum)
        self.ema = self.images.detach().clone() if self.ema_decay else None

    def expert_logits(self, expert: int, images: torch.Tensor) -> torch.Tensor:
        """The final-epoch network of `expert` applied to `images` (batches of 512, no graph)."""
        params = self.layout.unflatten(self.buffer.flat(expert, self.buffer.num_epochs - 1, device=self.device))
        with torch.no_grad():
            return torch.cat([functional_call(self.model, params, (b,)) for b in images.split(512)])

    def representative_set(self) -> SyntheticSet:
        """AST's representative init: per class, k-means (k = ipc) on the final expert's logits of the real
        images, then the real image nearest each center (distinct images; IPC 1 takes the one nearest the mean)."""
        picks = []
        for c in range(self.dataset.num_classes):
            pool = self.real.all_of(c)
            picks.append(pool[kmeans_nearest(self.expert_logits(0, pool), self.ipc, self.g)])
        s = SyntheticSet.from_real(self.dataset, self.ipc, torch.Generator().manual_seed(0), method=self.name)
        s.images = torch.cat(picks).cpu()
        s.meta["init"] = "kmeans"
        return s

    # -- one iteration ---------------------------------------------------------------------------
    def draw_segment(self, it: int) -> tuple[int, int]:
        """(expert, start epoch): MTT draws both uniformly, the start from 0..max_start_epoch."""
        e = int(torch.randint(self.buffer.num_experts, (1,), generator=self.g))
        t = int(torch.randint(self.max_start + 1, (1,), generator=self.g))
        return e, t

    def intermediate_terms(self, e: int, t: int, steps: int, m: int):
        if self.config.intermediate == "none" or m < 2:
            return None
        out = []
        for i in range(1, m):
            w = 1.0 if self.config.intermediate == "uniform" else i / m
            out.append((round(i * steps / m), self.buffer.flat(e, t + i, device=self.device), w))
        return out

    def choose_mode(self, start, plans) -> str:
        if self.mode is None:
            per_step = graph_bytes_per_step(self.forward, self.layout, start, self.images, self.labels, self.syn_lr,
                                            plans[0], self.config.inner_momentum)
            need = per_step * self.hp["syn_steps"]
            self.mode = "unrolled" if need < self.config.memory_fraction * available_memory(self.device) else "constant"
        return self.mode

    def match(self, it: int):
        e, t = self.draw_segment(it)
        m = self.hp["expert_epochs"]
        start = self.buffer.flat(e, t, device=self.device)
        target = self.buffer.flat(e, t + m, device=self.device)
        if self.config.weight_perturb:
            start = perturb_conv_weights(start, self.layout, self.g)
        plans = draw_plans(len(self.images), self.hp["syn_steps"], self.hp["batch_syn"], self.dsa,
                           tuple(self.dataset.image_size), self.g, self.device)
        mids = self.intermediate_terms(e, t, self.hp["syn_steps"], m)
        fn = unrolled_grad if self.choose_mode(start, plans) == "unrolled" else constant_memory_grad
        try:
            res = fn(self.forward, self.layout, start, target, self.images, self.labels, self.syn_lr, plans,
                     momentum=self.config.inner_momentum, learn_labels=self.learn_labels, balanced=self.config.balanced,
                     intermediate=mids)
        except ZeroTrajectoryDistance as err:
            raise DistillationDiverged(f"{self.name}: expert {e} epochs {t} and {t + m}: {err}") from None
        if not math.isfinite(res.loss):
            raise DistillationDiverged(f"{self.name}: matching loss became {res.loss} (expert {e}, start epoch {t}); "
                                       "lower lr_img or lr_lr")
        return res, e, t

    def apply_update(self, res) -> None:
        self.opt_img.zero_grad(set_to_none=True)
        self.opt_lr.zero_grad(set_to_none=True)
        self.images.grad = res.images_grad
        self.syn_lr.grad = res.lr_grad.reshape(self.syn_lr.shape)
        self.opt_img.step()
        self.opt_lr.step()
        lr = float(self.syn_lr.detach())
        if not math.isfinite(lr) or lr <= 0:
            raise DistillationDiverged(f"{self.name}: the learned student lr became {lr}; lower lr_lr (now "
                                       f"{self.hp['lr_lr']}) or lr_img")
        if self.ema is not None:
            with torch.no_grad():
                ema_update(self.ema, self.images.detach(), self.ema_decay)

    def step(self, it: int) -> dict[str, float]:
        res, e, t = self.match(it)
        self.apply_update(res)
        return {"loss": res.loss, "lr": float(self.syn_lr.detach()), "start_epoch": t}

    # -- results and checkpoints -----------------------------------------------------------------
    def current_images(self) -> torch.Tensor:
        return self.ema if self.ema is not None else self.images.detach()

    def current_set(self) -> SyntheticSet:
        t = self._template
        meta = dict(t.meta)
        meta["hyperparameters"] = dict(self.hp)
        meta["gradient_mode"] = self.mode
        return SyntheticSet(self.current_images().cpu().clone(), self.labels.detach().cpu().clone(), t.num_classes,
                            float(self.syn_lr.detach()), meta, dict(t.extra))

    def state(self):
        ti, ii = optimizer_state(self.opt_img, "opt_img")
        tl, il = optimizer_state(self.opt_lr, "opt_lr")
        tensors = {**ti, **tl, "images": self.images.detach(), "syn_lr": self.syn_lr.detach().reshape(1),
                   "labels": self.labels.detach()}
        if self.ema is not None:
            tensors["ema"] = self.ema
        return tensors, {"opt_img": ii, "opt_lr": il, "mode": self.mode}

    def load_state(self, tensors, info) -> None:
        with torch.no_grad():
            self.images.copy_(tensors["images"].to(self.device))
            self.syn_lr.copy_(tensors["syn_lr"].reshape(()).to(self.device))
            self.labels.copy_(tensors["labels"].to(self.device))
        load_optimizer_state(self.opt_img, "opt_img", {k: v for k, v in tensors.items() if k.startswith("opt_img.")},
                             info["opt_img"])
        load_optimizer_state(self.opt_lr, "opt_lr", {k: v for k, v in tensors.items() if k.startswith("opt_lr.")},
                             info["opt_lr"])
        self.mode = info.get("mode") or self.mode
        if self.ema is not None:
            self.ema.copy_(tensors["ema"].to(self.device))
