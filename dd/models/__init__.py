"""Models: a registry by name; each builds from (channels, num_classes, image_size).

`build_model("convnet-w32", 1, 10, (28, 28))`; any user model loads as `package.module:callable`.
"""
from __future__ import annotations

from torch import nn

from dd.models.registry import MODELS
from dd.registry import import_callable
from dd.models import convnet as _convnet  # noqa: F401  (registers the ConvNet family)
from dd.models import zoo as _zoo  # noqa: F401  (registers MLP, LeNet, AlexNet, VGG, ResNets, ViT)
from dd.models.classic import MLP, VGG11, AlexNet, LeNet
from dd.models.convnet import ConvNet
from dd.models.resnet import ResNet18, TorchvisionResNet
from dd.models.vit import ViT


def build_model(name: str, channels: int, num_classes: int, image_size, **options) -> nn.Module:
    """A fresh, randomly initialized model; `name` is a registry name or `package.module:callable`."""
    if ":" in name:
        fn = import_callable(name, "user model", "expected 'package.module:callable' taking "
                                                 "(channels, num_classes, image_size, **options)")
    else:
        fn = MODELS.get(name)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return fn(channels, num_classes, size, **options)


__all__ = ["MODELS", "MLP", "LeNet", "AlexNet", "VGG11", "ConvNet", "ResNet18", "TorchvisionResNet", "ViT",
           "build_model"]
