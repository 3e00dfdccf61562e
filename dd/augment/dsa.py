"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) in plain tensor ops.

Every operation is a pure function of the images and explicit random parameters, so it is
differentiable with respect to the images and testable by hand; `DSA` draws the parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """The DSA paper's parameters; one operation family is drawn per call (the 'S' mode of the DSA code)."""

    strategy: str = DEFAULT_STRATEGY
    flip: float = 0.5  # probability of a horizontal flip
    scale: float = 1.2  # sx, sy ~ U(1/scale, scale)
    rotate: float = 15.0  # degrees, angle ~ U(-rotate, rotate)
    crop: float = 0.125  # max translation as a fraction of the side (crop-pad)
    cutout: float = 0.5  # side of the erased square as a fraction of the side
    brightness: float = 1.0  # x + U(-0.5, 0.5) * brightness
    saturation: float = 2.0  # mean_c + (x - mean_c) * U(0, 1) * saturation
    contrast: float = 0.5  # mean + (x - mean) * (U(0, 1) + contrast)


# ---- the operations: pure functions over explicit parameters -------------------------------------

def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirrors the samples where `mask` (N,) is true along the width axis."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def scale(x: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """Samples the image at (sx * u, sy * v) in normalized coordinates (bilinear, zero outside)."""
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
    return _affine(x, theta.to(x.dtype))


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotates by `angle` radians (N,) anticlockwise as displayed (the DSA code's and kornia's convention)
    about the centre (bilinear, zero outside); like the DSA code it rotates normalized coordinates, which is a
    rigid rotation for square images."""
    c, s, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1)], 1)
    return _affine(x, theta.to(x.dtype))


def brightness(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return x + delta.view(-1, 1, 1, 1).to(x.dtype)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * factor.view(-1, 1, 1, 1).to(x.dtype) + m


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * factor.view(-1, 1, 1, 1).to(x.dtype) + m


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shifts each image by integer (dy, dx) pixels, filling with zeros (DSA's 'crop')."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) - dy.view(-1, 1, 1).to(x.device)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - dx.view(-1, 1, 1).to(x.device)
    valid = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    idx = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, idx).view(n, c, h, w)
    return out * valid.to(x.dtype)


def cutout(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zeros the square of `size` whose top-left corner is (top, left) (clipped to the image)."""
    n, _, h, w = x.shape
    r = torch.arange(h, device=x.device).view(1, h, 1)
    col = torch.arange(w, device=x.device).view(1, 1, w)
    t, lft = top.view(-1, 1, 1).to(x.device), left.view(-1, 1, 1).to(x.device)
    inside = (r >= t) & (r < t + size[0]) & (col >= lft) & (col < lft + size[1])
    return x * (~inside).unsqueeze(1).to(x.dtype)


# ---- drawing the parameters ---------------------------------------------------------------------

def _u(n: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g)


def draw(family: str, n: int, hw: tuple[int, int], p: DSAParams, g: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Random parameters of one operation family for n samples (CPU tensors, drawn from `g`)."""
    h, w = hw
    if family == "color":
        return {"brightness": (_u(n, g) - 0.5) * p.brightness, "saturation": _u(n, g) * p.saturation,
                "contrast": _u(n, g) + p.contrast}
    if family == "crop":
        sh, sw = int(h * p.crop + 0.5), int(w * p.crop + 0.5)
        return {"dy": torch.randint(-sh, sh + 1, (n,), generator=g), "dx": torch.randint(-sw, sw + 1, (n,), generator=g)}
    if family == "cutout":
        ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
        cy = torch.randint(0, h + (1 - ch % 2), (n,), generator=g)
        cx = torch.randint(0, w + (1 - cw % 2), (n,), generator=g)
        return {"top": cy - ch // 2, "left": cx - cw // 2, "size": torch.tensor([ch, cw])}
    if family == "flip":
        return {"mask": _u(n, g) < p.flip}
    if family == "scale":
        lo = 1.0 / p.scale
        return {"sx": _u(n, g) * (p.scale - lo) + lo, "sy": _u(n, g) * (p.scale - lo) + lo}
    if family == "rotate":
        return {"angle": (_u(n, g) - 0.5) * 2 * p.rotate / 180 * math.pi}
    raise ValueError(f"unknown DSA operation '{family}'; known: color, crop, cutout, flip, scale, rotate")


def apply(family: str, x: torch.Tensor, prm: dict[str, torch.Tensor]) -> torch.Tensor:
    """Applies one family with given parameters; (1,)-shaped parameters broadcast over the batch."""
    n = x.shape[0]
    dev = x.device

    def b(t: torch.Tensor) -> torch.Tensor:
        t = t.to(dev)
        return t.expand(n) if t.shape[0] == 1 and n != 1 else t

    if family == "color":
        x = brightness(x, b(prm["brightness"]))
        x = saturation(x, b(prm["saturation"]))
        return contrast(x, b(prm["contrast"]))
    if family == "crop":
        return translate(x, b(prm["dy"]), b(prm["dx"]))
    if family == "cutout":
        size = (int(prm["size"][0]), int(prm["size"][1]))
        return cutout(x, b(prm["top"]), b(prm["left"]), size)
    if family == "flip":
        return flip(x, b(prm["mask"]))
    if family == "scale":
        return scale(x, b(prm["sx"]), b(prm["sy"]))
    if family == "rotate":
        return rotate(x, b(prm["angle"]))
    raise ValueError(f"unknown DSA operation '{family}'")


class DSA:
    """Draws one operation family per call and applies it.

    `dsa(x)` gives every sample its own parameters (evaluation/training mode); `dsa.siamese(a, b)`
    draws one set of parameters and applies it to every sample of every batch (DSA's siamese mode).
    """

    def __init__(self, params: DSAParams | None = None, allow_flip: bool = True):
        self.params = params or DSAParams()
        families = [f for f in self.params.strategy.split("_") if f and f.lower() != "none"]
        if not allow_flip:
            families = [f for f in families if f != "flip"]
        for f in families:
            draw(f, 1, (8, 8), self.params, None)  # validates names early
        self.families = families

    @property
    def strategy(self) -> str:
        return "_".join(self.families) or "none"

    def _family(self, g: torch.Generator | None) -> str | None:
        if not self.families:
            return None
        return self.families[int(torch.randint(len(self.families), (1,), generator=g))]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        fam = self._family(generator)
        if fam is None:
            return x
        return apply(fam, x, draw(fam, x.shape[0], tuple(x.shape[-2:]), self.params, generator))

    def siamese(self, *batches: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        fam = self._family(generator)
        if fam is None:
            return batches
        prm = draw(fam, 1, tuple(batches[0].shape[-2:]), self.params, generator)
        return tuple(apply(fam, x, prm) for x in batches)


def dsa_for(dataset_flip_ok: bool, strategy: str = DEFAULT_STRATEGY) -> DSA:
    """The DSA a dataset should use: the default strategy, `flip` dropped for digit datasets."""
    return DSA(DSAParams(strategy=strategy), allow_flip=dataset_flip_ok)
