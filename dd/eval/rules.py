"""The registered evaluation protocols: each owns how it builds an epoch's batches and its loss (hard, soft, teacher,
stored labels); `train_model` asks the protocol and knows none of them. A user's subclass loads as package.module:callable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Optional

import torch
import torch.nn.functional as F

from dd.eval.losses import distillation_loss, soft_cross_entropy
from dd.eval.protocol import PROTOCOLS, Protocol, protocol_rule
from dd.eval.views import apply_views, draw_views, epoch_generator, views_of


@dataclass(frozen=True)
class EvalInputs:
    """What a protocol may need beside the images and their labels, bundled once per evaluation: the teacher that
    labels each view (an nn.Module), stored labels (a dd.eval.labels.StoredLabels, replacing the teacher) and the
    student architecture's options."""

    teacher: Any = None
    stored: Any = None
    model_options: Optional[dict] = None

    def rule(self, protocol: Protocol) -> "ProtocolRule":
        """The protocol that trains: stored labels replay their views whatever the protocol's teacher would do."""
        return PROTOCOLS.get("stored") if self.stored is not None else protocol_rule(protocol.labels)


@dataclass
class TrainJob:
    """One training run as a protocol sees it: the images (a tensor or an ImageSource), their targets, the settings,
    the run's generator and seed, DSA (None when off), the teacher's labelling forward (None without a teacher)."""

    images: Any
    targets: torch.Tensor
    protocol: Protocol
    device: torch.device
    generator: torch.Generator
    seed: int
    flip_ok: bool
    dsa: Any
    teacher: Any
    inputs: EvalInputs


class ProtocolRule:
    """A protocol: its default settings (`settings`, Protocol fields; its preset is made when it is registered), its
    targets, its batches of one epoch and its loss.

    The default trains on shuffled batches of the set, DSA per batch when the settings ask, relabelled by the teacher
    when one is given, with cross-entropy (soft cross-entropy for label distributions). needs_teacher: every view is
    labelled by a teacher (crop views and mixing then apply); real_images: the protocol a baseline on real images
    (class ids) trains with instead (None: this one).
    """

    name: ClassVar[str] = ""
    settings: ClassVar[dict] = {}
    needs_teacher: ClassVar[bool] = False
    real_images: ClassVar[Optional[str]] = None
    preset: Protocol  # Protocol(name=<registered name>, labels=<registered name>, **settings), set by registration

    def check(self, job: TrainJob) -> None:
        """Refuses a run this protocol cannot train (before any step)."""

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        return labels

    def batches(self, job: TrainJob, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(job.images), generator=job.generator).to(job.device)
        for idx, x in index_batches(job.images, perm, job.protocol.batch_size):
            y = job.targets[idx]
            if job.dsa is not None:
                x = job.dsa(x, generator=job.generator)
            if job.teacher is not None:
                with torch.no_grad():
                    y = job.teacher(x)
            yield x, y

    def loss(self, logits: torch.Tensor, y: torch.Tensor, protocol: Protocol) -> torch.Tensor:
        return soft_cross_entropy(logits, y) if y.ndim == 2 else F.cross_entropy(logits, y)


def register_protocol(rule: ProtocolRule, name: Optional[str] = None) -> ProtocolRule:
    """Adds `rule` to PROTOCOLS under `name` (default its class's) and makes its preset; help: the class docstring's
    first line."""
    name = name or rule.name
    PROTOCOLS.add(name, rule, (type(rule).__doc__ or "").strip().split("\n")[0])
    rule.preset = Protocol(name=name, labels=name, **rule.settings)
    return rule


class Hard(ProtocolRule):
    """DC/MTT: cross-entropy on class ids (label distributions are argmaxed)."""

    name = "hard"

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.argmax(1) if labels.ndim == 2 else labels


class Soft(ProtocolRule):
    """DATM: soft cross-entropy on the set's label distributions (class ids: cross-entropy, the same loss)."""

    name = "soft"
    real_images = "hard"
    # class ids need no guess of the class count from labels.max(), which is wrong when the last class is absent


class Teacher(ProtocolRule):
    """SRe2L/CDA/CV-DD: KL(teacher/T || student/T) T^2 on every view (crop views + CutMix, or shuffled DSA batches)."""

    name = "teacher"
    needs_teacher = True
    settings = dict(epochs=300, lr=1e-3, use_learned_lr=False, weight_decay=0.01, batch_size=64, optimizer="adamw",
                    schedule="cosine", dsa=False, crop=True, mix="cutmix", temperature=20.0)

    def check(self, job: TrainJob) -> None:
        if job.teacher is None:
            raise ValueError(f"protocol '{job.protocol.name}' needs a teacher model or stored labels: pass "
                             "teacher=... or --labels DIR")

    def batches(self, job: TrainJob, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not job.protocol.crop:
            yield from super().batches(job, epoch)
            return
        p = job.protocol
        views = draw_views(len(job.images), tuple(job.images.shape[-2:]), p.batch_size, epoch_generator(job.seed, epoch),
                           scale=p.crop_scale, flip=job.flip_ok, mix=p.mix, alpha=p.mix_alpha)
        for _, x in enumerate_views(job.images, views):
            with torch.no_grad():
                t_logits = job.teacher(x)
            yield x, t_logits  # outside no_grad: the student trains on it

    def loss(self, logits: torch.Tensor, y: torch.Tensor, protocol: Protocol) -> torch.Tensor:
        return distillation_loss(logits, y, protocol.temperature)


class Stored(Teacher):
    """The teacher protocol replayed from `ddtk relabel` labels: the stored views and top-k logits, no teacher run."""

    name = "stored"

    def check(self, job: TrainJob) -> None:
        from dd.data.sources import ImageSource

        if job.inputs.stored is None:
            raise ValueError(f"protocol '{job.protocol.name}' replays stored teacher labels: pass labels=... (a "
                             "`ddtk relabel` directory, --labels DIR)")
        if isinstance(job.images, ImageSource):
            raise ValueError("stored teacher labels belong to a synthetic set's images; train on a tensor of images")
        job.inputs.stored.check(job.images, job.protocol)

    def batches(self, job: TrainJob, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = job.inputs.stored.epoch(job.images.cpu(), epoch)
        for x, t_logits in torch.utils.data.DataLoader(data, batch_size=None, shuffle=False):
            yield x.to(job.device), t_logits.to(job.device)


for _rule in (Hard(), Soft(), Teacher(), Stored()):
    register_protocol(_rule)


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
