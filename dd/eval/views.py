"""Augmented views of the teacher protocol, as data: one epoch's batch order, crops, flips and mixing, drawn ahead.

Drawing the parameters first and applying them with one deterministic function is what lets stored labels
(`ddtk relabel`) replay exactly the views a teacher labeled: `draw_views` -> `EpochViews` (tensors, saved as is)
-> `apply_views(images, views, b)` gives batch b's images, bit for bit, wherever it runs.
Crops follow torchvision's RandomResizedCrop draw (area fraction in `scale`, aspect ratio in [3/4, 4/3],
10 tries, else the whole image) and are resampled bilinearly; CutMix/Mixup pair each image with another of
its batch (a random permutation), with one Beta(alpha, alpha) ratio per batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

FIELDS = ("order", "boxes", "flips", "partner", "lam", "mix_boxes")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's draws: epochs are independent streams, so any epoch can be redrawn alone."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


@dataclass
class EpochViews:
    """Per position p (the p-th image of the epoch): order[p] image index, boxes[p] = (top, left, height, width),
    flips[p], partner[p] the position mixed into p (its own when unmixed); per batch: lam, mix_boxes (y0, x0, y1, x1)."""

    order: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    partner: torch.Tensor
    lam: torch.Tensor
    mix_boxes: torch.Tensor
    batch_size: int
    mix: str = "none"

    @property
    def num_batches(self) -> int:
        return len(self.lam)

    def positions(self, b: int) -> slice:
        return slice(b * self.batch_size, min((b + 1) * self.batch_size, len(self.order)))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).contiguous() for k in FIELDS}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], batch_size: int, mix: str) -> "EpochViews":
        return cls(*(t[k] for k in FIELDS), batch_size=batch_size, mix=mix)


def draw_crops(n: int, hw: tuple[int, int], scale: tuple[float, float], g: torch.Generator, tries: int = 10,
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 4) int boxes (top, left, height, width) drawn as torchvision's RandomResizedCrop.get_params."""
    h_img, w_img = hw
    area = h_img * w_img
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=g, dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=g, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * ratio)).long()
    h = torch.round(torch.sqrt(target / ratio)).long()
    ok = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    first = ok.float().argmax(1)
    pick_h = h.gather(1, first[:, None]).squeeze(1)
    pick_w = w.gather(1, first[:, None]).squeeze(1)
    none = ~ok.any(1)
    pick_h[none], pick_w[none] = h_img, w_img
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    top = (u[:, 0] * (h_img - pick_h + 1)).floor().long()
    left = (u[:, 1] * (w_img - pick_w + 1)).floor().long()
    return torch.stack([top, left, pick_h, pick_w], 1).int()


def draw_views(n: int, hw: tuple[int, int], batch_size: int, g: torch.Generator, *, scale=(0.08, 1.0), flip: bool = True,
               mix: str = "none", alpha: float = 1.0) -> EpochViews:
    """One epoch of views for n images in batches of `batch_size` (the last batch may be smaller)."""
    order = torch.randperm(n, generator=g)
    boxes = draw_crops(n, hw, scale, g)
    flips = (torch.rand(n, generator=g) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    nb = math.ceil(n / batch_size)
    partner = torch.arange(n)
    lam = torch.ones(nb)
    mix_boxes = torch.zeros(nb, 4, dtype=torch.int32)
    if mix != "none":
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
        h_img, w_img = hw
        for b in range(nb):
            lo, hi = b * batch_size, min((b + 1) * batch_size, n)
            partner[lo:hi] = lo + torch.randperm(hi - lo, generator=g)
            lam[b] = float(rng.beta(alpha, alpha))
            if mix == "cutmix":
                r = math.sqrt(1.0 - float(lam[b]))
                cut_h, cut_w = int(h_img * r), int(w_img * r)
                cy, cx = (int(v) for v in torch.randint(0, 2**31 - 1, (2,), generator=g))
                cy, cx = cy % h_img, cx % w_img
                y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h_img)
                x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w_img)
                mix_boxes[b] = torch.tensor([y0, x0, y1, x1], dtype=torch.int32)
    return EpochViews(order, boxes, flips, partner, lam, mix_boxes, batch_size, mix)


def crop_flip(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Resamples each image's box back to the full size (bilinear, border padding), mirrored where flips is set."""
    n, _, h_img, w_img = x.shape
    b = boxes.to(device=x.device, dtype=x.dtype)
    top, left, h, w = b.unbind(1)
    sx = w / w_img
    sx = torch.where(flips.to(x.device), -sx, sx)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / w_img - 1
    theta[:, 1, 1] = h / h_img
    theta[:, 1, 2] = (2 * top + h) / h_img - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def apply_views(images: torch.Tensor, views: EpochViews, b: int) -> torch.Tensor:
    """Batch b's augmented images: gather by order, crop/flip, then mix with each position's partner."""
    pos = views.positions(b)
    idx = views.order[pos].to(images.device)
    return views_of(images[idx], views, b)


def views_of(x: torch.Tensor, views: EpochViews, b: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Batch b's views of its images `x`, already gathered in the batch's order (crop/flip, then mix).

    `keep` (bool per position of the batch) says which positions `x` holds when some images could not be read
    (a file-backed dataset skipping unreadable files): their boxes and flips are kept, and a position whose mixing
    partner is missing mixes with itself.
    """
    pos = views.positions(b)
    boxes, flips = views.boxes[pos], views.flips[pos]
    partner = views.partner[pos] - pos.start
    if keep is not None:
        keep = keep.cpu()
        new_pos = torch.cumsum(keep.long(), 0) - 1
        partner = partner[keep]
        partner = torch.where(keep[partner], new_pos[partner], torch.arange(int(keep.sum())))
        boxes, flips = boxes[keep], flips[keep]
    x = crop_flip(x, boxes, flips)
    if views.mix == "none":
        return x
    partner = partner.to(x.device)
    if views.mix == "mixup":
        lam = float(views.lam[b])
        return lam * x + (1 - lam) * x[partner]
    y0, x0, y1, x1 = (int(v) for v in views.mix_boxes[b])
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[partner][:, :, y0:y1, x0:x1]
    return out
