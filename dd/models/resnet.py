"""ResNets: the DC benchmark's ResNet-18 for 28-64px images and torchvision's ResNet-18/50 for 224px.

DC ResNet-18: 3x3 stem (stride 1, no max-pool), four stages of two basic blocks (64, 128, 256, 512 maps;
stride 2 from stage 2), bias-free convs, instance (GroupNorm(C, C)) or batch norm. The '-ap' variant
(DC's ResNet18AP) downsamples with stride-1 convs followed by 2x2 average pooling and feeds the whole
final map to the classifier instead of a global average.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dd.models.layers import image_hw, norm2d, require_size, stage_outputs

DOWNSAMPLES = ("stride", "avgpool")
STAGE_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus a (projected) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, downsample: str):
        super().__init__()
        conv_stride = stride if downsample == "stride" else 1
        self.pool = nn.AvgPool2d(2, 2) if (stride != 1 and downsample == "avgpool") else nn.Identity()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=conv_stride, padding=1, bias=False)
        self.norm1 = norm2d(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = norm2d(norm, c_out)
        if stride != 1 or c_in != c_out:
            proj = [nn.Conv2d(c_in, c_out, 1, stride=conv_stride, bias=False)]
            if downsample == "avgpool" and stride != 1:
                proj.append(nn.AvgPool2d(2, 2))
            self.shortcut = nn.Sequential(*proj, norm2d(norm, c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(F.relu(self.norm1(self.conv1(x))))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The DC/MTT ResNet-18. norm: 'instance' (default) or 'batch'; downsample: 'stride' or 'avgpool' (-ap).

    'stride' ends with a global average pool (512 features; identical to DC's 4x4 pool at 28/32px, and
    defined for any size); 'avgpool' flattens the final map (512 x 4 x 4 at 32px, 512 x 3 x 3 at 28px).
    """

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32), norm: str = "instance",
                 downsample: str = "stride"):
        super().__init__()
        if downsample not in DOWNSAMPLES:
            raise ValueError(f"unknown downsample '{downsample}'; choose one of {DOWNSAMPLES}")
        h, w = image_hw(image_size)
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, padding=1, bias=False), norm2d(norm, 64), nn.ReLU())
        stages, c_in = [], 64
        for i, c_out in enumerate(STAGE_WIDTHS):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride, norm, downsample),
                                        BasicBlock(c_out, c_out, 1, norm, downsample)))
            c_in = c_out
            if stride == 2:  # a stride-2 3x3 conv with padding 1 gives ceil(n/2); 2x2 pooling gives floor(n/2)
                h, w = ((h + 1) // 2, (w + 1) // 2) if downsample == "stride" else (h // 2, w // 2)
        require_size("resnet18-ap", image_size, h, w, "8x8")
        self.stages = nn.ModuleList(stages)
        self.global_pool = downsample == "stride"
        self.feature_dim = 512 if self.global_pool else 512 * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each of the four stages."""
        return stage_outputs(self.stages, self.stem(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_outputs(x)[-1]
        return x.mean(dim=(2, 3)) if self.global_pool else x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TorchvisionResNet(nn.Module):
    """torchvision's ImageNet ResNet (7x7 stride-2 stem, max-pool, global pool), randomly initialized.

    Built for 224px; the stem conv is rebuilt for `channels` != 3. Submodules are re-homed (stem, stages,
    classifier) so every parameter has exactly one name, as functional_call and safetensors need.
    """

    def __init__(self, arch: str, channels: int, num_classes: int, image_size=(224, 224)):
        super().__init__()
        import torchvision  # imported here: only these two models need it

        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        self.stem = nn.Sequential(net.conv1, net.bn1, nn.ReLU(), net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.feature_dim = net.fc.in_features
        self.classifier = net.fc

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each of the four stages."""
        return stage_outputs(self.stages, self.stem(x))

    @staticmethod
    def adapt_state_dict(state: dict) -> dict:
        """Renames torchvision's keys (conv1, bn1, layerK, fc) to this module's; dd's own keys pass through."""
        renames = {"conv1.": "stem.0.", "bn1.": "stem.1.", "fc.": "classifier.",
                   **{f"layer{k}.": f"stages.{k - 1}." for k in range(1, 5)}}
        out = {}
        for key, value in state.items():
            prefix = next((p for p in renames if key.startswith(p)), None)
            out[renames[prefix] + key[len(prefix):] if prefix else key] = value
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_outputs(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
