"""What an expert recording is: one typed config, with the MTT / FTD / smooth (AST) presets by name."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Optional

EXPERT_KINDS = ("mtt", "ftd", "smooth")
STORAGE_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class BufferConfig:
    """Everything that decides the bytes of a buffer (defaults: the MTT recorder, `buffer.py` of Cazenavette et al.).

    lr_decay_epoch: from this 0-based epoch on, lr is multiplied by lr_decay (None: constant lr).
    GSAM (FTD): rho > 0 turns on the adaptive sharpness-aware step with surrogate-gap weight alpha.
    Smooth experts (AST): clip_epochs > 0 scales the cross-entropy by clip_start + clip_step * epoch for
    the first clip_epochs epochs; gp_lambda > 0 adds the input-gradient penalty on un-augmented images.
    """

    dataset: str = "mnist10k"
    model: str = "convnet"
    model_options: dict = field(default_factory=dict)
    experts: int = 100
    epochs: int = 50
    expert_kind: str = "mtt"
    lr: float = 0.01
    batch_size: int = 256
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_decay_epoch: int | None = None
    lr_decay: float = 1.0
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    zca: bool = False
    rho: float = 0.0  # GSAM radius (FTD: 0.01)
    alpha: float = 0.0  # GSAM surrogate-gap weight (FTD: 0.3 or 1 depending on dataset/IPC)
    adaptive: bool = True  # ASAM-style perturbation e = rho * g * w^2 / || |w| * g ||
    clip_epochs: int = 0  # AST clipping loss: 10
    clip_start: float = 0.5
    clip_step: float = 0.05
    gp_lambda: float = 0.0  # AST gradient penalty weight: 2
    seed: int = 0
    storage_dtype: str = "float32"

    def __post_init__(self) -> None:
        from dd.validate import check_dataclass

        check_dataclass(self)  # numbers finite (e.g. --lr nan), however the config was built
        if self.expert_kind not in EXPERT_KINDS:
            raise ValueError(f"unknown expert kind '{self.expert_kind}'; choose one of {', '.join(EXPERT_KINDS)}")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage dtype '{self.storage_dtype}' is not supported; choose one of {', '.join(STORAGE_DTYPES)}")
        if self.experts < 1 or self.epochs < 1:
            raise ValueError(f"--experts and --epochs must be >= 1 (got {self.experts}, {self.epochs})")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"--batch must be >= 1 and --lr > 0 (got {self.batch_size}, {self.lr})")
        if self.rho < 0 or self.gp_lambda < 0:
            raise ValueError("--rho and --gp-lambda must be >= 0")

    def expert_seed(self, k: int) -> int:
        """Expert k's seed: init, batch order and augmentation all come from it (so 1 or K processes agree)."""
        return self.seed * 1_000_003 + k

    def lr_at(self, epoch: int) -> float:
        if self.lr_decay_epoch is not None and epoch >= self.lr_decay_epoch:
            return self.lr * self.lr_decay
        return self.lr

    def loss_scale(self, epoch: int) -> float:
        """AST's clipping loss: 0.5, 0.55, ..., 0.95 over the first clip_epochs epochs, then 1."""
        if epoch < self.clip_epochs:
            return self.clip_start + self.clip_step * epoch
        return 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BufferConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown buffer option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


# Named presets: the options each method's own recorder uses (what `--expert-kind` selects).
PRESETS: dict[str, dict] = {
    # MTT (Cazenavette et al. 2022): SGD lr 0.01, no momentum/wd, batch 256, DSA, 50 epochs.
    "mtt": dict(lr=0.01, momentum=0.0, weight_decay=0.0, batch_size=256, epochs=50),
    # FTD (Du et al. 2023): MTT's recorder with GSAM, rho 0.01, alpha 0.3 (1 for some dataset/IPC pairs).
    "ftd": dict(lr=0.01, momentum=0.0, weight_decay=0.0, batch_size=256, epochs=50, rho=0.01, alpha=0.3),
    # AST smooth experts: momentum 0.9, wd 1e-3, lr 0.003 x0.6 at epoch 26 of 50, clipping loss, gradient penalty 2.
    "smooth": dict(lr=0.003, momentum=0.9, weight_decay=1e-3, batch_size=256, epochs=50, lr_decay_epoch=26,
                   lr_decay=0.6, clip_epochs=10, clip_start=0.5, clip_step=0.05, gp_lambda=2.0),
}


def preset(kind: str, **overrides) -> BufferConfig:
    """The named preset with `overrides` (None values are ignored) applied."""
    if kind not in PRESETS:
        raise ValueError(f"unknown expert kind '{kind}'; choose one of {', '.join(PRESETS)}")
    base = BufferConfig(expert_kind=kind, **PRESETS[kind])
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class BufferRecipe:
    """`ddtk buffer`'s options by their names (what a `ddtk reproduce` recipe sets): the --expert-kind preset and the
    options that override it (None: the preset's value); `config()` is the BufferConfig they record."""

    dataset: str = "mnist10k"
    model: str = "convnet"
    model_options: dict = field(default_factory=dict)
    experts: Optional[int] = None
    epochs: Optional[int] = None
    expert_kind: str = "mtt"
    lr: Optional[float] = None
    batch: Optional[int] = None
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    lr_decay_epoch: Optional[int] = None
    lr_decay: Optional[float] = None
    dsa: bool = True
    zca: bool = False
    rho: Optional[float] = None
    alpha: Optional[float] = None
    gp_lambda: Optional[float] = None
    clip_epochs: Optional[int] = None
    seed: int = 0
    dtype: str = "float32"

    def config(self) -> BufferConfig:
        return preset(self.expert_kind, dataset=self.dataset, model=self.model, model_options=dict(self.model_options),
                      experts=self.experts, epochs=self.epochs, lr=self.lr, batch_size=self.batch,
                      momentum=self.momentum, weight_decay=self.weight_decay, lr_decay_epoch=self.lr_decay_epoch,
                      lr_decay=self.lr_decay, dsa=self.dsa, zca=self.zca, rho=self.rho, alpha=self.alpha,
                      gp_lambda=self.gp_lambda, clip_epochs=self.clip_epochs, seed=self.seed, storage_dtype=self.dtype)
