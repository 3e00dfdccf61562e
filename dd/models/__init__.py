"""Models: a registry by name; each builds from (channels, num_classes, image_size).

`build_model("convnet-w32", 1, 10, (28, 28))`; any user model loads as `package.module:callable`.
"""
from __future__ import annotations

import importlib

from torch import nn

from dd.models.registry import MODELS
from dd.models import convnet as _convnet  # noqa: F401  (registers the ConvNet family)
from dd.models import zoo as _zoo  # noqa: F401  (registers MLP, LeNet, AlexNet, VGG, ResNets, ViT)
from dd.models.classic import MLP, VGG11, AlexNet, LeNet
from dd.models.convnet import ConvNet
from dd.models.resnet import ResNet18, TorchvisionResNet
from dd.models.vit import ViT


def build_model(name: str, channels: int, num_classes: int, image_size, **options) -> nn.Module:
    """A fresh, randomly initialized model; `name` is a registry name or `package.module:callable`."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise KeyError(f"cannot load user model '{name}': {e}; expected 'package.module:callable' taking "
                           "(channels, num_classes, image_size, **options)") from e
    else:
        fn = MODELS.get(name)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if ":" not in name:
        return fn(channels, num_classes, size, **options)
    try:
        return fn(channels, num_classes, size, **options)
    except Exception as e:
        raise ValueError(f"user model '{name}' (called to build a network) raised {type(e).__name__}: {e}") from e


__all__ = ["MODELS", "MLP", "LeNet", "AlexNet", "VGG11", "ConvNet", "ResNet18", "TorchvisionResNet", "ViT",
           "build_model"]
