"""One expert-training step as plain functions over explicit parameters and gradients.

`sgd_step` is torch.optim.SGD's update; `gsam_*` are FTD's sharpness-aware pieces; `gradient_penalty`
and the config's `loss_scale` are AST's smooth-expert terms. `expert_step` composes them for one batch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dd.buffers.config import BufferConfig

Tensors = Sequence[torch.Tensor]


@torch.no_grad()
def sgd_step(params: Tensors, grads: Tensors, momentum_bufs: list, lr: float, momentum: float = 0.0,
             weight_decay: float = 0.0) -> None:
    """In place, as torch.optim.SGD (no dampening/Nesterov): d = g + wd*w; b = m*b + d (b = d at first); w -= lr*b."""
    d = list(grads)
    if weight_decay:
        d = torch._foreach_add(d, list(params), alpha=weight_decay)
    if momentum:
        if not momentum_bufs:
            momentum_bufs.extend(t.detach().clone() for t in d)
        else:
            torch._foreach_mul_(momentum_bufs, momentum)
            torch._foreach_add_(momentum_bufs, d)
        d = momentum_bufs
    torch._foreach_add_(list(params), d, alpha=-lr)


@torch.no_grad()
def gsam_perturbation(params: Tensors, grads: Tensors, rho: float, adaptive: bool = True,
                      eps: float = 1e-12) -> list[torch.Tensor]:
    """e = rho * g * w^2 / || |w| * g ||  (adaptive), or rho * g / ||g||; norms over all parameters together."""
    if adaptive:
        scaled = torch._foreach_mul(torch._foreach_abs(list(params)), list(grads))
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
        return [rho * g * w * w / (norm + eps) for w, g in zip(params, grads)]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(grads))))
    return [rho * g / (norm + eps) for g in grads]


@torch.no_grad()
def gsam_direction(clean: Tensors, perturbed: Tensors, alpha: float, eps: float = 1e-12) -> list[torch.Tensor]:
    """g_p - alpha * (g - proj_{g_p} g): the perturbed gradient minus alpha times the clean gradient's part orthogonal to it."""
    inner = sum((g * gp).sum() for g, gp in zip(clean, perturbed))
    gp_sq = sum((gp * gp).sum() for gp in perturbed)
    coef = inner / (gp_sq + eps)
    return [gp - alpha * (g - coef * gp) for g, gp in zip(clean, perturbed)]


def gradient_penalty(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * mean over (sample, pixel) of (|| d sum(logits) / dx ||_2 over channels - 1)^2 (AST, differentiable)."""
    x = x.detach().requires_grad_(True)
    gx = torch.autograd.grad(model(x).sum(), x, create_graph=True)[0]
    norms = (gx.pow(2).sum(1) + 1e-12).sqrt()
    return lam * (norms - 1.0).pow(2).mean()


def expert_step(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, x_raw: torch.Tensor,
                cfg: BufferConfig, epoch: int, momentum_bufs: list) -> torch.Tensor:
    """One update of `params` (the model's, in named_parameters order) on an augmented batch; returns the loss.

    loss = loss_scale(epoch) * CE(model(x), y) [+ gradient_penalty(model, x_raw)]; with rho > 0 the SGD
    direction is GSAM's (gradient at w + e, minus alpha times the clean gradient's orthogonal part).
    """
    scale = cfg.loss_scale(epoch)

    def loss_fn() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        if scale != 1.0:
            loss = loss * scale
        if cfg.gp_lambda > 0:
            loss = loss + gradient_penalty(model, x_raw, cfg.gp_lambda)
        return loss

    loss = loss_fn()
    grads = torch.autograd.grad(loss, params)
    if cfg.rho > 0:
        e = gsam_perturbation(params, grads, cfg.rho, cfg.adaptive)
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            torch._foreach_add_(params, e)
        perturbed = torch.autograd.grad(loss_fn(), params)
        with torch.no_grad():
            torch._foreach_copy_(params, saved)  # exact restore, not (w + e) - e
        grads = gsam_direction(grads, perturbed, cfg.alpha)
    sgd_step(params, grads, momentum_bufs, cfg.lr_at(epoch), cfg.momentum, cfg.weight_decay)
    return loss.detach()
