"""Herding (Welling 2009) as a dd method: per class, greedily pick the real images whose running mean of random-network
features stays closest to the class mean. One step adds one image per class, so `--iterations` should equal the IPC."""
from dataclasses import dataclass

import torch

from dd.methods import METHODS, Method, MethodConfig
from dd.models import build_model
from dd.synset import SyntheticSet


@dataclass
class HerdingConfig(MethodConfig):
    dsa: bool = False  # selection only: nothing is augmented


@METHODS.register("herding", help="greedy real-image selection matching class-mean features (Welling 2009)")
class Herding(Method):
    name = "herding"
    Config = HerdingConfig

    def init_synset(self) -> SyntheticSet:
        with self.seeded():
            net = build_model(self.config.model, self.dataset.channels, self.dataset.num_classes, self.dataset.image_size)
        net = net.to(self.device).eval()
        with torch.no_grad():
            self.feats = [torch.cat([net.features(b) for b in self.real.all_of(c).split(512)]) for c in range(self.dataset.num_classes)]
        self.picked = [[] for _ in self.feats]
        self._template = SyntheticSet.from_real(self.dataset, self.ipc, self.g, method=self.name)
        return self._template

    def step(self, it: int) -> dict[str, float]:
        gaps = []
        for c, f in enumerate(self.feats):
            if len(self.picked[c]) == self.ipc:
                continue
            chosen = f[self.picked[c]].sum(0)
            gap = (f.mean(0) - (chosen + f) / (len(self.picked[c]) + 1)).norm(dim=1)  # mean gap if each image joined
            gap[self.picked[c]] = float("inf")
            self.picked[c].append(int(gap.argmin()))
            gaps.append(float(gap.min()))
        return {"loss": sum(gaps) / max(len(gaps), 1)}

    def current_set(self) -> SyntheticSet:
        s = self._template.detach()
        for c, idx in enumerate(self.picked):
            pool = self.real.all_of(c)[idx].cpu()
            s.images[c * self.ipc:c * self.ipc + len(idx)] = pool
        return s

    def state(self):
        return {}, {"picked": self.picked}

    def load_state(self, tensors, info) -> None:
        self.picked = [list(p) for p in info["picked"]]
