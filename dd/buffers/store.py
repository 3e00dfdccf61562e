"""The on-disk buffer: manifest.json plus one safetensors shard per expert, read lazily (memory-mapped).

Shard keys are `p.EEEE.<param>` and `b.EEEE.<buffer>` for epoch EEEE; a manifest lists every shard's
sha256, so a corrupt, missing or foreign shard is refused when a method opens the buffer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dd.models.layout import ParamLayout
from dd.utils import sha256_bytes, sha256_file

FORMAT = "dd-trajectory-buffer/1"
MANIFEST = "manifest.json"


def shard_name(expert: int) -> str:
    return f"expert_{expert:05d}.safetensors"


def param_key(epoch: int, name: str) -> str:
    return f"p.{epoch:04d}.{name}"


def buffer_key(epoch: int, name: str) -> str:
    return f"b.{epoch:04d}.{name}"


def recorded_status(path: str | Path, config) -> tuple[str, Any]:
    """How the buffer directory `path` stands against the BufferConfig `config`, from its manifest alone: ('absent',
    None) when nothing is recorded, ('other', [differences]) when it was recorded with other settings, else
    ('complete', config sha256) or ('partial', (experts listed, experts planned))."""
    from dd.buffers.recorder import config_sha256
    from dd.utils import dict_diff, to_jsonable

    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return "absent", None
    have = json.loads(manifest.read_text())
    if have.get("config_sha256") != config_sha256(config):
        return "other", dict_diff(have.get("config", {}), to_jsonable(config.to_dict()))
    if have.get("complete"):
        return "complete", have["config_sha256"]
    return "partial", (len(have.get("experts", [])), have.get("num_experts"))


def read_manifest(path: str | Path) -> tuple[dict, bytes]:
    """(manifest, raw bytes) of a buffer directory; clear errors for a missing or unreadable one."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"buffer directory '{path}' does not exist; record one with `ddtk buffer --out {path} ...`")
    mpath = path / MANIFEST
    if not mpath.exists():
        raise FileNotFoundError(f"'{path}' has no {MANIFEST}, so it is not a ddtk buffer; record one with `ddtk buffer --out {path} ...`")
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"'{mpath}' is not valid JSON ({e}); re-record the buffer") from e
    if manifest.get("format") != FORMAT:
        raise ValueError(f"'{mpath}' has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest, raw


class TrajectoryStore:
    """Random access to expert k's parameters at epoch e, reading only the tensors asked for.

    verify: 'open' checks every shard's sha256 when the store is opened (default), 'lazy' checks a
    shard the first time it is read, 'none' trusts the files.
    """

    def __init__(self, path: str | Path, verify: str = "open"):
        if verify not in ("open", "lazy", "none"):
            raise ValueError(f"verify must be 'open', 'lazy' or 'none', got {verify!r}")
        self.path = Path(path)
        self.manifest, raw = read_manifest(self.path)
        self.manifest_sha256 = sha256_bytes(raw)
        m = self.manifest
        if not m.get("complete"):
            done = len(m.get("experts", []))
            raise ValueError(f"buffer '{self.path}' is incomplete ({done} of {m['num_experts']} experts listed); "
                             "rerun the same `ddtk buffer` command to finish it")
        self.num_experts: int = int(m["num_experts"])
        self.num_epochs: int = int(m["num_epochs"])
        self.param_names: list[str] = list(m["param_names"])
        self.param_shapes: list[tuple[int, ...]] = [tuple(s) for s in m["param_shapes"]]
        self.buffer_names: list[str] = list(m["buffer_names"])
        self.model_name: str = m["model"]["name"]
        self.model_options: dict = dict(m["model"]["options"])
        self.dataset_name: str = m["dataset"]["name"]
        self.storage_dtype: str = m["storage_dtype"]
        self.layout = ParamLayout(tuple(self.param_names), tuple(self.param_shapes))
        self.num_params = self.layout.size
        self._experts = {int(e["index"]): e for e in m["experts"]}
        missing = [k for k in range(self.num_experts) if k not in self._experts]
        if missing:
            raise ValueError(f"manifest of '{self.path}' lists no shard for experts {missing}; re-record the buffer")
        self._verify = verify
        self._verified: set[int] = set()
        self._handles: dict[int, Any] = {}
        if verify == "open":
            for k in range(self.num_experts):
                self._check(k)

    # ---- identity ---------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return self.manifest["config"]

    def check_compatible(self, dataset: str | None = None, model: str | None = None) -> None:
        """Raises ValueError naming both sides when the buffer was recorded for another dataset or model."""
        if dataset is not None and dataset.lower() != self.dataset_name.lower():
            raise ValueError(f"buffer '{self.path}' was recorded on dataset '{self.dataset_name}' but this run uses "
                             f"dataset '{dataset}'; record a buffer for '{dataset}' with `ddtk buffer --dataset {dataset}`")
        if model is not None and model.lower() != self.model_name.lower():
            raise ValueError(f"buffer '{self.path}' was recorded with model '{self.model_name}' but this run uses "
                             f"model '{model}'; use --model {self.model_name} or record a buffer for '{model}'")

    def final_accuracy(self, expert: int) -> float:
        return float(self._entry(expert)["final_test_accuracy"])

    def shard_path(self, expert: int) -> Path:
        return self.path / self._entry(expert)["file"]

    # ---- reading ----------------------------------------------------------------------------------
    def flat(self, expert: int, epoch: int, device="cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All parameters at (expert, epoch), each flattened, concatenated in `param_names` order."""
        f, e = self._open(expert), self._epoch(epoch)
        parts = [f.get_tensor(param_key(e, n)).reshape(-1) for n in self.param_names]
        return torch.cat(parts).to(device=device, dtype=dtype)

    def params(self, expert: int, epoch: int, device="cpu", dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
        """name -> parameter tensor at (expert, epoch); dtype None keeps the storage dtype."""
        f, e = self._open(expert), self._epoch(epoch)
        return {n: f.get_tensor(param_key(e, n)).to(device=device, dtype=dtype) for n in self.param_names}

    def buffers(self, expert: int, epoch: int, device="cpu") -> dict[str, torch.Tensor]:
        """name -> normalization buffer (e.g. BatchNorm running statistics) at (expert, epoch); floats as float32."""
        f, e = self._open(expert), self._epoch(epoch)
        out = {}
        for n in self.buffer_names:
            t = f.get_tensor(buffer_key(e, n))
            out[n] = t.to(device=device, dtype=torch.float32) if t.is_floating_point() else t.to(device)
        return out

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Splits a flat vector (as from `flat`) back into name -> tensor views."""
        return self.layout.unflatten(flat)

    def build_model(self, device="cpu") -> nn.Module:
        """A fresh (randomly initialized) model of the recorded architecture."""
        from dd.models import build_model

        m = self.manifest["model"]
        return build_model(self.model_name, m["channels"], m["num_classes"], tuple(m["image_size"]), **self.model_options).to(device)

    def module(self, expert: int, epoch: int = -1, device="cpu") -> nn.Module:
        """The recorded network at (expert, epoch) with its normalization buffers, in eval mode (e.g. a teacher)."""
        model = self.build_model("cpu")
        state = {**self.params(expert, epoch), **self.buffers(expert, epoch)}
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()

    # ---- internals --------------------------------------------------------------------------------
    def _entry(self, expert: int) -> dict:
        if not isinstance(expert, int) or not 0 <= expert < self.num_experts:
            raise IndexError(f"expert {expert} out of range; buffer '{self.path}' has {self.num_experts} experts")
        return self._experts[expert]

    def _epoch(self, epoch: int) -> int:
        if not -self.num_epochs <= epoch < self.num_epochs:
            raise IndexError(f"epoch {epoch} out of range; buffer '{self.path}' stores epochs 0..{self.num_epochs - 1}")
        return epoch % self.num_epochs

    def _check(self, expert: int) -> None:
        if expert in self._verified:
            return
        entry = self._entry(expert)
        p = self.path / entry["file"]
        if not p.exists():
            raise FileNotFoundError(f"buffer '{self.path}' is missing shard '{p}' (expert {expert}); "
                                    "rerun the same `ddtk buffer` command to re-record it")
        if self._verify != "none":
            got = sha256_file(p)
            if got != entry["sha256"]:
                raise ValueError(f"shard '{p}' (expert {expert}) is corrupt: sha256 {got[:16]}... does not match the "
                                 f"manifest's {entry['sha256'][:16]}...; delete it and rerun `ddtk buffer` to re-record it")
        self._verified.add(expert)

    def _open(self, expert: int):
        if expert not in self._handles:
            from safetensors import safe_open

            self._check(expert)
            self._handles[expert] = safe_open(str(self.shard_path(expert)), framework="pt", device="cpu")
        return self._handles[expert]

    def __len__(self) -> int:
        return self.num_experts

    def __repr__(self) -> str:
        return (f"TrajectoryStore('{self.path}', {self.dataset_name}/{self.model_name}, {self.num_experts} experts x "
                f"{self.num_epochs} snapshots, {self.num_params} params, {self.storage_dtype})")
