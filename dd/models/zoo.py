"""Registers the model zoo by name; every constructor takes (channels, num_classes, image_size, **options).

The architectures live in classic.py (MLP, LeNet, AlexNet, VGG11), resnet.py and vit.py; the ConvNet
family registers itself in convnet.py. Options given to build_model override the variant's defaults.
"""
from __future__ import annotations

from functools import partial

from dd.models.classic import MLP, VGG11, AlexNet, LeNet
from dd.models.registry import MODELS
from dd.models.resnet import ResNet18, TorchvisionResNet
from dd.models.vit import ViT


def _variant(cls, **defaults):
    def build(channels, num_classes, image_size, **options):
        return cls(channels, num_classes, image_size, **{**defaults, **options})

    build.__name__ = cls.__name__
    return build


_ZOO = {
    "mlp": (_variant(MLP), "MLP, 3 layers, 128 hidden units (DC)"),
    "mlp-bn": (_variant(MLP, norm="batch"), "MLP with batch norm after each hidden layer"),
    "lenet": (_variant(LeNet), "LeNet-5 with ReLU and max pooling (DC)"),
    "lenet-bn": (_variant(LeNet, norm="batch"), "LeNet-5 with batch norm after each conv"),
    "alexnet": (_variant(AlexNet), "the DC benchmark's small AlexNet for 28-64px images"),
    "alexnet-bn": (_variant(AlexNet, norm="batch"), "the DC AlexNet with batch norm after each conv"),
    "vgg11": (_variant(VGG11, norm="instance"), "VGG11 with instance norm (DC)"),
    "vgg11-bn": (_variant(VGG11, norm="batch"), "VGG11 with batch norm"),
    "resnet18": (_variant(ResNet18, norm="instance"), "ResNet-18 for 28-64px, instance norm (DC/MTT)"),
    "resnet18-bn": (_variant(ResNet18, norm="batch"), "ResNet-18 for 28-64px, batch norm"),
    "resnet18-ap": (_variant(ResNet18, norm="instance", downsample="avgpool"),
                    "ResNet-18 downsampling by average pooling, instance norm (DC's ResNet18AP)"),
    "vit": (_variant(ViT), "small ViT: 4px patches, width 256, depth 6, 8 heads, MLP 512"),
    "resnet18-tv": (partial(TorchvisionResNet, "resnet18"), "torchvision ResNet-18 (random init) for 224px"),
    "resnet50-tv": (partial(TorchvisionResNet, "resnet50"), "torchvision ResNet-50 (random init) for 224px"),
}
for _name, (_fn, _help) in _ZOO.items():
    MODELS.add(_name, _fn, _help)
