"""`ddtk export`: write a synthetic set in a format other tools read (plain .pt tensors, an ImageFolder tree of PNGs,
or DD-Ranking's evaluator input), with an export.json recording where it came from.

* pt: images.pt, labels.pt (+ lr.pt) as torch.save'd plain tensors in the set's normalized (and, for ZCA sets,
  whitened) space, as the MTT code's images_best.pt; `ddtk eval OUT/images.pt` and `SyntheticSet.load` read them back.
* imagefolder: OUT/<class>/<i>.png, 8-bit, in pixel space (normalization and ZCA undone as `ddtk show` does); class and
  file names are zero-padded so that sorting them (torchvision's ImageFolder does) gives the class index and order.
* ddranking: what DD-Ranking's evaluators take in `compute_metrics(image_tensor=..., hard_labels=... | soft_labels=...,
  syn_lr=...)`: images ordered class by class with the same count per class (its default hard labels are IPC copies
  of each class id in class order), labels, the learned lr; README.txt says what each file is.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

FORMATS = ("pt", "imagefolder", "ddranking")


def add_parser(sub, name):
    p = sub.add_parser(name, help="write a synthetic set as .pt tensors, PNG folders or DD-Ranking input",
                       description="Writes SET into the empty (or new) directory --out in the chosen format, with an "
                                   "export.json naming the source set, its sha256, method, dataset and versions.")
    p.add_argument("synset", help="a .safetensors synthetic set (or an MTT images_best.pt)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="pt (images/labels/lr .pt), imagefolder (OUT/<class>/<i>.png) or ddranking")
    p.add_argument("--out", required=True, help="output directory (must be empty or not exist)")
    return p


# ---- writing files -------------------------------------------------------------------------------

def _tensor_bytes(t) -> bytes:
    """torch.save of a plain, contiguous CPU copy (a view would drag its whole storage into the file)."""
    import torch

    buf = io.BytesIO()
    torch.save(t.detach().cpu().contiguous().clone(), buf)
    return buf.getvalue()


def _write_tensors(out: Path, tensors: dict) -> dict:
    """Each tensor to OUT/<name>, atomically; returns {name: {'shape', 'dtype', 'sha256'}} for export.json."""
    from dd.utils import atomic_write_bytes, sha256_bytes

    files = {}
    for name, t in tensors.items():
        data = _tensor_bytes(t)
        atomic_write_bytes(out / name, data)
        files[name] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "sha256": sha256_bytes(data)}
    return files


def prepare_out(out: str | Path) -> Path:
    """OUT as a new or empty directory; a non-empty one is refused so no stale file from an earlier export (an extra
    PNG, an old lr.pt) ends up mixed with this one."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"'{out}' exists and is not an empty directory; export into a new directory (or remove it "
                         "first) so no file from an earlier export is mixed in")
    out.mkdir(parents=True, exist_ok=True)
    return out


def source_record(synset, path: str | Path) -> dict:
    """What export.json says about the set it came from."""
    from dd.utils import sha256_file

    path = Path(path)
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "method": synset.meta.get("method"),
            "dataset": synset.meta.get("dataset"), "num_classes": synset.num_classes, "ipc": synset.ipc,
            "images": list(synset.images.shape), "labels": "soft" if synset.soft else "hard", "lr": synset.lr,
            "zca": bool(synset.meta.get("zca")), "normalization": synset.meta.get("normalization"),
            "seed": synset.meta.get("seed")}


def write_record(out: Path, fmt: str, synset, source: str | Path, files, notes: list[str]) -> Path:
    """OUT/export.json (atomic): format, source set, the files written and versions."""
    from dd.utils import atomic_write_json, relative_paths, versions

    record = {"format": fmt, "source": source_record(synset, source), "files": files, "notes": notes,
              "versions": versions()}
    atomic_write_json(out / "export.json", relative_paths(record, out))  # the source named relative to the export
    return out / "export.json"


def _space(synset) -> str:
    return "ZCA-whitened (dd's ZCA of the normalized data)" if synset.meta.get("zca") else "normalized"


# ---- the formats ---------------------------------------------------------------------------------

def export_pt(synset, out: Path) -> tuple[dict, list[str]]:
    """images.pt (float32), labels.pt (int64 ids or float distributions) and lr.pt (float64, when learned), unchanged
    and in the set's order, so `SyntheticSet.load(OUT/images.pt)` gives back exactly the same tensors."""
    import torch

    tensors = {"images.pt": synset.images.float(), "labels.pt": synset.labels}
    if synset.lr is not None:
        tensors["lr.pt"] = torch.tensor(float(synset.lr), dtype=torch.float64)
    notes = [f"tensors in the set's {_space(synset)} space, as the MTT code's images_best.pt",
             f"ddtk eval {out / 'images.pt'} --dataset {synset.meta.get('dataset') or 'NAME'}"
             + (" --zca" if synset.meta.get("zca") else "") + " evaluates them (a .pt file records no dataset)"]
    return _write_tensors(out, tensors), notes


def _width(n: int) -> int:
    """Digits to zero-pad indices 0..n-1 so that string order is numeric order."""
    return len(str(max(n - 1, 0)))


def pixel_images_by_class(synset) -> list:
    """For each class, its images in pixel space [0, 1] (set order within the class), from `display_images`, the
    same un-ZCA / un-normalize / clamp that `ddtk show` draws."""
    import torch

    imgs, per = synset.display_images()
    counts = torch.bincount(synset.hard_labels.cpu(), minlength=synset.num_classes).tolist()
    return [imgs[c * per: c * per + n] for c, n in enumerate(counts)]


def _png_bytes(img) -> bytes:
    """One (C, H, W) image in [0, 1] as an 8-bit PNG (grayscale for 1 channel, RGB for 3)."""
    import numpy as np
    import torch
    from PIL import Image

    c = img.shape[0]
    if c not in (1, 3):
        raise ValueError(f"PNG export handles 1- or 3-channel images, this set has {c} channels; use --format pt")
    arr = (img * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if c == 1 else arr))  # uint8 (H, W): L; (H, W, 3): RGB
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def export_imagefolder(synset, out: Path) -> tuple[dict, list[str]]:
    """OUT/<class index>/<i>.png for every image (by hard label), 8-bit pixel space, each file written atomically."""
    from dd.utils import atomic_write_bytes

    if not (synset.meta.get("normalization") or {}).get("mean"):
        raise ValueError("the set records no normalization (e.g. it was imported from a .pt file), so its pixels "
                         "cannot be recovered; export the .safetensors set dd wrote instead")
    groups = pixel_images_by_class(synset)
    empty = [c for c, g in enumerate(groups) if len(g) == 0]
    if empty:
        raise ValueError(f"classes {empty} have no image; an ImageFolder tree cannot hold an empty class (the folders "
                         "after it would be renumbered when read back); use --format pt")
    cw = _width(synset.num_classes)
    for c, group in enumerate(groups):
        iw = _width(len(group))
        for i, img in enumerate(group):
            atomic_write_bytes(out / f"{c:0{cw}d}" / f"{i:0{iw}d}.png", _png_bytes(img))
    notes = ["8-bit PNGs in pixel space: normalization" + (" and ZCA" if synset.meta.get("zca") else "")
             + " undone and values clamped to [0, 1], as `ddtk show` draws them",
             "folder names are class indices, zero-padded so that sorted names (torchvision's ImageFolder) give the "
             "class index"]
    if synset.soft:
        notes.append("the set has soft labels; folders hold each image under its argmax class and the distributions "
                     "are not kept: use --format pt or ddranking for them")
    files = {"layout": f"<class index, {cw} digit(s)>/<index within the class>.png", "count": len(synset),
             "per_class": [len(g) for g in groups]}
    return files, notes


DDRANKING_README = """\
DD-Ranking input written by `ddtk export --format ddranking` (see export.json for the source set).

images.pt  float32 tensor (N x IPC, C, H, W), ordered class by class with {ipc} images per class, in the set's
           {space} space: dd normalizes {dataset} with mean {mean}, std {std}.
           DD-Ranking trains on the tensor as given and tests on its own copy of the dataset, normalized with its
           own per-dataset mean/std (and, with use_zca, whitened with a ZCA fitted on un-normalized pixels); check
           that these match before comparing numbers, or export --format imagefolder and pass image_path=.
labels.pt  {labels}
{lr}
Load and score, e.g. with a hard-label evaluator:
    images = torch.load("images.pt", weights_only=True); labels = torch.load("labels.pt", weights_only=True)
    evaluator.compute_metrics(image_tensor=images, {label_arg}=labels{lr_arg})
Its evaluators report accuracies in percent and, in 0.2.0, feed them to a normalization meant for fractions;
`ddtk eval SET --scores` computes HLR/IOR/LRS/ARS on fractions.
"""


def export_ddranking(synset, out: Path) -> tuple[dict, list[str]]:
    """images.pt / labels.pt (/ lr.pt) as DD-Ranking's compute_metrics takes them, plus README.txt."""
    import torch

    from dd.utils import atomic_write_text

    hard = synset.hard_labels.cpu()
    counts = torch.bincount(hard, minlength=synset.num_classes)
    if int(counts.min()) != int(counts.max()):
        raise ValueError(f"DD-Ranking expects the same number of images per class (it builds hard labels as IPC copies "
                         f"of each class id in class order); this set has {counts.tolist()}; use --format pt")
    order = torch.argsort(hard, stable=True)  # class by class, set order within a class
    images = synset.images.detach().cpu().float()[order]
    if synset.soft:
        # DD-Ranking's soft labels are a teacher's outputs (logits); log-probabilities are logits whose softmax is the
        # set's distribution (clamped away from log 0)
        labels = synset.labels.detach().cpu().float()[order].clamp_min(1e-8).log()
        labels_text = ("float32 (N x IPC, K) logits: the log of the set's label distributions (softmax gives them\n"
                       "           back, at temperature 1); pass as soft_labels= (soft_label_mode 'S')")
        label_arg = "soft_labels"
    else:
        labels = hard[order]
        labels_text = ("int64 (N x IPC,) class ids, equal to DD-Ranking's default hard labels; a teacher-protocol\n"
                       "           set (SRe2L/CDA) is scored with DD-Ranking's own teacher (soft_label_mode 'M')")
        label_arg = "hard_labels"
    tensors = {"images.pt": images, "labels.pt": labels}
    if synset.lr is not None:
        tensors["lr.pt"] = torch.tensor(float(synset.lr), dtype=torch.float64)
    norm = synset.meta.get("normalization") or {}
    readme = DDRANKING_README.format(
        ipc=int(counts.max()), space=_space(synset), dataset=synset.meta.get("dataset") or "the dataset",
        mean=norm.get("mean"), std=norm.get("std"), labels=labels_text,
        lr=("lr.pt      float64 scalar: the set's learned lr; pass as syn_lr= (else DD-Ranking searches a grid)\n"
            if synset.lr is not None else ""),
        label_arg=label_arg, lr_arg=", syn_lr=torch.load(\"lr.pt\", weights_only=True)" if synset.lr is not None else "")
    files = _write_tensors(out, tensors)
    atomic_write_text(out / "README.txt", readme)
    notes = ["images sorted class by class (stable), as DD-Ranking's (N x IPC, C, H, W) input",
             f"tensors in the set's {_space(synset)} space"]
    return files, notes


EXPORTERS = {"pt": export_pt, "imagefolder": export_imagefolder, "ddranking": export_ddranking}


def export(synset, source: str | Path, fmt: str, out: str | Path) -> Path:
    """Writes `synset` (loaded from `source`) to the new directory `out` in format `fmt`; returns export.json's path."""
    if fmt not in EXPORTERS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    out = prepare_out(out)
    files, notes = EXPORTERS[fmt](synset, out)
    return write_record(out, fmt, synset, source, files, notes)


def run(args) -> int:
    from dd.synset import SyntheticSet

    synset = SyntheticSet.load(args.synset)
    record = export(synset, args.synset, args.format, args.out)
    info = json.loads(record.read_text())
    print(f"wrote {args.format} export of {len(synset)} images to {args.out} ({record.name} records the source)")
    for note in info["notes"]:
        print(f"  {note}")
    return 0
