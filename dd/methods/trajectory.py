"""Trajectory matching core (MTT and its descendants) as plain functions over flat parameter vectors.

A student starts at an expert's parameters theta*_t, takes N SGD steps on the synthetic set, and the
loss is ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2. Two exact gradients of that loss
with respect to the images, the student lr and (optionally) soft labels: `unrolled_grad` keeps the
whole unrolled graph; `constant_memory_grad` stores only the N flat parameter vectors and recomputes
each step's graph in reverse (TESLA's trick), so its activation memory does not grow with N.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dd.augment.dsa import DSA, apply as dsa_apply, draw as dsa_draw
from dd.eval.losses import soft_cross_entropy
from dd.models.layout import ParamLayout


class ZeroTrajectoryDistance(ValueError):
    """The start and target expert parameters coincide, so the normalized matching loss is undefined."""


class ConvNetForward:
    """The ConvNet family's forward as plain torch.nn.functional calls over a parameter dict.

    Same math as `functional_call(model, params, (x,))`, without swapping module attributes on every call
    (which dominates the inner loop's time for small nets); `of(model)` falls back to the module otherwise.
    """

    def __init__(self, ops: list, classifier: str):
        self.ops, self.classifier = ops, classifier

    @classmethod
    def of(cls, model: nn.Module):
        """A ConvNetForward for dd's ConvNet (any norm/activation/pooling it supports), else `model` itself."""
        from dd.models.convnet import ConvNet

        if type(model) is not ConvNet:
            return model
        ops = []
        for i, block in enumerate(model.blocks):
            for j, layer in enumerate(block):
                pre = f"blocks.{i}.{j}."
                if isinstance(layer, nn.Conv2d):
                    ops.append(("conv", pre, layer.stride, layer.padding))
                elif isinstance(layer, nn.GroupNorm):
                    ops.append(("group_norm", pre, layer.num_groups, layer.eps))
                elif isinstance(layer, nn.ReLU):
                    ops.append(("relu",))
                elif isinstance(layer, nn.AvgPool2d):
                    ops.append(("avg_pool", layer.kernel_size, layer.stride))
                elif isinstance(layer, nn.MaxPool2d):
                    ops.append(("max_pool", layer.kernel_size, layer.stride))
                else:  # batch/layer norm, other activations: the module path handles them
                    return model
        return cls(ops, "classifier.")

    def __call__(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            kind = op[0]
            if kind == "conv":
                x = F.conv2d(x, p[op[1] + "weight"], p[op[1] + "bias"], op[2], op[3])
            elif kind == "group_norm":
                x = F.group_norm(x, op[2], p[op[1] + "weight"], p[op[1] + "bias"], op[3])
            elif kind == "relu":
                x = F.relu(x)
            elif kind == "avg_pool":
                x = F.avg_pool2d(x, op[1], op[2])
            else:
                x = F.max_pool2d(x, op[1], op[2])
        return F.linear(x.flatten(1), p[self.classifier + "weight"], p[self.classifier + "bias"])


@dataclass
class StepPlan:
    """The randomness of one inner step, drawn ahead so that every gradient mode replays it exactly."""

    index: torch.Tensor  # which synthetic images form this step's minibatch
    family: Optional[str] = None  # DSA operation family (None: no augmentation)
    params: Optional[dict] = None  # per-sample DSA parameters for that family


def draw_plans(num_images: int, steps: int, batch: Optional[int], dsa: Optional[DSA], hw: tuple[int, int],
               generator: torch.Generator, device="cpu") -> list[StepPlan]:
    """Minibatches as consecutive chunks of fresh permutations (as MTT), plus a per-sample DSA draw per step."""
    batch = num_images if not batch or batch >= num_images else int(batch)
    plans, chunks = [], []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(num_images, generator=generator).split(batch))
        idx = chunks.pop(0).to(device)
        fam, prm = None, None
        if dsa is not None and dsa.families:
            fam = dsa.families[int(torch.randint(len(dsa.families), (1,), generator=generator))]
            prm = dsa_draw(fam, len(idx), hw, dsa.params, generator)
        plans.append(StepPlan(idx, fam, prm))
    return plans


def inner_loss(model: nn.Module, layout: ParamLayout, flat: torch.Tensor, images: torch.Tensor,
               labels: torch.Tensor, plan: StepPlan, balanced: bool = False) -> torch.Tensor:
    """The student's training loss on one (augmented) minibatch; soft labels are logits (softmax targets).

    balanced: average the per-class mean losses (AST's balanced inner loss) instead of the plain mean.
    """
    x, y = images[plan.index], labels[plan.index]
    if plan.family is not None:
        x = dsa_apply(plan.family, x, plan.params)
    params = layout.unflatten(flat)
    logits = functional_call(model, params, (x,)) if isinstance(model, nn.Module) else model(params, x)
    if y.ndim == 2:
        per = soft_cross_entropy(logits, F.softmax(y, dim=1), reduction="none")
        cls = y.argmax(1)
    else:
        per = F.cross_entropy(logits, y, reduction="none")
        cls = y
    if not balanced:
        return per.mean()
    classes = torch.unique(cls)
    return torch.stack([per[cls == c].mean() for c in classes]).mean()


def student_step(model: nn.Module, layout: ParamLayout, theta: torch.Tensor, vel: Optional[torch.Tensor],
                 images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor, plan: StepPlan, momentum: float,
                 create_graph: bool, balanced: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One SGD step theta - lr * g (or heavy-ball: v = mu v + g; theta - lr * v); theta must require grad."""
    loss = inner_loss(model, layout, theta, images, labels, plan, balanced)
    (g,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
    if momentum:
        vel = g if vel is None else momentum * vel + g
        return theta - lr * vel, vel
    return theta - lr * g, None


def trajectory_distance(start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    d = ((start - target) ** 2).sum()
    if not bool(d > 0):
        raise ZeroTrajectoryDistance("the start and target expert parameters are identical (zero trajectory "
                                     "distance); use expert_epochs >= 1 and a buffer whose epochs differ")
    return d


def matching_loss(theta: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||theta - target||^2 / ||start - target||^2 (MTT's normalized parameter distance)."""
    return ((theta - target) ** 2).sum() / trajectory_distance(start, target)


@dataclass
class MatchResult:
    """The matching loss and its gradients (labels_grad is None unless labels are learned)."""

    loss: float
    images_grad: torch.Tensor
    lr_grad: torch.Tensor
    labels_grad: Optional[torch.Tensor] = None
    intermediate: Optional[list[float]] = None


def unrolled_grad(model: nn.Module, layout: ParamLayout, start: torch.Tensor, target: torch.Tensor,
                  images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor, plans: Sequence[StepPlan], *,
                  momentum: float = 0.0, learn_labels: bool = False, balanced: bool = False,
                  intermediate: Optional[Sequence[tuple[int, torch.Tensor, float]]] = None) -> MatchResult:
    """Gradient by backpropagating through the whole unrolled inner loop (memory grows with len(plans)).

    intermediate: extra terms (step k, expert params, weight) adding weight * ||theta_k - p||^2 / ||start - p||^2
    (AST's intermediate matching); the final term has weight 1.
    """
    images = images.detach().requires_grad_(True)
    lr = lr.detach().requires_grad_(True)
    labels = labels.detach().requires_grad_(True) if learn_labels else labels.detach()
    theta, vel = start.detach().requires_grad_(True), None
    mids = {k: (p, w) for k, p, w in (intermediate or [])}
    extra = []
    for k, plan in enumerate(plans):
        theta, vel = student_step(model, layout, theta, vel, images, labels, lr, plan, momentum, True, balanced)
        if k + 1 in mids and k + 1 != len(plans):
            p, w = mids[k + 1]
            extra.append(w * matching_loss(theta, start, p))
    loss = matching_loss(theta, start, target)
    total = loss + sum(extra) if extra else loss
    inputs = [images, lr] + ([labels] if learn_labels else [])
    grads = torch.autograd.grad(total, inputs)
    return MatchResult(float(total.detach()), grads[0], grads[1], grads[2] if learn_labels else None,
                       [float(e.detach()) for e in extra] or None)


def constant_memory_grad(model: nn.Module, layout: ParamLayout, start: torch.Tensor, target: torch.Tensor,
                         images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor, plans: Sequence[StepPlan], *,
                         momentum: float = 0.0, learn_labels: bool = False, balanced: bool = False,
                         intermediate: Optional[Sequence[tuple[int, torch.Tensor, float]]] = None) -> MatchResult:
    """The same gradient as `unrolled_grad`, with one step's graph alive at a time.

    Forward: run the inner loop without a graph, keeping theta_k (and the velocity) per step. Reverse:
    for k = N-1..0 rebuild step k's graph from theta_k and pull the adjoint of theta_{k+1} back with one
    vector-Jacobian product, accumulating the images/lr/labels gradients.
    """
    images_d, labels_d, lr_d = images.detach(), labels.detach(), lr.detach()
    mids = {k: (p, w) for k, p, w in (intermediate or [])}
    thetas, vels = [start.detach()], [None]
    with torch.enable_grad():
        for plan in plans:
            th = thetas[-1].clone().requires_grad_(True)
            new, v = student_step(model, layout, th, vels[-1], images_d, labels_d, lr_d, plan, momentum, False, balanced)
            thetas.append(new.detach())
            vels.append(None if v is None else v.detach())
    n = len(plans)
    dist = trajectory_distance(start, target)
    loss = float(((thetas[-1] - target) ** 2).sum() / dist)
    a_theta = 2 * (thetas[-1] - target) / dist
    extra = {}
    for k, (p, w) in mids.items():
        if 0 < k < n:
            d = trajectory_distance(start, p)
            extra[k] = (w * float(((thetas[k] - p) ** 2).sum() / d), 2 * w * (thetas[k] - p) / d)
    a_vel = torch.zeros_like(start) if momentum else None
    g_img = torch.zeros_like(images_d)
    g_lr = torch.zeros_like(lr_d)
    g_lab = torch.zeros_like(labels_d) if learn_labels else None
    img = images_d.clone().requires_grad_(True)
    lrv = lr_d.clone().requires_grad_(True)
    lab = labels_d.clone().requires_grad_(True) if learn_labels else labels_d
    for k in range(n - 1, -1, -1):
        if k + 1 in extra:
            a_theta = a_theta + extra[k + 1][1]
        th = thetas[k].clone().requires_grad_(True)
        v_in = None
        if momentum and vels[k] is not None:
            v_in = vels[k].clone().requires_grad_(True)
        with torch.enable_grad():
            new, v = student_step(model, layout, th, v_in, img, lab, lrv, plans[k], momentum, True, balanced)
            outs, gouts = [new], [a_theta]
            if momentum:
                outs.append(v)
                gouts.append(a_vel)
            ins = [th, img, lrv] + ([lab] if learn_labels else []) + ([v_in] if v_in is not None else [])
            res = torch.autograd.grad(outs, ins, grad_outputs=gouts, allow_unused=True)
        a_theta = res[0]
        g_img += res[1] if res[1] is not None else 0
        g_lr += res[2] if res[2] is not None else 0
        pos = 3
        if learn_labels:
            if res[3] is not None:
                g_lab += res[3]
            pos = 4
        if momentum:
            a_vel = res[pos] if v_in is not None else None
        del new, v, res
    total = loss + sum(e[0] for e in extra.values())
    return MatchResult(total, g_img, g_lr, g_lab, [e[0] for _, e in sorted(extra.items())] or None)


def graph_bytes_per_step(model: nn.Module, layout: ParamLayout, start: torch.Tensor, images: torch.Tensor,
                         labels: torch.Tensor, lr: torch.Tensor, plan: StepPlan, momentum: float = 0.0) -> int:
    """Bytes autograd saves for one double-differentiable inner step (measured with saved-tensor hooks)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    img = images.detach().requires_grad_(True)
    lrv = lr.detach().requires_grad_(True)
    th = start.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        new, _ = student_step(model, layout, th, None, img, labels, lrv, plan, momentum, True)
        ((new ** 2).sum()).backward(inputs=[img])  # the backward of the backward saves tensors too
    return total[0]
