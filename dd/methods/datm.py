"""DATM, difficulty-aligned trajectory matching (Guo et al., ICLR 2024): MTT with a growing start-epoch window,
correctly-classified real initialization, and learned soft labels.

Start epochs t ~ U[min_start_epoch, U) with U = min(cur + floor((max - cur) * it / expansion_end), max)
(sequential generation; fixed bounds when current_max_start_epoch is None). Soft labels start from the
expert logits averaged over the experts that classify each image correctly, are learned with SGD
(momentum 0.9, lr_y) through the student's soft cross-entropy, and an update whose matching loss exceeds
`threshold` is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from dd.methods.base import load_optimizer_state, optimizer_state
from dd.methods.mtt import MTT, MTTConfig
from dd.methods.registry import METHODS
from dd.methods.trajectory_presets import datm_defaults
from dd.synset import SyntheticSet
from dd.validate import rule


@dataclass
class DATMConfig(MTTConfig):
    """MTT's options plus DATM's; None takes DATM's per-IPC config (dd.methods.trajectory_presets)."""

    min_start_epoch: Optional[int] = None
    current_max_start_epoch: Optional[int] = None  # initial upper bound of sequential generation (None: fixed bounds)
    expansion_end: Optional[int] = None  # iteration at which the upper bound reaches max_start_epoch
    lr_y: Optional[float] = field(default=None, metadata=rule(gt=0))
    momentum_y: float = 0.9
    threshold: Optional[float] = None  # skip an update whose matching loss exceeds this
    soft_labels: bool = True
    ema_decay: float = 0.0  # DATM also keeps an image EMA (0: off)


def start_epoch_bound(it: int, cur: Optional[int], max_start: int, expansion_end: int) -> int:
    """U = min(cur + floor((max - cur) * it / expansion_end), max); the max itself when bounds are fixed."""
    if cur is None or not expansion_end:
        return max_start
    return min(cur + ((max_start - cur) * it) // expansion_end, max_start)


@METHODS.register("datm", help="difficulty-aligned trajectory matching with learned soft labels (Guo et al. 2024); needs --buffer")
class DATM(MTT):
    name = "datm"
    Config = DATMConfig
    bookkeeping = MTT.bookkeeping | {"skipped"}
    skip_flag = "skipped"  # an update over `threshold` is skipped, whatever its (possibly non-finite) loss
    HP_KEYS = MTT.HP_KEYS + ("min_start_epoch", "current_max_start_epoch", "expansion_end", "lr_y", "threshold")

    @classmethod
    def preset(cls, dataset: str, ipc: int) -> dict:
        return datm_defaults(dataset, ipc)

    def __init__(self, config, dataset, ipc, device, generator, inputs=None, group=None):
        super().__init__(config, dataset, ipc, device, generator, inputs, group)
        lo = int(self.hp["min_start_epoch"] or 0)
        if lo > self.max_start:
            raise ValueError(f"min_start_epoch={lo} exceeds the largest usable start epoch {self.max_start}")

    # -- initialization: correctly classified reals, expert-logit soft labels ---------------------
    def init_synset(self) -> SyntheticSet:
        template = self.initial_set()  # meta/extra, and the noise option
        k = self.dataset.num_classes
        if self.config.init == "real":
            imgs = []
            for c in range(k):
                pool = self.real.all_of(c)
                ok = pool[self.expert_logits(0, pool).argmax(1) == c]
                if len(ok) < self.ipc:
                    raise ValueError(f"class {c}: only {len(ok)} real images are classified correctly by expert 0, "
                                     f"fewer than ipc={self.ipc}")
                imgs.append(ok[torch.randperm(len(ok), generator=self.g)[: self.ipc].to(ok.device)])
            images = torch.cat(imgs)
        else:
            images = template.images.to(self.device)
        hard = torch.arange(k, device=self.device).repeat_interleave(self.ipc)
        self._template = SyntheticSet(images.cpu(), hard.cpu(), k, None, dict(template.meta), dict(template.extra))
        self._template.meta["init"] = "real-correct" if self.config.init == "real" else self.config.init
        if self.config.soft_labels:
            total = torch.zeros(len(images), k, device=self.device)
            count = torch.zeros(len(images), 1, device=self.device)
            for e in range(self.buffer.num_experts):
                logits = self.expert_logits(e, images)
                right = (logits.argmax(1) == hard).float().unsqueeze(1)
                total += logits * right
                count += right
            fallback = F.one_hot(hard, k).float() * 10.0  # images no expert gets right (noise init)
            labels = torch.where(count > 0, total / count.clamp_min(1), fallback).detach().clone().requires_grad_(True)
        else:
            labels = hard
        self.init_learnables(images, labels)
        self.opt_y = (torch.optim.SGD([self.labels], lr=self.hp["lr_y"], momentum=self.config.momentum_y)
                      if self.config.soft_labels else None)
        return self._template

    # -- one iteration ---------------------------------------------------------------------------
    def draw_segment(self, it: int) -> tuple[int, int]:
        lo = int(self.hp["min_start_epoch"] or 0)
        hi = start_epoch_bound(it, self.hp["current_max_start_epoch"], int(self.hp["max_start_epoch"]),
                               int(self.hp["expansion_end"] or 0))
        hi = max(min(hi, self.max_start + 1), lo + 1)  # [lo, hi) within the buffer
        e = int(torch.randint(self.buffer.num_experts, (1,), generator=self.g))
        t = int(torch.randint(lo, hi, (1,), generator=self.g))
        return e, t

    def step(self, it: int) -> dict[str, float]:
        res, e, t = self.match(it)
        threshold = self.hp["threshold"]
        if threshold is not None and res.loss > threshold:
            return {"loss": res.loss, "skipped": 1.0, "lr": float(self.syn_lr.detach()), "start_epoch": t}
        self.apply_update(res)
        if self.opt_y is not None:
            self.opt_y.zero_grad(set_to_none=True)
            self.labels.grad = res.labels_grad
            self.opt_y.step()
        return {"loss": res.loss, "skipped": 0.0, "lr": float(self.syn_lr.detach()), "start_epoch": t}

    def current_set(self) -> SyntheticSet:
        s = super().current_set()
        if self.config.soft_labels:  # the set stores distributions; the learned logits ride along
            logits = self.labels.detach().cpu().clone()
            s = SyntheticSet(s.images, F.softmax(logits, 1), s.num_classes, s.lr, s.meta,
                             {**s.extra, "label_logits": logits})
        return s

    def state(self):
        tensors, info = super().state()
        if self.opt_y is not None:
            ty, iy = optimizer_state(self.opt_y, "opt_y")
            tensors.update(ty)
            info["opt_y"] = iy
        return tensors, info

    def load_state(self, tensors, info) -> None:
        super().load_state(tensors, info)
        if self.opt_y is not None:
            load_optimizer_state(self.opt_y, "opt_y", {k: v for k, v in tensors.items() if k.startswith("opt_y.")},
                                 info["opt_y"])
