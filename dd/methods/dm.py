"""DM, distribution matching (Zhao & Bilen, WACV 2023): match per-class mean embeddings of random networks.

Loss per class: || mean_i f(real_i) - mean_j f(syn_j) ||^2 with f a freshly initialized, frozen network
and the same siamese DSA draw on both batches. DataDAM (`datadam.py`) extends the per-class loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dd.augment.dsa import DSA, DSAParams
from dd.methods.base import Method, MethodConfig, load_optimizer_state, optimizer_state
from dd.methods.registry import METHODS
from dd.models import build_model
from dd.synset import SyntheticSet


@dataclass
class DMConfig(MethodConfig):
    """DM paper defaults: SGD on images, lr 1, momentum 0.5, 256 real images per class per iteration."""

    lr_img: float = 1.0
    momentum: float = 0.5
    batch_real: int = 256
    flip: bool = False  # FYI (Flip Your Images): match the synthetic batch together with its mirror


def embedding_mmd(real_feat: torch.Tensor, syn_feat: torch.Tensor) -> torch.Tensor:
    """Squared distance of mean embeddings (linear-kernel MMD)."""
    return ((real_feat.mean(0) - syn_feat.mean(0)) ** 2).sum()


def mirror_augmented(syn: torch.Tensor) -> torch.Tensor:
    """FYI: the synthetic batch together with its horizontal mirror."""
    return torch.cat([syn, syn.flip(3)])


@METHODS.register("dm", help="distribution matching: mean embeddings of random networks (Zhao & Bilen 2023)")
class DM(Method):
    """Matches per-class mean embeddings of real and synthetic images under random frozen networks."""

    name = "dm"
    Config = DMConfig

    def init_synset(self) -> SyntheticSet:
        s = self.initial_set()
        self._template = s
        self.images = s.images.to(self.device).requires_grad_(True)
        self.labels = s.labels.to(self.device)
        self.opt = torch.optim.SGD([self.images], lr=self.config.lr_img, momentum=self.config.momentum)
        self.dsa = (DSA(DSAParams(strategy=self.config.dsa_strategy), allow_flip=self.dataset.flip_ok)
                    if self.config.dsa else None)
        self.class_index = [torch.nonzero(self.labels == c).flatten() for c in range(self.dataset.num_classes)]
        return s

    def random_network(self) -> torch.nn.Module:
        with self.seeded():
            net = build_model(self.config.model, self.dataset.channels, self.dataset.num_classes, self.dataset.image_size)
        net = net.to(self.device).train()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def class_loss(self, net: torch.nn.Module, real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
        return embedding_mmd(net.features(real), net.features(syn))

    def step(self, it: int) -> dict[str, float]:
        net = self.random_network()
        loss = torch.zeros((), device=self.device)
        for c, idx in enumerate(self.class_index):
            real = self.real.sample(c, self.config.batch_real, self.g)
            syn = self.images[idx]
            if self.config.flip:
                syn = mirror_augmented(syn)
            if self.dsa is not None:
                real, syn = self.dsa.siamese(real, syn, generator=self.g)
            loss = loss + self.class_loss(net, real, syn)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}

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
