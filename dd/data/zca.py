"""ZCA whitening as the MTT code applies it to CIFAR: kornia's ZCAWhitening (eps 0.1) fitted on the train split.

The fitted matrices travel with the dataset (and with synthetic sets) so images can be un-whitened for display.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ZCA:
    """x_white = (flat(x) - mean) @ transform; x = flat(x_white) @ transform_inv + mean."""

    mean: torch.Tensor  # (1, D)
    transform: torch.Tensor  # (D, D)
    transform_inv: torch.Tensor  # (D, D)
    eps: float = 0.1

    @classmethod
    def fit(cls, images: torch.Tensor, eps: float = 0.1) -> "ZCA":
        import kornia

        z = kornia.enhance.ZCAWhitening(eps=eps, compute_inv=True)
        z.fit(images.float())
        return cls(z.mean_vector.detach().clone(), z.transform_matrix.detach().clone(), z.transform_inv.detach().clone(), eps)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        return ((flat - self.mean.to(x)) @ self.transform.to(x)).view_as(x)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        return (flat @ self.transform_inv.to(x) + self.mean.to(x)).view_as(x)

    def tensors(self, prefix: str = "zca.") -> dict[str, torch.Tensor]:
        return {f"{prefix}mean": self.mean, f"{prefix}transform": self.transform, f"{prefix}transform_inv": self.transform_inv}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str = "zca.") -> "ZCA":
        return cls(t[f"{prefix}mean"], t[f"{prefix}transform"], t[f"{prefix}transform_inv"])


def apply_zca(ds, eps: float = 0.1):
    """Fits ZCA on `ds`'s training images and whitens both splits in place; returns `ds`.

    Whitened images are no longer uint8, so both splits become float32 tensors (as before uint8 storage); a
    file-backed dataset cannot be whitened (the fit needs every training image in memory at once).
    """
    if ds.file_backed:
        raise ValueError(f"ZCA whitening needs the whole training split of '{ds.name}' in memory, but it is file-backed "
                         f"({len(ds.train)} images decoded on demand); drop --zca, or load it in memory with a larger "
                         "--file-backed-above (file_backed_above_mib)")
    zca = ZCA.fit(ds.train_images, eps)
    ds.train_images = zca.apply(ds.train_images)
    ds.test_images = zca.apply(ds.test_images)
    ds.zca = zca
    return ds
