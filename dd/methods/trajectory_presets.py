"""Per-dataset/IPC hyperparameters of the trajectory-matching papers, used when an option is left unset.

MTT (Cazenavette et al. 2022, appendix table and README commands): N syn_steps, M expert_epochs,
T+ max_start_epoch, ZCA, batch_syn (None: all), lr_img, lr_lr, lr_teacher (the student lr's initial value).
The mnist10k rows are this project's own CPU bench settings (not from a paper); see experiments/mtt_*.json.
"""
from __future__ import annotations

from typing import Any

from dd.data.base import base_name

# (dataset, ipc) -> options; the key names are MTTConfig fields.
MTT_TABLE: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): dict(syn_steps=50, expert_epochs=2, max_start_epoch=2, zca=True, batch_syn=None, lr_img=1e2, lr_lr=1e-7, lr_teacher=1e-2),
    ("cifar10", 10): dict(syn_steps=30, expert_epochs=2, max_start_epoch=20, zca=True, batch_syn=None, lr_img=1e5, lr_lr=1e-4, lr_teacher=1e-2),
    ("cifar10", 50): dict(syn_steps=30, expert_epochs=2, max_start_epoch=40, zca=False, batch_syn=None, lr_img=1e2, lr_lr=1e-5, lr_teacher=1e-3),
    ("cifar100", 1): dict(syn_steps=20, expert_epochs=3, max_start_epoch=20, zca=True, batch_syn=None, lr_img=1e3, lr_lr=1e-5, lr_teacher=1e-2),
    ("cifar100", 10): dict(syn_steps=20, expert_epochs=2, max_start_epoch=20, zca=False, batch_syn=None, lr_img=1e3, lr_lr=1e-5, lr_teacher=1e-2),
    ("cifar100", 50): dict(syn_steps=80, expert_epochs=2, max_start_epoch=40, zca=True, batch_syn=125, lr_img=1e3, lr_lr=1e-5, lr_teacher=1e-2),
    ("tinyimagenet", 1): dict(syn_steps=10, expert_epochs=2, max_start_epoch=40, zca=False, batch_syn=None, lr_img=1e4, lr_lr=1e-4, lr_teacher=1e-2, model="convnet-d4"),
    ("tinyimagenet", 10): dict(syn_steps=20, expert_epochs=2, max_start_epoch=40, zca=False, batch_syn=200, lr_img=1e4, lr_lr=1e-4, lr_teacher=1e-2, model="convnet-d4"),
    ("tinyimagenet", 50): dict(syn_steps=20, expert_epochs=2, max_start_epoch=40, zca=False, batch_syn=300, lr_img=1e4, lr_lr=1e-4, lr_teacher=1e-2, model="convnet-d4"),
    # this project's CPU bench (mnist10k, convnet-w32, 20-epoch experts: lr 0.01 for IPC 1, lr 0.05 for IPC 10;
    # the student lr starts at the buffer's expert lr); not in the MTT paper, see experiments/mtt_results.md
    ("mnist10k", 1): dict(syn_steps=50, expert_epochs=2, max_start_epoch=8, zca=False, batch_syn=None, lr_img=1e3, lr_lr=1e-6, lr_teacher=1e-2),
    ("mnist10k", 10): dict(syn_steps=30, expert_epochs=2, max_start_epoch=10, zca=False, batch_syn=50, lr_img=1e3, lr_lr=1e-5, lr_teacher=5e-2),
}

# used for any (dataset, ipc) the table does not list: the CIFAR-10 IPC 10 row without ZCA
FALLBACK: dict[str, Any] = dict(syn_steps=30, expert_epochs=2, max_start_epoch=20, batch_syn=None, lr_img=1e3,
                                lr_lr=1e-5, lr_teacher=1e-2)

# ImageNet subsets at 128px distil with ConvNet-D5 (the MTT paper); Tiny-ImageNet with ConvNet-D4
MODEL_FOR_RESOLUTION = {64: "convnet-d4", 128: "convnet-d5"}


def mtt_defaults(dataset: str, ipc: int) -> dict[str, Any]:
    """The table's row for (dataset, ipc), else the fallback row."""
    return dict(MTT_TABLE.get((base_name(dataset).lower(), int(ipc)), FALLBACK))

# DATM (Guo et al., ICLR 2024), ConvNet-IN configs of the DATM repository; keys are DATMConfig fields.
# current_max_start_epoch None: fixed bounds [min_start_epoch, max_start_epoch) (no sequential generation).
DATM_TABLE: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): dict(syn_steps=80, expert_epochs=2, lr_img=100.0, lr_teacher=0.01, lr_lr=1e-7, batch_syn=None, lr_y=5.0,
                         threshold=1.1, min_start_epoch=0, current_max_start_epoch=None, max_start_epoch=4, expansion_end=0, zca=True),
    ("cifar10", 10): dict(syn_steps=80, expert_epochs=2, lr_img=100.0, lr_teacher=0.01, lr_lr=1e-5, batch_syn=None, lr_y=2.0,
                          threshold=1.0, min_start_epoch=0, current_max_start_epoch=10, max_start_epoch=20, expansion_end=1000, zca=True),
    ("cifar10", 50): dict(syn_steps=80, expert_epochs=2, lr_img=1000.0, lr_teacher=0.01, lr_lr=1e-5, batch_syn=500, lr_y=2.0,
                          threshold=1.0, min_start_epoch=0, current_max_start_epoch=20, max_start_epoch=40, expansion_end=2000, zca=True),
    # this project's CPU bench (mnist10k, 20-epoch convnet-w32 experts); not from the DATM paper
    ("mnist10k", 1): dict(syn_steps=50, expert_epochs=2, lr_img=1e3, lr_teacher=0.01, lr_lr=1e-6, batch_syn=None, lr_y=2.0,
                          threshold=1.0, min_start_epoch=0, current_max_start_epoch=None, max_start_epoch=6, expansion_end=0),
    ("mnist10k", 10): dict(syn_steps=30, expert_epochs=2, lr_img=1e3, lr_teacher=0.05, lr_lr=1e-5, batch_syn=50, lr_y=2.0,
                           threshold=1.0, min_start_epoch=0, current_max_start_epoch=6, max_start_epoch=10, expansion_end=300),
}
DATM_FALLBACK: dict[str, Any] = dict(lr_y=2.0, threshold=1.0, min_start_epoch=0, current_max_start_epoch=None, expansion_end=0)


def datm_defaults(dataset: str, ipc: int) -> dict[str, Any]:
    """DATM's config for (dataset, ipc), else MTT's row plus DATM's generic options."""
    key = (base_name(dataset).lower(), int(ipc))
    if key in DATM_TABLE:
        return dict(DATM_TABLE[key])
    return {**mtt_defaults(dataset, ipc), **DATM_FALLBACK}
