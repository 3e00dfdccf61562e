"""Evaluation protocols: the settings a fresh network is trained with (`Protocol`) and the registry of protocols.

Each registered protocol (dd.eval.rules: hard, soft, teacher, stored labels) owns how it builds a batch and its loss;
`Protocol.labels` names the one that trains, and `package.module:callable` loads a user's (see `protocol_rule`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from dd.augment.dsa import DEFAULT_STRATEGY
from dd.registry import Registry, import_callable
from dd.validate import check_dataclass, rule

if TYPE_CHECKING:  # pragma: no cover
    from dd.eval.rules import ProtocolRule

PROTOCOLS: Registry = Registry("protocol")  # name -> ProtocolRule (dd.eval.rules registers hard, soft, teacher, stored)


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
MIXES = ("none", "cutmix", "mixup")
TEACHER_BN = ("eval", "train")


@dataclass(frozen=True)
class Protocol:
    """The DC/MTT hard-label protocol by default: SGD(0.9, wd 5e-4), lr 0.01, batch 256, lr x0.1 at half.

    labels: the registered protocol that trains (its batches and loss, dd.eval.rules): 'hard' trains with
    cross-entropy on class ids (soft labels are argmaxed); 'soft' with soft cross-entropy on the set's label
    distributions (DATM); 'teacher' distils a teacher's outputs on every augmented view, KL(teacher/T || student/T)
    * T^2 (the SRe2L/CDA/CV-DD protocol; pass `teacher=` or stored labels to the harness); `package.module:callable`
    a user's. The reported accuracy is always the last epoch's, never the best.
    """

    name: str = "hard"
    epochs: int = field(default=1000, metadata=rule(ge=1))
    lr: float = field(default=0.01, metadata=rule(gt=0))
    use_learned_lr: bool = True  # a set's learned lr (MTT) replaces `lr`
    momentum: float = field(default=0.9, metadata=rule(ge=0))  # SGD only
    weight_decay: float = field(default=5e-4, metadata=rule(ge=0))
    batch_size: int = field(default=256, metadata=rule(ge=1))
    optimizer: str = field(default="sgd", metadata=rule(choices=OPTIMIZERS))  # 'sgd' or 'adamw'
    # 'step': lr x lr_decay at lr_decay_at of the epochs; 'cosine': per-epoch cosine to 0
    schedule: str = field(default="step", metadata=rule(choices=SCHEDULES))
    # cosine over eta x epochs (CV-DD's gentler schedule: 2, ending at half the lr)
    cosine_eta: float = field(default=1.0, metadata=rule(ge=1))
    lr_decay_at: float = field(default=0.5, metadata=rule(ge=0, le=1))
    lr_decay: float = field(default=0.1, metadata=rule(gt=0))
    dsa: bool = True  # per-sample DSA on every batch
    dsa_strategy: str = DEFAULT_STRATEGY
    crop: bool = False  # random-resized crop (+ flip where the data allows) per image: the teacher protocol's views
    crop_scale: tuple[float, float] = field(default=(0.08, 1.0), metadata=rule(gt=0, le=1))
    # 'cutmix' or 'mixup' per batch (teacher protocol; the teacher labels the mixed view)
    mix: str = field(default="none", metadata=rule(choices=MIXES))
    mix_alpha: float = field(default=1.0, metadata=rule(gt=0))  # Beta(alpha, alpha) of the mixing ratio
    # the registered protocol that trains: 'hard' | 'soft' | 'teacher' | package.module:callable (checked by
    # protocol_rule, not a fixed list: users register their own)
    labels: str = "hard"
    temperature: float = field(default=1.0, metadata=rule(gt=0))  # for 'teacher'
    # 'eval': running statistics; 'train': each batch's own statistics (CV-DD's choice)
    teacher_bn: str = field(default="eval", metadata=rule(choices=TEACHER_BN))
    test_batch_size: int = field(default=1000, metadata=rule(ge=1))

    def __post_init__(self) -> None:
        check_dataclass(self)  # every field's declared rule, however the protocol was built
        try:
            trains = protocol_rule(self.labels)
        except KeyError as e:
            raise ValueError(f"protocol labels: {e.args[0]}") from None
        if self.crop and self.dsa:
            raise ValueError("protocol: choose crop views or DSA, not both")
        if (self.crop or self.mix != "none") and not trains.needs_teacher:
            raise ValueError("crop views and mixing label each view with the teacher: use them with labels='teacher'")
        if not (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")

    def with_(self, **changes) -> "Protocol":
        changes = {k: v for k, v in changes.items() if v is not None}
        if "crop_scale" in changes:
            changes["crop_scale"] = tuple(float(v) for v in changes["crop_scale"])
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def protocol_rule(name: str) -> "ProtocolRule":
    """The registered protocol `name`; `package.module:callable` calls the user's callable once, which returns a
    dd.eval.rules.ProtocolRule, and registers it under that spec (so a set recording it evaluates the same way)."""
    if name not in PROTOCOLS and ":" in name:
        from dd.eval.rules import ProtocolRule, register_protocol

        rule = import_callable(name, "user protocol", "expected 'package.module:callable' returning a "
                                                      "dd.eval.rules.ProtocolRule")()
        if not isinstance(rule, ProtocolRule):
            raise KeyError(f"user protocol '{name}' returned a {type(rule).__name__}, not a dd.eval.rules.ProtocolRule")
        register_protocol(rule, name)
    return PROTOCOLS.get(name)


def get_protocol(name: "str | Protocol | dict" = "hard", **overrides) -> Protocol:
    """A named protocol's preset (or a given one) with `overrides` (None values are ignored) applied."""
    if isinstance(name, Protocol):
        return name.with_(**overrides)
    if isinstance(name, dict):
        return Protocol(**{k: tuple(v) if k == "crop_scale" else v for k, v in name.items()}).with_(**overrides)
    rule = protocol_rule(name)
    known = set(Protocol.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown protocol option(s) {unknown}; known: {sorted(known)}")
    return rule.preset.with_(**overrides)


def for_real_images(protocol: Protocol) -> Protocol:
    """The protocol baselines train real images with class ids under (random, full, coreset rows): the given one, or
    the one its rule declares for real images (soft: hard), so a baseline row is comparable with the set's."""
    instead = protocol_rule(protocol.labels).real_images
    return protocol.with_(labels=instead) if instead else protocol
