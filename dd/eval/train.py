"""Trains one fresh network on given images/labels under a Protocol and returns its final test accuracy."""
from __future__ import annotations

import time
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from dd.augment.dsa import DSA, DSAParams
from dd.eval.labels import teacher_forward
from dd.eval.losses import distillation_loss, soft_cross_entropy  # noqa: F401  (dd.eval.train's public names)
from dd.eval.protocol import Protocol
from dd.eval.rules import EvalInputs, TrainJob
from dd.utils import cosine_decay


@torch.no_grad()
def accuracy(model: nn.Module, images, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` (in eval mode) on images, a tensor or an ImageSource (e.g. `dataset.test`).

    A source is read batch by batch onto labels' device (a file-backed one decoded by DataLoader workers, in batches
    of at most 128); images of a dataset that skips unreadable files count only when they were read.
    """
    from dd.data.sources import ImageSource, eval_batch_size

    was = model.training
    model.eval()
    correct = total = 0
    if isinstance(images, ImageSource):
        for idx, x in images.batches(eval_batch_size(images, batch_size), device=labels.device, reuse=True):
            out = model(x)
            correct += (out.argmax(1) == labels[idx.to(labels.device)]).sum().item()
            total += len(idx)
    else:
        for i in range(0, len(images), batch_size):
            out = model(images[i:i + batch_size])
            correct += (out.argmax(1) == labels[i:i + batch_size]).sum().item()
        total = len(images)
    model.train(was)
    return correct / max(1, total)


def make_optimizer(model: nn.Module, protocol: Protocol, lr: float) -> torch.optim.Optimizer:
    if protocol.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=protocol.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)


def lr_at(protocol: Protocol, lr: float, epoch: int) -> float:
    """The protocol's lr in `epoch`: step decay at lr_decay_at of the epochs, or a per-epoch cosine to zero."""
    if protocol.schedule == "cosine":
        return lr * cosine_decay(epoch, protocol.epochs * protocol.cosine_eta)
    decay_epoch = int(protocol.epochs * protocol.lr_decay_at)
    return lr * protocol.lr_decay if (epoch >= decay_epoch and decay_epoch > 0) else lr


def train_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, protocol: Protocol, *,
                lr: Optional[float] = None, seed: int = 0, flip_ok: bool = True, inputs: Optional[EvalInputs] = None,
                progress: bool = False, desc: str = "train") -> dict:
    """Trains `model` in place on (images, labels); returns {'lr', 'final_loss', 'seconds'}.

    labels may be class ids (N,) or distributions (N, K); the protocol `protocol.labels` names (dd.eval.rules) makes
    each epoch's batches and the loss: the teacher protocol labels every view with `inputs.teacher`, or replays
    `inputs.stored` (a StoredLabels). Randomness (batch order, augmentation) comes from a generator seeded with `seed`.
    `images` may also be an ImageSource (a dataset's training split, e.g. the full-data baseline): it is read batch
    by batch in the same order (file-backed sources decode in DataLoader workers), never as one tensor.
    """
    inputs = inputs or EvalInputs()
    rule = inputs.rule(protocol)
    device = images.device
    g = torch.Generator().manual_seed(seed)
    lr = float(lr if lr is not None else protocol.lr)
    opt = make_optimizer(model, protocol, lr)
    dsa = DSA(DSAParams(strategy=protocol.dsa_strategy), allow_flip=flip_ok) if protocol.dsa else None
    teacher = teacher_forward(inputs.teacher, protocol) if (inputs.teacher is not None and inputs.stored is None) else None
    job = TrainJob(images, rule.targets(labels), protocol, device, g, seed, flip_ok, dsa, teacher, inputs)
    rule.check(job)

    model.train()
    start = time.perf_counter()
    loss_val = float("nan")
    bar = tqdm(range(protocol.epochs), desc=desc, disable=not progress, leave=False)
    current = lr
    for ep in bar:
        new = lr_at(protocol, lr, ep)
        if new != current:
            for grp in opt.param_groups:
                grp["lr"] = new
            current = new
        for x, y in rule.batches(job, ep):
            loss = rule.loss(model(x), y, protocol)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss_val = float(loss.detach())
        if progress:
            bar.set_postfix(loss=f"{loss_val:.3f}")
        if not torch.isfinite(torch.tensor(loss_val)):
            raise FloatingPointError(f"training diverged at epoch {ep} (loss {loss_val}); lower the lr")
    return {"lr": lr, "final_loss": loss_val, "seconds": time.perf_counter() - start}
