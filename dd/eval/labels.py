"""Stored soft labels (`ddtk relabel`): each epoch's views and the teacher's top-k logits, replayed exactly later.

A label directory holds `manifest.json` (format, the set's fingerprint, the teacher(s), the view options,
epochs, top-k, seed, versions, and every epoch file's sha256 and size) and one safetensors file per epoch
with the view parameters (`dd.eval.views.EpochViews`) plus `values` (n, k) float16 and `indices` (n, k) int16.
Training on it needs no teacher and no patched DataLoader: `StoredLabels.epoch(images, e)` is a plain
`torch.utils.data.Dataset` of batches (use `DataLoader(ds, batch_size=None)`). Epoch files are written
atomically, so an interrupted relabel resumes after its last complete epoch.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from dd.eval.protocol import Protocol
from dd.eval.views import EpochViews, apply_views, draw_views, epoch_generator
from dd.lock import output_lock
from dd.utils import (atomic_write_bytes, atomic_write_json, relative_paths, safetensors_bytes, sha256_bytes, sha256_file,
                      to_jsonable, versions)

FORMAT = "dd.labels/1"
MANIFEST = "manifest.json"
VIEW_OPTIONS = ("batch_size", "crop_scale", "mix", "mix_alpha", "teacher_bn")
FILL = -1e9  # logit given to classes outside the stored top-k (probability 0 after the softmax)


def set_fingerprint(images: torch.Tensor) -> str:
    """sha256 of the image tensor's bytes: which set a label directory belongs to."""
    import hashlib

    t = images.detach().cpu().float().contiguous()
    return hashlib.sha256(str(tuple(t.shape)).encode() + t.numpy().tobytes()).hexdigest()


def view_options(protocol: Protocol) -> dict:
    return to_jsonable({k: getattr(protocol, k) for k in VIEW_OPTIONS})


def teacher_forward(teacher: torch.nn.Module, protocol: Protocol) -> torch.nn.Module:
    """The teacher as the protocol runs it: eval mode (running BN statistics) or a train-mode copy (batch statistics)."""
    if protocol.teacher_bn == "train":
        return copy.deepcopy(teacher).train()
    return teacher.eval()


def relabel(images: torch.Tensor, teacher: torch.nn.Module, protocol: Protocol, epochs: int, out: str | Path, *,
            seed: int = 0, topk: int = 10, flip: bool = True, teachers: Optional[list] = None, device="cpu",
            progress: bool = True) -> Path:
    """Writes (or resumes) `epochs` epochs of stored labels for `images` under `protocol`'s views into `out`.

    `out` is locked while the labels are written (dd.lock): a second writer is refused, a killed one's lock is
    taken over and its complete epochs are kept.
    """
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    if isinstance(topk, bool) or int(topk) < 1:
        raise ValueError(f"--topk must be >= 1 (logits kept per view), got {topk}")
    if not protocol.crop:
        raise ValueError("stored labels replay crop views: use the teacher protocol (crop=True)")
    with output_lock(out):
        return _write_labels(images, teacher, protocol, epochs, Path(out), seed, topk, flip, teachers, device, progress)


def _write_labels(images: torch.Tensor, teacher: torch.nn.Module, protocol: Protocol, epochs: int, out: Path,
                  seed: int, topk: int, flip: bool, teachers: Optional[list], device, progress: bool) -> Path:
    """relabel's work once `out` is locked: check a manifest already there, then write each missing epoch."""
    n, num_classes = len(images), None
    dev = torch.device(device)
    model = teacher_forward(teacher.to(dev), protocol)
    with torch.no_grad():
        num_classes = int(model(images[:2].to(dev)).shape[1])
    k = min(int(topk), num_classes)
    manifest = {"format": FORMAT, "set_sha256": set_fingerprint(images), "num_images": n,
                "image_shape": list(images.shape[1:]), "num_classes": num_classes, "epochs": epochs, "topk": k,
                "seed": seed, "flip": bool(flip), "views": view_options(protocol),
                # teacher records name paths relative to the label directory, like every file dd writes for a user
                "teachers": relative_paths(to_jsonable(teachers or []), out),
                "files": [], "complete": False, "versions": versions()}
    old = _read_manifest(out) if (out / MANIFEST).exists() else None
    if old is not None:
        same = {key: old.get(key) for key in ("set_sha256", "epochs", "topk", "seed", "flip", "views", "teachers")}
        want = {key: to_jsonable(manifest[key]) for key in same}
        diff = [f"{key}: stored {same[key]!r} vs now {want[key]!r}" for key in same if same[key] != want[key]]
        if diff:
            raise ValueError(f"'{out}' holds labels made differently ({'; '.join(diff)}); use another --out")
        manifest["files"] = [f for f in old.get("files", []) if (out / f["file"]).exists()
                             and sha256_file(out / f["file"]) == f["sha256"]]
    out.mkdir(parents=True, exist_ok=True)
    done = {f["epoch"] for f in manifest["files"]}
    x_all = images.to(dev)
    bar = tqdm(range(epochs), desc="relabel", disable=not progress, leave=False)
    for e in bar:
        if e in done:
            continue
        views = draw_views(n, tuple(images.shape[-2:]), protocol.batch_size, epoch_generator(seed, e),
                           scale=protocol.crop_scale, flip=flip, mix=protocol.mix, alpha=protocol.mix_alpha)
        values, indices = [], []
        with torch.no_grad():
            for b in range(views.num_batches):
                logits = model(apply_views(x_all, views, b)).float()
                v, i = logits.topk(k, dim=1)
                values.append(v.half().cpu())
                indices.append(i.to(torch.int16).cpu())
        tensors = {**views.tensors(), "values": torch.cat(values), "indices": torch.cat(indices)}
        name = f"epoch_{e:04d}.safetensors"
        atomic_write_bytes(out / name, safetensors_bytes({kk: v.contiguous() for kk, v in tensors.items()},
                                            metadata={"format": FORMAT, "epoch": str(e)}))
        manifest["files"].append({"epoch": e, "file": name, "sha256": sha256_file(out / name),
                                  "bytes": (out / name).stat().st_size})
        manifest["files"].sort(key=lambda f: f["epoch"])
        atomic_write_json(out / MANIFEST, manifest)
    manifest["complete"] = True
    atomic_write_json(out / MANIFEST, manifest)
    return out


def _read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST
    if not mpath.exists():
        raise FileNotFoundError(f"'{path}' has no {MANIFEST}: not a label directory; write one with `ddtk relabel`")
    try:
        m = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"'{mpath}' is not valid JSON ({e}); rerun `ddtk relabel` into a new --out") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"'{mpath}' has format {m.get('format') if isinstance(m, dict) else m!r}, expected {FORMAT!r}")
    return m


class StoredLabels:
    """Reads a label directory; checks it belongs to the set and matches the protocol's view options."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        if not self.manifest.get("complete"):
            raise ValueError(f"labels in '{self.path}' are incomplete; rerun the same `ddtk relabel` command to finish them")
        self.files = {f["epoch"]: f for f in self.manifest["files"]}
        self.epochs = int(self.manifest["epochs"])
        for e in range(self.epochs):  # every epoch file present and intact now, not found bad at that epoch
            entry = self.files.get(e)
            path = self.path / entry["file"] if entry else self.path / f"epoch_{e:04d}.safetensors"
            if entry is None or not path.is_file():
                raise FileNotFoundError(f"stored labels '{path}' (epoch {e}) are missing; rerun the same `ddtk relabel` "
                                        "command to write them again")
            if path.stat().st_size != int(entry["bytes"]) or sha256_file(path) != entry["sha256"]:
                raise ValueError(f"stored labels '{path}' do not match the sha256 in {self.path / MANIFEST}: the file "
                                 "is damaged; delete it and rerun the same `ddtk relabel` command to write it again")

    @property
    def nbytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.files.values())

    def check(self, images: torch.Tensor, protocol: Protocol) -> None:
        if set_fingerprint(images) != self.manifest["set_sha256"]:
            raise ValueError(f"labels in '{self.path}' were made for another set (sha256 differs); relabel this set")
        want = view_options(protocol)
        diff = [f"{k}: labels {self.manifest['views'].get(k)!r} vs protocol {want[k]!r}" for k in want
                if self.manifest["views"].get(k) != want[k]]
        if diff:
            raise ValueError(f"labels in '{self.path}' were made with other view options ({'; '.join(diff)}); "
                             "evaluate with the same options or relabel")

    def epoch(self, images: torch.Tensor, epoch: int) -> "LabeledViews":
        """Training epoch `epoch` replays stored epoch epoch % E (E = stored epochs, as FKD does)."""
        from safetensors.torch import load

        entry = self.files[epoch % self.epochs]
        path = self.path / entry["file"]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise FileNotFoundError(f"stored labels '{path}' cannot be read ({e}); rerun the same `ddtk relabel`") from e
        if sha256_bytes(data) != entry["sha256"]:
            raise ValueError(f"stored labels '{path}' do not match the sha256 in {self.path / MANIFEST}: the file is "
                             "damaged; delete it and rerun the same `ddtk relabel` command to write it again")
        t = load(data)
        views = EpochViews.from_tensors(t, self.manifest["views"]["batch_size"], self.manifest["views"]["mix"])
        return LabeledViews(images, views, t["values"], t["indices"], int(self.manifest["num_classes"]))


class LabeledViews(torch.utils.data.Dataset):
    """Item b: (batch b's augmented images, the teacher's logits for them: top-k kept, the rest at FILL)."""

    def __init__(self, images, views: EpochViews, values, indices, num_classes: int):
        self.images, self.views, self.values, self.indices, self.num_classes = images, views, values, indices, num_classes

    def __len__(self) -> int:
        return self.views.num_batches

    def __getitem__(self, b: int):
        pos = self.views.positions(b)
        logits = torch.full((pos.stop - pos.start, self.num_classes), FILL)
        logits.scatter_(1, self.indices[pos].long(), self.values[pos].float())
        return apply_views(self.images, self.views, b), logits
