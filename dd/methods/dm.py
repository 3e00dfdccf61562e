"""DM, distribution matching (Zhao & Bilen, WACV 2023): match per-class mean embeddings of random networks.

Loss per class: || mean_i f(real_i) - mean_j f(syn_j) ||^2 with f a freshly initialized, frozen network
and the same siamese DSA draw on both batches of a class. DataDAM (`datadam.py`) reuses this loop and
adds spatial-attention terms; the FYI flip option (`fyi.py`) is available to both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from dd.augment.dsa import DSA, DSAParams
from dd.methods.base import Method, MethodConfig, load_optimizer_state, optimizer_state
from dd.methods.fyi import mirror_augmented, warn_if_unflippable
from dd.methods.registry import METHODS
from dd.models import build_model
from dd.synset import SyntheticSet
from dd.validate import rule

__all__ = ["DM", "DMConfig", "embedding_mmd", "mirror_augmented"]


@dataclass
class DMConfig(MethodConfig):
    """DM paper defaults: SGD on images, lr 1, momentum 0.5, 256 real images per class per iteration."""

    lr_img: float = field(default=1.0, metadata=rule(gt=0))
    momentum: float = field(default=0.5, metadata=rule(ge=0, lt=1))
    batch_real: int = field(default=256, metadata=rule(ge=1))
    flip: bool = False  # FYI (Flip Your Images): match the synthetic batch together with its mirror
    norm: Optional[str] = None  # normalization of the random networks (None: the architecture's own; 'batch', ...)


def embedding_mmd(real_feat: torch.Tensor, syn_feat: torch.Tensor) -> torch.Tensor:
    """Squared distance of mean embeddings (linear-kernel MMD)."""
    return ((real_feat.mean(0) - syn_feat.mean(0)) ** 2).sum()


@METHODS.register("dm", help="distribution matching: mean embeddings of random networks (Zhao & Bilen 2023)")
class DM(Method):
    """Matches per-class mean embeddings of real and synthetic images under random frozen networks."""

    name = "dm"
    Config = DMConfig
    smoke = {"batch_real": 16}

    def lr_img(self) -> float:
        return self.config.lr_img

    def init_synset(self) -> SyntheticSet:
        if self.config.batch_real < 1:
            raise ValueError(f"batch_real must be >= 1, got {self.config.batch_real}")
        warn_if_unflippable(self.config.flip, self.dataset.flip_ok, self.dataset.name)
        s = self.initial_set()
        self._template = s
        self.images = s.images.to(self.device).requires_grad_(True)
        self.labels = s.labels.to(self.device)
        self.opt = torch.optim.SGD([self.images], lr=self.lr_img(), momentum=self.config.momentum)
        self.dsa = (DSA(DSAParams(strategy=self.config.dsa_strategy), allow_flip=self.dataset.flip_ok)
                    if self.config.dsa else None)
        self.class_index = [torch.nonzero(self.labels == c).flatten() for c in range(self.dataset.num_classes)]
        return s

    def build_network(self) -> torch.nn.Module:
        """The distillation architecture (config.model, with config.norm when set), from the current torch RNG."""
        opts = {} if self.config.norm is None else {"norm": self.config.norm}
        try:
            return build_model(self.config.model, self.dataset.channels, self.dataset.num_classes,
                               self.dataset.image_size, **opts)
        except TypeError as e:
            raise ValueError(f"model '{self.config.model}' does not take norm={self.config.norm!r} ({e}); "
                             "leave the option 'norm' unset for this architecture") from e

    def random_network(self) -> torch.nn.Module:
        """A fresh network (seeded from the method's generator), frozen, in train mode (batch statistics)."""
        with self.seeded():
            net = self.build_network()
        net = net.to(self.device).train()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def class_batches(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per class: a real batch and the synthetic images (with their mirrors under FYI), one siamese DSA draw each."""
        reals, syns = [], []
        for c, idx in enumerate(self.class_index):
            real = self.real.sample(c, self.config.batch_real, self.g)
            syn = self.images[idx]
            if self.config.flip:
                syn = mirror_augmented(syn)
            if self.dsa is not None:
                real, syn = self.dsa.siamese(real, syn, generator=self.g)
            reals.append(real)
            syns.append(syn)
        return reals, syns

    def matching_loss(self, net: torch.nn.Module, reals: list[torch.Tensor], syns: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum over classes of the embedding MMD; one forward pass per side (batch norm sees every class, as in DM's code)."""
        with torch.no_grad():
            real_feat = net.features(torch.cat(reals)).split([len(r) for r in reals])
        syn_feat = net.features(torch.cat(syns)).split([len(s) for s in syns])
        loss = sum(embedding_mmd(r, s) for r, s in zip(real_feat, syn_feat))
        return {"loss": loss}

    def step(self, it: int) -> dict[str, float]:
        net = self.random_network()
        reals, syns = self.class_batches()
        terms = self.matching_loss(net, reals, syns)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.opt.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def current_set(self) -> SyntheticSet:
        t = self._template
        return SyntheticSet(self.images.detach().cpu().clone(), self.labels.cpu().clone(), t.num_classes, None,
                            dict(t.meta), dict(t.extra))

    def state(self):
        tensors, info = optimizer_state(self.opt, "opt")
        tensors["images"] = self.images.detach()
        return tensors, {"opt": info}

    def load_state(self, tensors, info) -> None:
        with torch.no_grad():
            self.images.copy_(tensors["images"].to(self.device))
        load_optimizer_state(self.opt, "opt", {k: v for k, v in tensors.items() if k.startswith("opt.")}, info["opt"])
