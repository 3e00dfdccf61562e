"""The pieces of SRe2L-style recovery as plain functions: BN-statistics loss, crop-scale curriculum, batch views.

Recover minimizes CE(teacher(aug(x)), y) + r_bn * sum_l w_l (||mu_l(x) - running_mean_l||_2 +
||sigma^2_l(x) - running_var_l||_2) over the images x, where mu_l, sigma^2_l are the per-channel mean and
biased variance of the input of BatchNorm layer l over the batch and spatial positions, and w_l is
`first_bn_weight` for the first BN layer in module order (10 in the public code) and 1 for the others.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dd.eval.views import crop_flip, draw_crops
from dd.utils import cosine_decay

SCHEDULES = ("cosine", "linear", "step")


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` in module (registration) order, as the public code enumerates them."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_distance(inp: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """||mean(inp) - running_mean||_2 + ||var(inp) - running_var||_2 over all dims but the channel (biased var)."""
    dims = [0] + list(range(2, inp.ndim))
    mean = inp.mean(dims)
    var = inp.var(dims, unbiased=False)
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)


def forward_with_bn_loss(model: nn.Module, x: torch.Tensor, first_bn_weight: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, weighted BN-statistics loss) of one forward pass; the hooks live only for this call."""
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layers: recovery matches BatchNorm statistics, "
                         "so the teacher must be a BatchNorm network (convnet-bn, resnet18-bn, vgg11-bn, ...)")
    seen: dict[int, torch.Tensor] = {}

    def keep(i):
        def hook(module, inputs, output):
            seen[i] = bn_distance(inputs[0], module.running_mean, module.running_var)
        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    weights = [first_bn_weight] + [1.0] * (len(layers) - 1)
    loss = sum(weights[i] * seen[i] for i in sorted(seen))
    return logits, loss


def crop_scale_min(iteration: int, iterations: int, schedule: str = "cosine", milestone: float = 1.0,
                   start: float = 1.0, end: float = 0.08) -> float:
    """CDA's lower RandomResizedCrop scale at `iteration`: start -> end over the first `milestone` of the run, then end.

    cosine: end + (start - end)(1 + cos(pi t / T)) / 2; linear: end + (start - end)(1 - t / T); step: start until T.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown crop schedule '{schedule}'; choose one of {SCHEDULES}")
    if not 0.0 <= milestone <= 1.0:
        raise ValueError(f"milestone must be a fraction in [0, 1], got {milestone}")
    span = milestone * iterations
    if iteration >= span:
        return end
    if schedule == "step":
        return start
    if schedule == "linear":
        return end + (start - end) * (1.0 - iteration / span)
    return end + (start - end) * cosine_decay(iteration, span)


def cosine_lr(base: float, iteration: int, iterations: int) -> float:
    """0.5 (1 + cos(pi t / T)) * base, no warm-up (the recover scripts' schedule)."""
    return cosine_decay(iteration, iterations) * base


def recover_view(x: torch.Tensor, g: torch.Generator, *, scale_min: float | None, flip: bool, jitter: int) -> torch.Tensor:
    """One batch view as the public recover code makes it: a random-resized crop and a flip shared by the whole
    batch (scale_min None: no crop), then a random roll by (0..jitter, 0..jitter) pixels."""
    if scale_min is not None:
        box = draw_crops(1, tuple(x.shape[-2:]), (scale_min, 1.0), g).expand(len(x), 4)
        mirror = bool(torch.rand(1, generator=g) < 0.5) if flip else False
        x = crop_flip(x, box, torch.full((len(x),), mirror))
    if jitter > 0:
        off = torch.randint(0, jitter + 1, (2,), generator=g)
        x = torch.roll(x, shifts=(int(off[0]), int(off[1])), dims=(2, 3))
    return x


def committee_loss(members, weights, scales, view, y, r_bn: float, first_bn_weight: float):
    """sum_i w_i * (CE(f_i(view), y) + r_bn * BN_i(view) / s_i); returns (loss, per-member CE, per-member BN).

    SRe2L/CDA's loss is the committee of their one teacher (w = s = 1: the same numbers, bit for bit)."""
    total, ces, bns = 0.0, [], []
    for model, w, s in zip(members, weights, scales):
        logits, bn = forward_with_bn_loss(model, view, first_bn_weight)
        ce = F.cross_entropy(logits, y)
        total = total + w * (ce + r_bn * bn / s)
        ces.append(ce)
        bns.append(bn)
    return total, ces, bns
