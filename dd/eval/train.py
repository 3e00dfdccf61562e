"""Trains one fresh network on given images/labels under a Protocol and returns its final test accuracy."""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dd.augment.dsa import DSA, DSAParams
from dd.eval.labels import teacher_forward
from dd.eval.losses import distillation_loss, soft_cross_entropy
from dd.eval.protocol import Protocol
from dd.utils import cosine_decay
from dd.eval.views import apply_views, draw_views, epoch_generator, views_of


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


def index_batches(images, order: torch.Tensor, batch_size: int):
    """(positions, images) of consecutive chunks of `order`: a tensor is indexed, an ImageSource read (its batches)."""
    from dd.data.sources import ImageSource

    if isinstance(images, ImageSource):
        yield from images.batches(batch_size, order=order, reuse=True)  # each batch is done with before the next
        return
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield idx, images[idx]


def enumerate_views(images, views):
    """(batch, augmented images) of one epoch of crop views; a source is read in the views' order, batch by batch."""
    from dd.data.sources import ImageSource

    if not isinstance(images, ImageSource):
        for b in range(views.num_batches):
            yield b, apply_views(images, views, b)
        return
    where = torch.empty(len(views.order), dtype=torch.long)
    where[views.order] = torch.arange(len(views.order))  # image -> its position in the epoch
    for idx, x in images.batches(views.batch_size, order=views.order, reuse=True):
        b = int(where[idx[0].cpu()]) // views.batch_size  # a batch left out entirely (unreadable files) is skipped
        pos = views.positions(b)
        keep = None if len(idx) == pos.stop - pos.start else torch.isin(views.order[pos], idx.cpu())
        yield b, views_of(x, views, b, keep)


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
                lr: Optional[float] = None, seed: int = 0, flip_ok: bool = True,
                teacher: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, stored=None, progress: bool = False,
                desc: str = "train") -> dict:
    """Trains `model` in place on (images, labels); returns {'lr', 'final_loss', 'seconds'}.

    labels may be class ids (N,) or distributions (N, K); how they are used follows `protocol.labels`. The
    teacher protocol labels every view with `teacher`, or reads stored labels (`stored`, a StoredLabels).
    Randomness (batch order, augmentation) comes from a generator seeded with `seed`. `images` may also be an
    ImageSource (a dataset's training split, e.g. the full-data baseline): it is read batch by batch in the same
    order (file-backed sources decode in DataLoader workers), never as one tensor.
    """
    from dd.data.sources import ImageSource

    source = images if isinstance(images, ImageSource) else None
    if source is not None and stored is not None:
        raise ValueError("stored teacher labels belong to a synthetic set's images; train on a tensor of images")
    device = images.device
    g = torch.Generator().manual_seed(seed)
    lr = float(lr if lr is not None else protocol.lr)
    opt = make_optimizer(model, protocol, lr)
    dsa = DSA(DSAParams(strategy=protocol.dsa_strategy), allow_flip=flip_ok) if protocol.dsa else None
    if protocol.labels == "teacher" and teacher is None and stored is None:
        raise ValueError("protocol 'teacher' needs a teacher model or stored labels: pass teacher=... or --labels DIR")
    if stored is not None:
        stored.check(images, protocol)
    t_model = teacher_forward(teacher, protocol) if (teacher is not None and stored is None) else None
    targets = labels
    if protocol.labels == "hard" and labels.ndim == 2:
        targets = labels.argmax(1)
    # 'soft' with class ids: cross-entropy on ids equals soft cross-entropy on their one-hot rows (and needs no
    # guess of the class count from labels.max(), which is wrong when the last class is absent)

    def batches(ep: int):
        """(augmented images, targets) of one epoch: crop views (teacher protocol) or shuffled DSA batches."""
        if protocol.crop:
            if stored is not None:
                data = stored.epoch(images.cpu(), ep)
                for x, t_logits in torch.utils.data.DataLoader(data, batch_size=None, shuffle=False):
                    yield x.to(device), t_logits.to(device)
                return
            views = draw_views(len(images), tuple(images.shape[-2:]), protocol.batch_size, epoch_generator(seed, ep),
                               scale=protocol.crop_scale, flip=flip_ok, mix=protocol.mix, alpha=protocol.mix_alpha)
            for b, x in enumerate_views(images, views):
                with torch.no_grad():
                    t_logits = t_model(x)
                yield x, t_logits  # outside no_grad: the student trains on it
            return
        perm = torch.randperm(len(images), generator=g).to(device)
        for idx, x in index_batches(images, perm, protocol.batch_size):
            y = targets[idx]
            if dsa is not None:
                x = dsa(x, generator=g)
            if t_model is not None:
                with torch.no_grad():
                    y = t_model(x)
            yield x, y

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
        for x, y in batches(ep):
            out = model(x)
            if protocol.labels == "teacher":
                loss = distillation_loss(out, y, protocol.temperature)
            elif y.ndim == 2:
                loss = soft_cross_entropy(out, y)
            else:
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss_val = float(loss.detach())
        if progress:
            bar.set_postfix(loss=f"{loss_val:.3f}")
        if not torch.isfinite(torch.tensor(loss_val)):
            raise FloatingPointError(f"training diverged at epoch {ep} (loss {loss_val}); lower the lr")
    return {"lr": lr, "final_loss": loss_val, "seconds": time.perf_counter() - start}
