"""The ConvNet family used across the dataset-distillation literature (DC, DSA, DM, MTT, FTD, DATM).

Each block: 3x3 conv -> norm -> activation -> 2x2 pooling; then one linear classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from dd.models.registry import MODELS

NORMS = ("instance", "batch", "layer", "group", "none")
ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
POOLINGS = ("avg", "max", "none")


def make_norm(kind: str, channels: int, spatial: tuple[int, int]) -> nn.Module:
    """'instance' is GroupNorm(C, C) with affine (as the DC/MTT code); 'layer' normalizes (C, H, W)."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.LayerNorm([channels, *spatial], elementwise_affine=True)
    if kind == "group":
        return nn.GroupNorm(4 if channels % 4 == 0 else 1, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}'; choose one of {NORMS}")


class ConvNet(nn.Module):
    """depth x [conv3x3(width) -> norm -> act -> pool]; `features` returns the flattened embedding."""

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32), width: int = 128, depth: int = 3,
                 norm: str = "instance", activation: str = "relu", pooling: str = "avg"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; choose one of {sorted(ACTIVATIONS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{pooling}'; choose one of {POOLINGS}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        blocks = []
        c_in = channels
        for _ in range(depth):
            layers = [nn.Conv2d(c_in, width, 3, padding=1), make_norm(norm, width, (h, w)), ACTIVATIONS[activation]()]
            if pooling != "none":
                layers.append(nn.AvgPool2d(2, 2) if pooling == "avg" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*layers))
            c_in = width
        if h < 1 or w < 1:
            raise ValueError(f"depth {depth} pools a {image_size} image to nothing; use a smaller depth")
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = width * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations after every block (the maps attention matching compares)."""
        outs = []
        for b in self.blocks:
            x = b(x)
            outs.append(x)
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _convnet(**defaults):
    def build(channels, num_classes, image_size, **options):
        return ConvNet(channels, num_classes, image_size, **{**defaults, **options})

    return build


_VARIANTS = {
    "convnet": ({}, "ConvNet depth 3, width 128, instance norm, ReLU, avg pool (the DC/MTT default)"),
    "convnet-w32": ({"width": 32}, "ConvNet width 32 (the CPU bench model)"),
    "convnet-w64": ({"width": 64}, "ConvNet width 64"),
    "convnet-w256": ({"width": 256}, "ConvNet width 256"),
    "convnet-d1": ({"depth": 1}, "ConvNet depth 1"),
    "convnet-d2": ({"depth": 2}, "ConvNet depth 2"),
    "convnet-d4": ({"depth": 4}, "ConvNet depth 4 (Tiny-ImageNet, 64px)"),
    "convnet-d5": ({"depth": 5}, "ConvNet depth 5 (128px ImageNet subsets)"),
    "convnet-d6": ({"depth": 6}, "ConvNet depth 6 (256px)"),
    "convnet-bn": ({"norm": "batch"}, "ConvNet with batch norm"),
    "convnet-bn-w32": ({"norm": "batch", "width": 32}, "ConvNet with batch norm, width 32 (the CPU bench's SRe2L/CDA teacher)"),
    "convnet-ln": ({"norm": "layer"}, "ConvNet with layer norm"),
    "convnet-gn": ({"norm": "group"}, "ConvNet with group norm"),
    "convnet-nn": ({"norm": "none"}, "ConvNet without normalization"),
    "convnet-maxpool": ({"pooling": "max"}, "ConvNet with max pooling"),
    "convnet-nopool": ({"pooling": "none"}, "ConvNet without pooling"),
    "convnet-sigmoid": ({"activation": "sigmoid"}, "ConvNet with sigmoid activations"),
    "convnet-leakyrelu": ({"activation": "leakyrelu"}, "ConvNet with leaky ReLU"),
}
for _name, (_defaults, _help) in _VARIANTS.items():
    MODELS.add(_name, _convnet(**_defaults), _help)
