"""Expert trajectory buffers: record experts once (MTT, FTD/GSAM, smooth/AST), read any (expert, epoch) lazily."""
from dd.buffers.config import EXPERT_KINDS, PRESETS, BufferConfig, preset
from dd.buffers.recorder import record_buffer, train_expert
from dd.buffers.steps import expert_step, gradient_penalty, gsam_direction, gsam_perturbation, sgd_step
from dd.buffers.store import TrajectoryStore

__all__ = ["EXPERT_KINDS", "PRESETS", "BufferConfig", "TrajectoryStore", "expert_step", "gradient_penalty",
           "gsam_direction", "gsam_perturbation", "preset", "record_buffer", "sgd_step", "train_expert"]
