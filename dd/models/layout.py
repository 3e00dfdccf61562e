"""How a module's parameters lie in one flat vector: the order expert buffers store and MTT's inner loop steps."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a module's parameters, in `named_parameters()` order (the buffer's flat order)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module) -> "ParamLayout":
        named = list(model.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def numels(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.numels)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views into `flat` (no copy), keyed by parameter name, for `functional_call`."""
        if flat.ndim != 1 or flat.numel() != self.size:
            raise ValueError(f"flat parameters have shape {tuple(flat.shape)}, the model needs ({self.size},)")
        return {n: p.view(s) for n, p, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])
