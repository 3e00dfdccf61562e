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


def check_model(name, option: str = "--model") -> str:
    """Refuses a model name that is neither registered nor an importable `package.module:callable`, naming `option`;
    run before any data is read (a distill run builds its networks only once it is under way)."""
    import importlib.util

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{option} expects a model name (see `ddtk models`) or package.module:callable, got {name!r}")
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            found = bool(module_name) and bool(attr) and importlib.util.find_spec(module_name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ValueError(f"{option} '{name}': no module '{module_name}' to import; expected package.module:callable")
        return name
    if name not in MODELS:
        raise ValueError(f"{option}: unknown model '{name}'; known: {', '.join(MODELS.names())}")
    return name


def build_model(name: str, channels: int, num_classes: int, image_size, **options) -> nn.Module:
    """A fresh, randomly initialized model; `name` is a registry name or `package.module:callable`."""
    if ":" in name:
        fn = import_callable(name, "user model", "expected 'package.module:callable' taking "
                                                 "(channels, num_classes, image_size, **options)")
    else:
        fn = MODELS.get(name)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    try:
        return fn(channels, num_classes, size, **options)
    except TypeError as e:
        if ":" not in name and options:
            raise ValueError(f"model '{name}' does not take the option(s) {options} (--model-option): {e}") from e
        if ":" not in name:
            raise
        raise ValueError(f"user model '{name}' (called to build a network) raised TypeError: {e}") from e
    except Exception as e:
        if ":" not in name:
            raise
        raise ValueError(f"user model '{name}' (called to build a network) raised {type(e).__name__}: {e}") from e


__all__ = ["MODELS", "MLP", "LeNet", "AlexNet", "VGG11", "ConvNet", "ResNet18", "TorchvisionResNet", "ViT",
           "build_model", "check_model"]
