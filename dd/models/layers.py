"""Shape arithmetic and norm choice shared by the zoo's convolutional models.

Each architecture computes its feature size up front so a too-small image fails at construction with a
ValueError naming the model, the size and the smallest size that works.
"""
from __future__ import annotations

from torch import nn

from dd.models.convnet import make_norm

NORM2D = ("instance", "batch")


def image_hw(image_size) -> tuple[int, int]:
    """(h, w) from an int or a pair."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return int(h), int(w)


def conv_out(n: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output side of a conv/pool layer (floor division, as PyTorch)."""
    return (n + 2 * padding - kernel) // stride + 1


def small_image_pad(h: int, w: int) -> int:
    """Extra padding on the first conv for images under 32px (28px MNIST), as the DC code does.

    With it a 28px image yields the same map sizes as a 32px one (28 + 2*2 = 32).
    """
    return 2 if min(h, w) < 32 else 0


def norm2d(kind: str, channels: int) -> nn.Module:
    """'instance' = GroupNorm(C, C) with affine (the DC/MTT instance norm), 'batch' = BatchNorm2d."""
    if kind not in NORM2D:
        raise ValueError(f"unknown norm '{kind}' for this model; choose one of {NORM2D}")
    return make_norm(kind, channels, (1, 1))


def require_size(model: str, image_size, h: int, w: int, smallest: str) -> None:
    """Raises the zoo's standard error when an image is pooled/strided down to nothing."""
    if h < 1 or w < 1:
        raise ValueError(f"model '{model}' cannot take {tuple(image_hw(image_size))} images: its feature maps "
                         f"shrink to nothing; use images of at least {smallest} or another model")


def stage_outputs(stages, x):
    """Runs `x` through `stages` in order and returns every stage's output (the maps attention matching compares)."""
    outs = []
    for stage in stages:
        x = stage(x)
        outs.append(x)
    return outs
