"""FYI, "Flip Your Images for Dataset Distillation": match the synthetic batch together with its mirror.

Any matching method can opt in: pass the synthetic batch of a class through `mirror_augmented` before the
(siamese) augmentation, so the statistic being matched (mean embedding, attention, student update) sees
both orientations of every synthetic image. The stored set is unchanged (no extra images at evaluation).
"""
from __future__ import annotations

import warnings

import torch


def mirror_augmented(syn: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (2N, C, H, W): the batch followed by its horizontal mirror (differentiable)."""
    if syn.ndim != 4:
        raise ValueError(f"mirror_augmented expects (N, C, H, W) images, got shape {tuple(syn.shape)}")
    return torch.cat([syn, syn.flip(3)])


def warn_if_unflippable(flip: bool, flip_ok: bool, dataset_name: str) -> None:
    """Mirrored digits are other symbols: flipping still runs when asked, but says so once."""
    if flip and not flip_ok:
        warnings.warn(f"flip=true on '{dataset_name}', whose images change meaning when mirrored (digits); "
                      "FYI was designed for natural images", stacklevel=3)
