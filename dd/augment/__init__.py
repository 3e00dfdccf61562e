"""Augmentation: differentiable siamese augmentation (DSA)."""
from dd.augment.dsa import DEFAULT_STRATEGY, DSA, DSAParams, apply, draw, dsa_for

__all__ = ["DEFAULT_STRATEGY", "DSA", "DSAParams", "apply", "draw", "dsa_for"]
