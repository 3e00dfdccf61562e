"""DataDAM (Sajedi et al., ICCV 2023): match spatial attention maps and mean embeddings of random networks.

Per iteration a fresh frozen network; per class, L = sum over all blocks but the last of
|| mean_i a_l(real_i) - mean_j a_l(syn_j) ||^2, with a_l(x) = normalize_L2(sum_c |f_l(x)_c|^p), plus
lambda * (embedding MMD of the final features). No expert trajectories, no unrolled inner loop.

Differences of the public code from the paper, both options here: p = 1 (paper: 4) and a batch-norm
ConvNet (paper: instance norm); it also multiplies the total by 100 (`loss_scale`), which with SGD is a
factor on lr_img, so the paper's lr_img = 1 refers to the scaled loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from dd.methods.dm import DM, DMConfig, embedding_mmd
from dd.methods.registry import METHODS
from dd.synset import SyntheticSet
from dd.validate import rule

__all__ = ["DataDAM", "DataDAMConfig", "attention_loss", "datadam_loss", "embedding_mmd", "spatial_attention"]


@dataclass
class DataDAMConfig(DMConfig):
    """The paper's defaults: real init, SGD momentum 0.5, 64 real images per class, p = 4, instance norm."""

    lr_img: Optional[float] = field(default=None, metadata=rule(gt=0))  # None: 1 up to IPC 50, 10 above (the paper)
    batch_real: int = 64
    power: float = 4.0  # p of the attention map sum_c |f_c|^p (public code: 1)
    task_balance: Optional[float] = None  # lambda on the MMD term; None: 0.01 up to 64 px, 0.02 above (the paper)
    loss_scale: float = 100.0  # the public code's factor on the whole loss (what lr_img = 1 was tuned with)
    norm: Optional[str] = None  # random networks' normalization; None: the architecture's (ConvNet: instance, the paper); 'batch': public code


def spatial_attention(feature_map: torch.Tensor, p: float) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): sum over channels of |activation|^p, flattened and L2-normalized per sample."""
    if feature_map.ndim != 4:
        raise ValueError(f"spatial_attention expects (N, C, H, W) feature maps, got shape {tuple(feature_map.shape)}")
    a = feature_map.abs().pow(p).sum(1).flatten(1)
    return F.normalize(a, p=2.0, dim=1)


def attention_loss(real_maps: Sequence[torch.Tensor], syn_maps: Sequence[torch.Tensor], p: float) -> torch.Tensor:
    """Sum over layers of the squared L2 distance between the mean attention of the real and synthetic batches."""
    if len(real_maps) != len(syn_maps):
        raise ValueError(f"{len(real_maps)} real feature maps but {len(syn_maps)} synthetic ones")
    total = torch.zeros((), device=syn_maps[0].device if syn_maps else None)
    for r, s in zip(real_maps, syn_maps):
        total = total + ((spatial_attention(r, p).mean(0) - spatial_attention(s, p).mean(0)) ** 2).sum()
    return total


def datadam_loss(real_blocks: Sequence[torch.Tensor], syn_blocks: Sequence[torch.Tensor], p: float,
                 task_balance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One class: (attention loss over all blocks but the last, MMD of the last block's flattened output)."""
    att = attention_loss(real_blocks[:-1], syn_blocks[:-1], p)
    mmd = embedding_mmd(real_blocks[-1].flatten(1), syn_blocks[-1].flatten(1))
    return att, task_balance * mmd


@METHODS.register("datadam", help="attention matching: spatial attention + mean embeddings of random networks (Sajedi et al. 2023)")
class DataDAM(DM):
    """DM's loop with spatial-attention matching of the intermediate blocks added to the embedding term."""

    name = "datadam"
    Config = DataDAMConfig

    def lr_img(self) -> float:
        if self.config.lr_img is not None:
            return self.config.lr_img
        return 1.0 if self.ipc <= 50 else 10.0

    def task_balance(self) -> float:
        if self.config.task_balance is not None:
            return self.config.task_balance
        return 0.01 if max(self.dataset.image_size) <= 64 else 0.02

    def init_synset(self) -> SyntheticSet:
        if self.config.power <= 0:
            raise ValueError(f"power (p of the attention map) must be > 0, got {self.config.power}")
        s = super().init_synset()
        with torch.random.fork_rng(devices=[]):  # a probe that leaves every random stream untouched
            net = self.build_network()
        if not hasattr(net, "block_outputs"):
            raise ValueError(f"model '{self.config.model}' has no block_outputs(x); DataDAM needs intermediate "
                             "feature maps: use a ConvNet variant or add block_outputs to the model")
        self._template.meta["resolved_options"] = {"lr_img": self.lr_img(), "task_balance": self.task_balance()}
        return s

    def matching_loss(self, net, reals, syns) -> dict[str, torch.Tensor]:
        """All classes go through the network together (per side); the losses are per class, summed."""
        with torch.no_grad():
            real_blocks = [b.split([len(r) for r in reals]) for b in net.block_outputs(torch.cat(reals))]
        syn_blocks = [b.split([len(s) for s in syns]) for b in net.block_outputs(torch.cat(syns))]
        att = torch.zeros((), device=self.device)
        mmd = torch.zeros((), device=self.device)
        lam = self.task_balance()
        for c in range(len(reals)):
            a, m = datadam_loss([b[c] for b in real_blocks], [b[c] for b in syn_blocks], self.config.power, lam)
            att, mmd = att + a, mmd + m
        scale = self.config.loss_scale
        return {"loss": scale * (att + mmd), "loss_attention": scale * att, "loss_mmd": scale * mmd}
