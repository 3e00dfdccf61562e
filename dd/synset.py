"""`SyntheticSet`: the distilled images, their labels (hard or soft), an optional learned lr and provenance.

Stored as one safetensors file whose header carries the JSON metadata and a sha256 of every tensor,
written atomically; foreign `.pt` files from the MTT code and DC-BENCH import with weights_only=True.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from dd.utils import atomic_write_bytes, read_safetensors, relative_paths, safetensors_bytes, to_jsonable, versions
from dd.data.base import base_name

FORMAT = "dd.synset/1"


def recorded_paths(meta: dict, directory: Path, how: str) -> dict:
    """A set's metadata with the paths it records (its inputs, the teachers and stored labels its evaluation reopens,
    its run's and report's coreset network) written relative to the set file's `directory` ('relative', when saving:
    no file names the machine's directories) or read back against it ('resolve', when loading; absolute ones, as
    older sets hold, stay). One owner for the set format's paths, so a set moved with its inputs still finds them."""
    from dd.teachers import map_input_paths

    base = os.path.abspath(directory)
    if how == "relative":
        def fn(p: str) -> str:
            return os.path.relpath(p, base) if os.path.isabs(p) else p
    else:
        def fn(p: str) -> str:
            return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
    meta = dict(meta)
    if isinstance(meta.get("inputs"), dict):
        meta["inputs"] = map_input_paths(meta["inputs"], fn)
    evaluation = meta.get("evaluation")
    if isinstance(evaluation, dict):
        evaluation = dict(evaluation)
        if isinstance(evaluation.get("teachers"), list):
            evaluation["teachers"] = map_input_paths({"teachers": evaluation["teachers"]}, fn)["teachers"]
        if isinstance(evaluation.get("labels"), str):
            evaluation["labels"] = fn(evaluation["labels"])
        meta["evaluation"] = evaluation
    run = meta.get("run")
    if isinstance(run, dict) and isinstance(run.get("coreset_net"), str) and ":" not in run["coreset_net"]:
        meta["run"] = {**run, "coreset_net": fn(run["coreset_net"])}  # a path spec (module:callable names code)
    if how == "relative" and isinstance(meta.get("coreset_network"), str):  # a spec, or words naming a network
        meta["coreset_network"] = relative_paths(meta["coreset_network"], base)
    return meta


class SyntheticSetError(ValueError):
    """A synthetic-set file is missing, corrupted or not a dd synthetic set."""


@dataclass
class SyntheticSet:
    """images (N, C, H, W) in the dataset's normalized (and possibly ZCA) space; labels (N,) int64 or (N, K) soft."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    lr: Optional[float] = None
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. ZCA matrices, teacher-logit caches

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.labels.ndim == 2 and self.labels.shape[1] != self.num_classes:
            raise ValueError(f"soft labels have {self.labels.shape[1]} columns but num_classes={self.num_classes}")
        if self.labels.ndim not in (1, 2):
            raise ValueError("labels must be (N,) class ids or (N, K) distributions")

    # -- views ---------------------------------------------------------------------------------
    @property
    def soft(self) -> bool:
        return self.labels.ndim == 2

    @property
    def hard_labels(self) -> torch.Tensor:
        return self.labels.argmax(1) if self.soft else self.labels

    @property
    def ipc(self) -> int:
        counts = torch.bincount(self.hard_labels.cpu(), minlength=self.num_classes)
        return int(counts.max())

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "SyntheticSet":
        return SyntheticSet(self.images.to(device), self.labels.to(device), self.num_classes, self.lr, dict(self.meta),
                            {k: v.to(device) for k, v in self.extra.items()})

    def detach(self) -> "SyntheticSet":
        return SyntheticSet(self.images.detach().clone(), self.labels.detach().clone(), self.num_classes, self.lr,
                            dict(self.meta), {k: v.detach().clone() for k, v in self.extra.items()})

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_real(cls, dataset, ipc: int, generator: torch.Generator | None = None, **meta) -> "SyntheticSet":
        """ipc random real training images per class (the usual initialization and the random baseline)."""
        real = dataset.real("cpu")
        imgs, labels = [], []
        for c in range(dataset.num_classes):
            if real.count(c) < ipc:
                raise ValueError(f"class {c} has only {real.count(c)} training images, fewer than ipc={ipc}")
            imgs.append(real.sample(c, ipc, generator))
            labels.append(torch.full((ipc,), c, dtype=torch.long))
        return cls(torch.cat(imgs), torch.cat(labels), dataset.num_classes,
                   meta=dataset_meta(dataset, ipc=ipc, init="real", **meta), extra=dataset_extra(dataset))

    @classmethod
    def from_noise(cls, dataset, ipc: int, generator: torch.Generator | None = None, **meta) -> "SyntheticSet":
        """ipc standard-normal images per class (noise initialization in the normalized space)."""
        n = ipc * dataset.num_classes
        imgs = torch.randn(n, dataset.channels, *dataset.image_size, generator=generator)
        labels = torch.arange(dataset.num_classes).repeat_interleave(ipc)
        return cls(imgs, labels, dataset.num_classes, meta=dataset_meta(dataset, ipc=ipc, init="noise", **meta),
                   extra=dataset_extra(dataset))

    # -- persistence ---------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"images": self.images, "labels": self.labels}
        if self.lr is not None:
            out["lr"] = torch.tensor([float(self.lr)], dtype=torch.float64)
        for k, v in self.extra.items():
            out[f"extra.{k}"] = v
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def save(self, path: str | os.PathLike) -> Path:
        """Writes `path` (.safetensors) atomically: tensors + JSON metadata + per-tensor sha256."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_suffix(path.suffix + ".safetensors") if path.suffix else path.with_suffix(".safetensors")
        tensors = self.tensors()
        header = {
            "format": FORMAT,
            "num_classes": str(self.num_classes),
            "meta": json.dumps(to_jsonable(recorded_paths(self.meta, path.parent, "relative")), sort_keys=True),
            "sha256": json.dumps({k: _digest(v) for k, v in tensors.items()}, sort_keys=True),
        }
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata=header))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> "SyntheticSet":
        """Loads and verifies a file written by `save`; corrupted or foreign files raise SyntheticSetError."""
        path = Path(path)
        if not path.exists():
            raise SyntheticSetError(f"no synthetic set at '{path}'")
        if path.suffix == ".pt":
            return import_pt(path, device=device)
        try:
            header, tensors = read_safetensors(path)
        except Exception as e:
            raise _unreadable(path, e) from e
        _check_format(path, header)
        expected = json.loads(header["sha256"])
        for k, v in tensors.items():
            if expected.get(k) != _digest(v):
                raise SyntheticSetError(f"'{path}' is corrupted: tensor '{k}' does not match its recorded sha256; "
                                        "re-create the set or restore it from a copy")
        if set(expected) != set(tensors):
            raise SyntheticSetError(f"'{path}' is corrupted: tensors {sorted(set(expected) ^ set(tensors))} missing or extra")
        meta = recorded_paths(json.loads(header["meta"]), path.parent, "resolve")
        return cls.from_tensors(tensors, int(header["num_classes"]), meta).to(device)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], num_classes: int, meta: dict[str, Any]) -> "SyntheticSet":
        """The inverse of `tensors()`: images, labels, optional lr and `extra.*` entries."""
        lr = float(tensors["lr"].item()) if "lr" in tensors else None
        extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        return cls(tensors["images"], tensors["labels"], num_classes, lr, meta, extra)

    # -- pictures ------------------------------------------------------------------------------
    def display_images(self, max_per_class: int | None = None) -> tuple[torch.Tensor, int]:
        """Images mapped back to [0, 1] pixel space (un-ZCA, un-normalize), ordered class by class."""
        x = self.images.detach().float().cpu()
        if "zca.transform_inv" in self.extra:
            from dd.data.zca import ZCA

            x = ZCA.from_tensors({k: v.cpu() for k, v in self.extra.items()}).inverse(x)
        norm = self.meta.get("normalization") or {}
        if norm.get("mean") is not None:
            m = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
            s = torch.tensor(norm["std"]).view(1, -1, 1, 1)
            x = x * s + m
        labels = self.hard_labels.cpu()
        per = min(max_per_class, self.ipc) if max_per_class else self.ipc
        rows = []
        for c in range(self.num_classes):
            idx = torch.nonzero(labels == c).flatten()[:per]
            row = x[idx]
            if len(row) < per:
                row = torch.cat([row, torch.ones(per - len(row), *x.shape[1:])])
            rows.append(row)
        return torch.cat(rows).clamp(0, 1), per

    def save_grid(self, path: str | os.PathLike, max_per_class: int | None = 10) -> Path:
        """A PNG grid, one row per class, in pixel space; written atomically."""
        import io

        from torchvision.utils import save_image

        imgs, per = self.display_images(max_per_class)
        buf = io.BytesIO()
        scale = max(1, 64 // imgs.shape[-1])
        if scale > 1:
            imgs = torch.nn.functional.interpolate(imgs, scale_factor=scale, mode="nearest")
        save_image(imgs, buf, nrow=per, padding=2, pad_value=1.0, format="png")
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    def summary(self) -> dict[str, Any]:
        return {
            "images": list(self.images.shape), "num_classes": self.num_classes, "ipc": self.ipc,
            "labels": "soft" if self.soft else "hard", "lr": self.lr,
            "dataset": self.meta.get("dataset"), "method": self.meta.get("method"), "seed": self.meta.get("seed"),
            "pixel_range": [float(self.images.min()), float(self.images.max())],
            **{k: self.meta[k] for k in ("inputs", "evaluation", "committee") if self.meta.get(k)},
        }


def read_header(path: str | os.PathLike) -> Optional[dict]:
    """A set file's safetensors header (its JSON metadata and tensor digests) without reading the tensors; None when
    there is no readable file."""
    from dd.utils import safetensors_header

    return safetensors_header(path) if Path(path).is_file() else None


def read_meta(path: str | os.PathLike) -> dict:
    """A set file's metadata (what `load(path).meta` holds) without reading its tensors, for plans made before any
    data is read; refused as `load` refuses it. Only for .safetensors sets (a .pt import has no header)."""
    path = Path(path)
    if not path.exists():
        raise SyntheticSetError(f"no synthetic set at '{path}'")
    try:
        header = read_safetensors(path, tensors=False)[0]
    except Exception as e:
        raise _unreadable(path, e) from e
    _check_format(path, header)
    return recorded_paths(json.loads(header["meta"]), path.parent, "resolve")


def _unreadable(path: Path, e: Exception) -> SyntheticSetError:
    return SyntheticSetError(f"'{path}' is not a readable safetensors file ({e}); it may be truncated or corrupted: "
                             "re-create it or restore it from a copy")


def _check_format(path: Path, header: dict) -> None:
    if header.get("format") != FORMAT:
        raise SyntheticSetError(f"'{path}' is a safetensors file but not a dd synthetic set (format "
                                f"{header.get('format')!r}, expected {FORMAT!r})")


def content_digest(path: str | os.PathLike) -> Optional[str]:
    """sha256 of a set file's recorded tensor digests and metadata: what it holds, changed whenever its content is
    (None without a readable set)."""
    header = read_header(path)
    if not header or "sha256" not in header:
        return None
    return hashlib.sha256((header["sha256"] + header.get("meta", "")).encode()).hexdigest()


def _digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(str((str(t.dtype), tuple(t.shape))).encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def dataset_meta(dataset, **more) -> dict[str, Any]:
    """The provenance every synthetic set carries about the data it came from."""
    meta = {
        "dataset": base_name(dataset.name),
        "image_size": list(dataset.image_size),
        "channels": dataset.channels,
        "normalization": {"mean": list(dataset.mean), "std": list(dataset.std)},
        "zca": dataset.zca is not None,
        "versions": versions(),
    }
    meta.update(more)
    return meta


def dataset_extra(dataset) -> dict[str, torch.Tensor]:
    """Tensors a set needs to be displayed in pixel space (the dataset's ZCA, when it has one)."""
    return dataset.zca.tensors() if dataset.zca is not None else {}


def import_pt(images_path: str | os.PathLike, labels_path: str | os.PathLike | None = None,
              lr_path: str | os.PathLike | None = None, device="cpu", **meta) -> SyntheticSet:
    """Imports published `.pt` sets with torch.load(weights_only=True).

    Accepts the MTT code's `images_best.pt` (+ `labels_best.pt`, `lr_best.pt` / `syn_lr.pt` found beside it)
    and DC-BENCH's `res_*.pt` (a dict whose 'data' holds [images, labels] pairs; the first is taken).
    """
    images_path = Path(images_path)
    obj = _load_pt(images_path)
    lr = None
    if isinstance(obj, dict) and "data" in obj:
        images, labels = obj["data"][0][0], obj["data"][0][1]
    elif isinstance(obj, torch.Tensor):
        images = obj
        if labels_path is None:
            cand = images_path.with_name(images_path.name.replace("images", "labels"))
            labels_path = cand if cand != images_path and cand.exists() else None
        if labels_path is None:
            raise SyntheticSetError(f"'{images_path}' holds only images; pass the labels file (e.g. labels_best.pt)")
        labels = _load_pt(Path(labels_path))
        if lr_path is None:
            for name in ("lr_best.pt", "syn_lr.pt", images_path.name.replace("images", "lr")):
                cand = images_path.with_name(name)
                if cand.exists() and cand != images_path:
                    lr_path = cand
                    break
    else:
        raise SyntheticSetError(f"'{images_path}' is neither an image tensor nor a DC-BENCH dict with 'data'")
    if lr_path is not None:
        lr = float(torch.as_tensor(_load_pt(Path(lr_path))).reshape(-1)[0])
    labels = torch.as_tensor(labels)
    num_classes = int(labels.shape[1]) if labels.ndim == 2 else int(labels.max()) + 1
    if labels.ndim == 1:
        labels = labels.long()
    meta = {"imported_from": str(images_path), "method": meta.pop("method", "imported"), **meta}
    return SyntheticSet(images.float().to(device), labels.to(device), num_classes, lr, meta)


def _load_pt(path: Path):
    if not path.exists():
        raise SyntheticSetError(f"no file at '{path}'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SyntheticSetError(f"cannot import '{path}' safely (weights_only=True): {e}") from e
