"""FTD, flat trajectory distillation (Du et al., CVPR 2023): MTT on flat (GSAM-trained) experts plus an EMA of the images.

The experts come from the buffer recorder's flat/GSAM mode; the distillation itself is MTT's, and the
exponential moving average of the synthetic images (decay 0.999 to 0.9999 in FTD's table) is what gets
validated and saved (evaluated on freshly initialized networks like any set).
"""
from __future__ import annotations

from dataclasses import dataclass

from dd.methods.mtt import MTT, MTTConfig
from dd.methods.registry import METHODS


@dataclass
class FTDConfig(MTTConfig):
    """MTT's options plus the EMA decay of the images (FTD's table: 0.999 for small IPC up to 0.9999)."""

    ema_decay: float = 0.999
    require_flat_buffer: bool = False  # refuse a buffer whose manifest does not say it was recorded with GSAM/SAM


def buffer_is_flat(store) -> bool:
    """True when the buffer's manifest says its experts were trained with GSAM (a positive radius rho)."""
    config = (getattr(store, "manifest", None) or {}).get("config", {})
    return float(config.get("rho") or 0.0) > 0.0


@METHODS.register("ftd", help="flat trajectory distillation: MTT on GSAM experts with an EMA of the images (Du et al. 2023)")
class FTD(MTT):
    name = "ftd"
    Config = FTDConfig

    def __init__(self, config, dataset, ipc, device, generator, inputs=None, group=None):
        if not 0.0 < config.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {config.ema_decay}")
        super().__init__(config, dataset, ipc, device, generator, inputs, group)
        if config.require_flat_buffer and not buffer_is_flat(self.buffer):
            raise ValueError("this buffer was not recorded with GSAM; record flat experts with the buffer recorder's "
                             "GSAM option, or set require_flat_buffer=false")
