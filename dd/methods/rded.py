"""RDED (Sun et al., CVPR 2024): realistic, diverse images selected from real crops by a teacher and stitched.

Per class: `mipc` random real training images, each cut into `num_crop` square RandomResizedCrops (scale
`crop_scale`) resized to side res // factor; each crop's realism score is the teacher's (eval mode) cross-entropy of
the true class on the crop zero-padded, centered, to the full resolution (zero in the normalized space, as the
public code pads normalized tensors). Each image keeps its lowest-CE crop; the class keeps its ipc * factor^2
lowest-CE crops in ascending order, and image i of the class is a row-major factor x factor grid whose slot k holds
sorted crop k * ipc + i. Labels: the teacher's soft labels on views of the stitched images (the teacher protocol's
crops and CutMix label each region), stored like `ddtk relabel` labels (`relabel_epochs`) or made on the fly.

Settings from the public code (LINs-lab/RDED): mipc 300 and num_crop 5 in every script (`scripts/*.sh`); factor 1
for CIFAR-10/100 and Tiny-ImageNet, 2 for ImageNet-1K (the same scripts);
crops `RandomResizedCrop(res // factor, ratio=(1, 1))`, default scale, antialiased bilinear resize
(`synthesize/utils.py` MultiRandomCrop); padding, selection and stitching as above (`selector`, `mix_images`; a
slot one pixel larger when res % factor != 0 takes its crop resized by nearest neighbour, as there).
Factor at small resolutions (dd's choice, not the paper's): factor 1 at 28 px (mnist10k): at IPC 10 factor 2 scored
84.5 +- 4.9 on convnet-w32 (3 runs) against 93.5 +- 0.1 for factor 1 (experiments/rded_results.md): the lowest-CE
14 px crops are mostly stroke fragments the teacher is sure of, not digits. Factor 1 at 8 px (digits): on the mlp
student at IPC 10, 85.1 +- 0.4 against 47.5 +- 4.2 for factor 2 (3 runs each; a 4 x 4 crop is a quarter of a digit).
Differences, on purpose: images stay float tensors (the code saves JPEGs); the set is scored under dd's teacher
protocol (like SRe2L/CDA and the random-real baseline beside it), not RDED's own student recipe (patch shuffling,
RandomResizedCrop scale (1/factor, 1), KL without T^2, lr ending at half).

Lifecycle: a one-shot selection, no gradient loop. One step selects one class (so a long ImageNet run
checkpoints between classes and resumes at the next class); `--iterations` has no meaning here and is ignored:
the run has exactly one step per class, whatever it says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from dd.eval.views import draw_crops
from dd.methods.base import Scoring, Method, MethodConfig
from dd.methods.registry import METHODS
from dd.synset import SyntheticSet, dataset_extra, dataset_meta

SCORE_CHUNK = 64  # candidate images (x num_crop crops) per teacher forward pass; the selection does not depend on it
SQUARE = (1.0, 1.0)  # RDED's crops are square (ratio=(1, 1))

_CODE = "LINs-lab/RDED"
PRESETS = {  # dataset -> (options, source)
    "cifar10": ({"factor": 1, "mipc": 300, "num_crop": 5}, f"{_CODE} scripts/cifar10_10ipc_conv3_to_conv3_cr5.sh"),
    "cifar100": ({"factor": 1, "mipc": 300, "num_crop": 5}, f"{_CODE} scripts/cifar100_10ipc_conv3_to_conv3_cr5.sh"),
    "tinyimagenet": ({"factor": 1, "mipc": 300, "num_crop": 5}, f"{_CODE} scripts/tinyimagenet_{{10,50}}ipc_*_cr5.sh"),
    "imagenet": ({"factor": 2, "mipc": 300, "num_crop": 5},
                 f"{_CODE} scripts/imagenet-1k_10ipc_resnet-18_to_resnet-18_cr5.sh"),
    "mnist10k": ({"factor": 1, "mipc": 300, "num_crop": 5}, "dd's choice at 28 px (experiments/rded_results.md)"),
    "digits": ({"factor": 1, "mipc": 100, "num_crop": 5}, "dd's choice at 8 px (experiments/rded_results.md)"),
}


@dataclass
class RDEDConfig(MethodConfig):
    """Selection options; the defaults are the public code's ImageNet-1K settings (presets set the rest)."""

    init: str = "real"  # candidates are real images: only 'real'
    dsa: bool = False  # unused: nothing is optimized
    factor: int = 2  # crops per side of a stitched image (crop side = res // factor)
    mipc: int = 300  # candidate real images per class (capped at the class's training images)
    num_crop: int = 5  # random crops scored per candidate image
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction of the candidate crops
    relabel_epochs: Optional[int] = None  # epochs of stored teacher labels (None: the protocol's epochs; 0: on the fly)
    relabel_topk: int = 10


def square_crops(images: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
    """Crop k of `boxes` (top, left, height, width) of images[k], resized to side x side (bilinear, antialiased)."""
    out = []
    for x, (top, left, h, w) in zip(images, boxes.tolist()):
        crop = x[None, :, top:top + h, left:left + w]
        out.append(crop if (h, w) == (side, side) else
                   F.interpolate(crop, size=(side, side), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out)


def pad_center(crops: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Zero-pads crops to hw, centered (the extra pixel of an odd margin goes to the bottom/right)."""
    dh, dw = hw[0] - crops.shape[-2], hw[1] - crops.shape[-1]
    return F.pad(crops, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def realism_scores(teacher: torch.nn.Module, crops: torch.Tensor, label: int, hw: tuple[int, int]) -> torch.Tensor:
    """The teacher's cross-entropy of class `label` on each crop padded to full size (lower: more realistic)."""
    with torch.no_grad():
        logits = teacher(pad_center(crops, hw)).float()
    return F.cross_entropy(logits, torch.full((len(crops),), label, device=logits.device), reduction="none")


def select_crops(scores: torch.Tensor, crops: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (m, num_crop), crops (m, num_crop, C, s, s): each image's lowest-score crop (the first on ties), then
    the `keep` lowest of those in ascending order; returns (crops (keep, C, s, s), their scores)."""
    best, which = scores.min(1)
    order = torch.sort(best, stable=True).indices[:keep]
    return crops[order, which[order]], best[order]


def stitch(crops: torch.Tensor, factor: int, n: int, hw: tuple[int, int]) -> torch.Tensor:
    """n images of size hw from factor^2 * n crops: row-major slot k of image i is crops[k * n + i]. With
    hw % factor != 0 the first rows/columns are one pixel larger and their crops resized (nearest), as RDED does."""
    c = crops.shape[1]
    out = torch.zeros(n, c, *hw, dtype=crops.dtype, device=crops.device)
    sizes = [[hw[d] // factor + (1 if r < hw[d] % factor else 0) for r in range(factor)] for d in (0, 1)]
    k, top = 0, 0
    for r in range(factor):
        left = 0
        for col in range(factor):
            h, w = sizes[0][r], sizes[1][col]
            part = crops[k * n:(k + 1) * n]
            if tuple(part.shape[-2:]) != (h, w):
                part = F.interpolate(part, size=(h, w), mode="nearest")
            out[:, :, top:top + h, left:left + w] = part
            left += w
            k += 1
        top += sizes[0][r]
    return out


@METHODS.register("rded", help="teacher-selected real crops, stitched (Sun et al. 2024); needs --teacher")
class RDED(Method):
    """Selects each class's most teacher-recognizable real crops and stitches them; scored by the teacher protocol."""

    name = "rded"
    Config = RDEDConfig
    teachers = (1, 1)
    model_from_teacher = True  # the report's default architecture `model` is the teacher's
    partial_sets = True  # classes not selected yet are blank: nothing to validate mid-run (and no split is carved)
    smoke: ClassVar[dict] = {"num_crop": 1, "relabel_epochs": 1}
    bookkeeping: ClassVar[frozenset] = frozenset({"class", "candidates"})

    @classmethod
    def preset(cls, dataset, ipc):
        entry = PRESETS.get(dataset)
        return dict(entry[0]) if entry else {}

    def __init__(self, config, dataset, ipc, device, generator, inputs=None, group=None):
        super().__init__(config, dataset, ipc, device, generator, inputs, group)
        c = config
        if c.init != "real":
            raise ValueError(f"rded selects crops of real images: init must be 'real', got '{c.init}'")
        if c.zca:
            raise ValueError("rded crops, resizes and pads images in pixel space; set zca=false")
        h, w = dataset.image_size
        if h != w:
            raise ValueError(f"rded cuts square crops of square images; dataset '{dataset.name}' has {h}x{w} images")
        if not 1 <= c.factor <= h:
            raise ValueError(f"factor must be in 1..{h} (the crop side is {h} // factor), got {c.factor}")
        if c.mipc < 1 or c.num_crop < 1:
            raise ValueError(f"mipc and num_crop must be >= 1, got {c.mipc} and {c.num_crop}")
        if not 0 < c.crop_scale[0] <= c.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {c.crop_scale}")
        self.keep = ipc * c.factor ** 2
        for k in range(dataset.num_classes):
            pool = min(c.mipc, self.real.count(k))
            if pool < self.keep:
                raise ValueError(f"rded keeps ipc x factor^2 = {self.keep} crops per class (one per candidate image) "
                                 f"but class {k} has {pool} candidates (mipc {c.mipc}, {self.real.count(k)} training "
                                 "images); lower ipc or factor, or raise mipc")
        self.side = h // c.factor
        self.source = self.inputs.teachers[0]
        self.teacher = self.source.module(dataset, device).eval()
        self.base_seed = self.seed_int()
        self.labels_dir: Optional[str] = None

    def init_synset(self) -> SyntheticSet:
        d = self.dataset
        labels = torch.arange(d.num_classes).repeat_interleave(self.ipc)
        self.images = torch.zeros(len(labels), d.channels, *d.image_size)  # a class appears when its step selects it
        self.done = torch.zeros(d.num_classes, dtype=torch.bool)
        meta = dataset_meta(d, ipc=self.ipc, init="real", method=self.name, factor=self.config.factor,
                            crop_side=self.side)
        self._template = SyntheticSet(self.images, labels, d.num_classes, meta=meta, extra=dataset_extra(d))
        return self.current_set()

    def num_steps(self, iterations: int) -> int:
        """One step per class: the selection is one pass, `iterations` does not apply (see the module docstring)."""
        return self.dataset.num_classes

    def class_generator(self, k: int) -> torch.Generator:
        """Class k's own stream (candidates and crops), so a resumed run selects the same crops."""
        return torch.Generator().manual_seed((self.base_seed * 1_000_003 + k) % (2**63))

    def select_class(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Class k's ipc stitched images, the kept crops' scores (ascending) and its number of candidate images."""
        c, hw = self.config, tuple(self.dataset.image_size)
        g = self.class_generator(k)
        m = min(c.mipc, self.real.count(k))
        images = self.real.sample(k, m, g).to(self.device)
        boxes = draw_crops(m * c.num_crop, hw, c.crop_scale, g, ratio=SQUARE)  # image-major: box i*num_crop + j
        crops, scores = [], []
        for lo in range(0, m, SCORE_CHUNK):
            hi = min(lo + SCORE_CHUNK, m)
            x = images[lo:hi].repeat_interleave(c.num_crop, 0)
            part = square_crops(x, boxes[lo * c.num_crop:hi * c.num_crop], self.side)
            crops.append(part.view(hi - lo, c.num_crop, *part.shape[1:]))
            scores.append(realism_scores(self.teacher, part, k, hw).view(hi - lo, c.num_crop))
        kept, kept_scores = select_crops(torch.cat(scores), torch.cat(crops), self.keep)
        return stitch(kept, c.factor, self.ipc, hw).cpu(), kept_scores.cpu(), m

    def step(self, it: int) -> dict[str, float]:
        k = it
        stitched, scores, m = self.select_class(k)
        self.images[k * self.ipc:(k + 1) * self.ipc] = stitched
        self.done[k] = True
        return {"loss": float(scores.mean()), "ce_max": float(scores.max()), "class": k, "candidates": m}

    def current_set(self) -> SyntheticSet:
        t = self._template
        return SyntheticSet(self.images.clone(), t.labels.clone(), t.num_classes, None, dict(t.meta), dict(t.extra))

    # -- after the selection: stored region labels, the protocol -----------------------------------------------
    def finalize(self, synset, out, protocol):
        epochs = protocol.epochs if self.config.relabel_epochs is None else self.config.relabel_epochs
        if epochs > 0 and out is not None:
            from dd.eval.labels import relabel

            path = relabel(synset.images, self.teacher, protocol, epochs, out / "labels",
                           seed=self.base_seed % (2**31), topk=self.config.relabel_topk, flip=self.dataset.flip_ok,
                           teachers=[self.source.describe()], device=self.device)
            self.labels_dir = str(path)
        return synset

    def evaluation(self) -> Scoring:
        return Scoring("teacher", self.teacher, [self.source.describe()], None, self.labels_dir)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state(self):
        return {"images": self.images, "done": self.done.to(torch.uint8)}, {}

    def load_state(self, tensors, info) -> None:
        self.images = tensors["images"].clone()
        self.done = tensors["done"].bool()
