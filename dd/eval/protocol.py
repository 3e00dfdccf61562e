"""Evaluation protocols: how a fresh network is trained on a (synthetic) set before it is tested."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from dd.augment.dsa import DEFAULT_STRATEGY


@dataclass(frozen=True)
class Protocol:
    """The DC/MTT hard-label protocol by default: SGD(0.9, wd 5e-4), lr 0.01, batch 256, lr x0.1 at half.

    labels: 'hard' trains with cross-entropy on class ids (soft labels are argmaxed); 'soft' trains with
    soft cross-entropy on the set's label distributions (DATM); 'teacher' distils a teacher's softened
    outputs on each augmented batch (KL * T^2, the SRe2L/CDA/CV-DD protocol; pass `teacher=` to the harness).
    The reported accuracy is always the last epoch's, never the best on the test set.
    """

    name: str = "hard"
    epochs: int = 1000
    lr: float = 0.01
    use_learned_lr: bool = True  # a set's learned lr (MTT) replaces `lr`
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    lr_decay_at: float = 0.5  # fraction of the epochs at which lr is multiplied by lr_decay
    lr_decay: float = 0.1
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    labels: str = "hard"  # 'hard' | 'soft' | 'teacher'
    temperature: float = 1.0  # for 'teacher'
    test_batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.labels not in ("hard", "soft", "teacher"):
            raise ValueError(f"protocol labels must be 'hard', 'soft' or 'teacher', got {self.labels!r}")
        if self.epochs < 1:
            raise ValueError("protocol epochs must be >= 1")

    def with_(self, **changes) -> "Protocol":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    "hard": Protocol(),
    "soft": Protocol(name="soft", labels="soft"),
    "teacher": Protocol(name="teacher", labels="teacher", temperature=4.0),
}


def get_protocol(name: str | Protocol = "hard", **overrides) -> Protocol:
    if isinstance(name, Protocol):
        return name.with_(**overrides)
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol '{name}'; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name].with_(**overrides)
