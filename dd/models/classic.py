"""The small classic networks of the DC/DSA/DM benchmarks: MLP, LeNet, AlexNet and VGG11.

Layer sizes follow the DC benchmark code (Zhao et al. 2021); feature sizes are computed from the image size,
so 28px (MNIST), 32px and 64px inputs all work. Images under 32px get 2px more padding on the first conv.
"""
from __future__ import annotations

import torch
from torch import nn

from dd.models.layers import conv_out, image_hw, norm2d, require_size, small_image_pad, stage_outputs


class MLP(nn.Module):
    """flatten -> Linear(hidden) (-> BatchNorm1d) -> ReLU, twice -> classifier (3 layers, DC's MLP; norm 'batch' adds BN)."""

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32), hidden: int = 128, norm: str = "none"):
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"unknown norm '{norm}' for mlp; choose 'none' or 'batch'")
        h, w = image_hw(image_size)
        bn = (lambda: [nn.BatchNorm1d(hidden)]) if norm == "batch" else (lambda: [])
        self.body = nn.Sequential(nn.Flatten(1), nn.Linear(channels * h * w, hidden), *bn(), nn.ReLU(),
                                  nn.Linear(hidden, hidden), *bn(), nn.ReLU())
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _Staged(nn.Module):
    """Conv stages -> flatten -> `head` (identity or hidden layers) -> linear classifier."""

    stages: nn.ModuleList
    head: nn.Module
    classifier: nn.Linear

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after every stage (the maps attention matching compares)."""
        return stage_outputs(self.stages, x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv_norm(conv: nn.Conv2d, norm: str) -> list[nn.Module]:
    """[conv, norm] for norm 'instance'/'batch', [conv] for 'none' (so the plain models keep their parameter names)."""
    return [conv] if norm == "none" else [conv, norm2d(norm, conv.out_channels)]


class LeNet(_Staged):
    """2 x [conv5x5 (-> norm) -> ReLU -> maxpool] (6, 16 maps) -> fc 120 -> fc 84 -> classifier; features are the 84."""

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32), norm: str = "none"):
        super().__init__()
        h, w = image_hw(image_size)
        pad = small_image_pad(h, w)
        self.stages = nn.ModuleList([
            nn.Sequential(*conv_norm(nn.Conv2d(channels, 6, 5, padding=pad), norm), nn.ReLU(), nn.MaxPool2d(2, 2)),
            nn.Sequential(*conv_norm(nn.Conv2d(6, 16, 5), norm), nn.ReLU(), nn.MaxPool2d(2, 2)),
        ])
        oh, ow = (conv_out(conv_out(conv_out(conv_out(n, 5, 1, pad), 2, 2), 5), 2, 2) for n in (h, w))
        require_size("lenet", image_size, oh, ow, "12x12")
        self.head = nn.Sequential(nn.Linear(16 * oh * ow, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.feature_dim = 84
        self.classifier = nn.Linear(84, num_classes)


class AlexNet(_Staged):
    """The DC benchmark's small AlexNet: conv5(128) pool, conv5(192) pool, conv3(256, 192, 192) pool, linear.

    norm 'batch' puts a BatchNorm after every conv (a BN teacher for SRe2L/CDA/CV-DD); 'none' is DC's network.
    """

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32), norm: str = "none"):
        super().__init__()
        h, w = image_hw(image_size)
        pad = 2 + small_image_pad(h, w)
        self.stages = nn.ModuleList([
            nn.Sequential(*conv_norm(nn.Conv2d(channels, 128, 5, padding=pad), norm), nn.ReLU(), nn.MaxPool2d(2, 2)),
            nn.Sequential(*conv_norm(nn.Conv2d(128, 192, 5, padding=2), norm), nn.ReLU(), nn.MaxPool2d(2, 2)),
            nn.Sequential(*conv_norm(nn.Conv2d(192, 256, 3, padding=1), norm), nn.ReLU(),
                          *conv_norm(nn.Conv2d(256, 192, 3, padding=1), norm), nn.ReLU(),
                          *conv_norm(nn.Conv2d(192, 192, 3, padding=1), norm), nn.ReLU(), nn.MaxPool2d(2, 2)),
        ])
        oh, ow = (conv_out(n, 5, 1, pad) // 8 for n in (h, w))
        require_size("alexnet", image_size, oh, ow, "4x4")
        self.head = nn.Identity()
        self.feature_dim = 192 * oh * ow
        self.classifier = nn.Linear(self.feature_dim, num_classes)


VGG11_STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))


class VGG11(_Staged):
    """VGG11 as in the DC code: 5 stages of [conv3x3 -> norm -> ReLU]* -> maxpool, then one linear classifier.

    norm: 'instance' (GroupNorm(C, C), the DC default) or 'batch'. A 32px image ends as 512 x 1 x 1.
    """

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32), norm: str = "instance"):
        super().__init__()
        h, w = image_hw(image_size)
        pad = 1 + small_image_pad(h, w)
        stages, c_in = [], channels
        for widths in VGG11_STAGES:
            layers = []
            for c_out in widths:
                layers += [nn.Conv2d(c_in, c_out, 3, padding=pad), norm2d(norm, c_out), nn.ReLU()]
                c_in, pad = c_out, 1
            stages.append(nn.Sequential(*layers, nn.MaxPool2d(2, 2)))
        self.stages = nn.ModuleList(stages)
        extra = small_image_pad(h, w)
        oh, ow = ((n + 2 * extra) // 32 for n in (h, w))
        require_size("vgg11", image_size, oh, ow, "28x28")
        self.head = nn.Identity()
        self.feature_dim = 512 * oh * ow
        self.classifier = nn.Linear(self.feature_dim, num_classes)
