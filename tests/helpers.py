"""Artifacts several test modules build the same way: a buffer recorded on `digits` and an untrained teacher file."""
from pathlib import Path

import torch
from safetensors.torch import save_file

from dd.buffers.config import BufferConfig
from dd.buffers.recorder import record_buffer
from dd.models import build_model


def digits_buffer(path: Path, *, model: str = "convnet", width: int = 8, depth: int = 2, experts: int = 2,
                  epochs: int = 4, lr: float = 0.05) -> Path:
    """A `ddtk buffer` directory at `path`: `experts` small networks trained on digits for `epochs` epochs each."""
    cfg = BufferConfig(dataset="digits", model=model, model_options={"width": width, "depth": depth}, experts=experts,
                       epochs=epochs, batch_size=128, lr=lr)
    record_buffer(cfg, path, device="cpu", progress=False, log=lambda s: None)
    return path


def mlp_teacher_file(root: Path, dataset) -> tuple[torch.nn.Module, Path]:
    """(net, ROOT/teacher.safetensors): an untrained mlp for `dataset` built under seed 0, saved as a teacher
    checkpoint whose metadata names its model and dataset."""
    torch.manual_seed(0)
    net = build_model("mlp", dataset.channels, dataset.num_classes, dataset.image_size)
    path = root / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"model": "mlp", "dataset": "digits"})
    return net, path
