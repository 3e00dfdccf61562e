"""Peak memory and images/s of file-backed image trees, and the memory of uint8 in-memory datasets.

Two measurements, every run in a fresh process (peak RSS is the child's own VmHWM, see rss.py):

1. A generated ImageFolder tree of synthetic 224 px JPEGs (written once under --root, outside git) at two sizes,
   N and 2N images, read file-backed (--file-backed-above 0) at --res 224:
   - `ddtk eval SET --baseline random`: the set's test-set pass plus the random-real baseline (trains on sampled
     files, then its own test-set pass);
   - one epoch of `ddtk buffer` (one expert, no DSA), whose last step is a test-set pass;
   - two plain torchvision loops (ImageFolder + Resize/CenterCrop + DataLoader, same workers and batch size) over
     the split each command reads most: `plain` ends in ToTensor + Normalize (the float inputs a network takes, as
     the textbook pipeline makes them), `decode` in PILToTensor (uint8, decoding only; its main process never
     touches the pixels).
   Printed: images decoded, seconds, images/s and its ratio to both loops (target >= 0.8), peak RSS of the main
   process and of the largest worker, and the peak RSS growth from N to 2N (target <= 10%).
   The default model is `bench_data:subsampled_linear` (one linear layer on every 8th pixel), so the numbers measure
   the data path rather than a network's compute; --model mlp (or any name) measures a real network instead.
2. A CIFAR-10 fixture in torchvision's cifar-10-batches-py pickle format (50,000 train + 10,000 test images,
   random pixels), loaded as uint8 (today's loader) and as float32 (the previous loader's arithmetic on the same
   files: the whole split normalized at once); target uint8 / float32 <= 0.35. --reference-tree PATH also loads it
   with the dd checkout at PATH (e.g. the commit before uint8 storage) for the real previous number.

    OMP_NUM_THREADS=1 python benchmarks/bench_data.py [--root /tmp/dd_bench_data] [--classes 10]
        [--train-per-class 500] [--val-per-class 500] [--workers 2] [--repeats 2] [--cifar 50000] [--skip-tree]
        [--reference-tree /path/to/old/checkout]

About 8 minutes on 2 CPU cores with the defaults (N = 10,000 JPEGs, 2N = 20,000; generated once, ~2 minutes and
0.7 GB under --root): big enough that start-up costs do not decide the rate. --train-per-class 100
--val-per-class 100 gives the small trees of bench_data.md in about 4 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TREE_MARKER = ".dd_bench_tree.json"
CIFAR_MARKER = ".dd_bench_cifar.json"


# ---------------------------------------------------------------- the model: a subsampling linear classifier

def subsampled_linear(channels: int, num_classes: int, image_size, **_):
    """One linear layer on every 8th pixel of every 8th row: a network whose compute is negligible next to decoding a
    JPEG, so the benchmark measures the data path (--model mlp or any name measures a real network instead)."""
    from torch import nn

    class SubsampledLinear(nn.Module):
        def __init__(self):
            super().__init__()
            h, w = image_size
            self.fc = nn.Linear(channels * ((h + 7) // 8) * ((w + 7) // 8), num_classes)

        def forward(self, x):
            return self.fc(x[:, :, ::8, ::8].flatten(1))

    return SubsampledLinear()


# ---------------------------------------------------------------- generated data (outside git, written atomically)

def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jpeg(rng, color, size: int) -> bytes:
    """One synthetic photo-like JPEG, `size` px high and size..1.25*size wide: a smooth colour field plus noise."""
    import io

    import numpy as np
    from PIL import Image

    w = int(rng.integers(size, size * 5 // 4 + 1))
    coarse = np.clip(np.asarray(color) + rng.normal(0, 40, size=(6, 8, 3)), 0, 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, size), Image.BILINEAR), dtype=np.float32)
    pixels = np.clip(field + rng.normal(0, 12, size=field.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_tree(root: Path, classes: int, train_per_class: int, val_per_class: int, size: int = 224, seed: int = 0) -> Path:
    """root/{train,val}/class_XX/img_XXXXX.jpg; reused when its marker records the same parameters."""
    import numpy as np

    params = {"classes": classes, "train_per_class": train_per_class, "val_per_class": val_per_class, "size": size,
              "seed": seed, "format": 1}
    marker = root / TREE_MARKER
    if marker.exists() and json.loads(marker.read_text()) == params:
        return root
    rng = np.random.default_rng(seed)
    colors = rng.integers(30, 226, size=(classes, 3))
    for split, k in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class_{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(k):
                _atomic_bytes(folder / f"img_{j:05d}.jpg", _jpeg(rng, colors[c], size))
    _atomic_bytes(marker, json.dumps(params).encode())
    return root


def make_cifar(root: Path, n_train: int, n_test: int = 10000, seed: int = 0) -> Path:
    """root/cifar-10-batches-py in torchvision's format: 5 pickled train batches, test_batch, batches.meta."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    params = {"n_train": n_train, "n_test": n_test, "seed": seed, "format": 1}
    marker = root / CIFAR_MARKER
    if marker.exists() and json.loads(marker.read_text()) == params:
        return root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for name, n in [(f"data_batch_{i + 1}", per[i]) for i in range(5)] + [("test_batch", n_test)]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 b"filenames": [f"img_{k}.png".encode() for k in range(n)]}
        _atomic_bytes(folder / name, pickle.dumps(batch, protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _atomic_bytes(folder / "batches.meta", pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    _atomic_bytes(marker, json.dumps(params).encode())
    return root


def make_set(tree: Path, out: Path, ipc: int, workers: int) -> Path:
    """A synthetic set of `ipc` real images per class of the tree at 224 px (what `ddtk eval` scores)."""
    import torch

    from dd.data import load_dataset
    from dd.synset import SyntheticSet

    ds = load_dataset(f"folder:{tree}", res=224, file_backed_above_mib=0, workers=workers)
    return SyntheticSet.from_real(ds, ipc, torch.Generator().manual_seed(0)).save(out)


# ---------------------------------------------------------------- children (fresh processes)

def child(task: dict) -> dict:
    """One measurement in this fresh process; returns seconds, images decoded and peak RSS (main, largest worker)."""
    import rss

    rss.reset_peak()
    import torch  # noqa: F401

    import dd.data  # noqa: F401  (what loading a dataset imports: the CIFAR runs import nothing more)
    from dd.data.file_images import DECODE_TOTALS

    kind = task["kind"]
    if kind in ("eval", "buffer", "plain"):
        # every import before the clock (torchvision alone takes seconds): the clock times the work, not the imports
        import torchvision.datasets  # noqa: F401
        import torchvision.transforms  # noqa: F401

        import dd.buffers  # noqa: F401
        import dd.eval  # noqa: F401
        import dd.methods  # noqa: F401
        from dd.cli import build_parser, main

        build_parser()  # imports every command module
    t0 = time.perf_counter()
    if kind in ("eval", "buffer"):
        rc = main(task["argv"])
        if rc != 0:
            raise SystemExit(f"{kind} failed with exit status {rc}: {task['argv']}")
        images = DECODE_TOTALS["decoded"]
    elif kind == "plain":
        images = plain_loop(Path(task["folder"]), task["workers"], task["batch"], task["normalize"])
    elif kind == "cifar-uint8":
        from dd.data import load_dataset

        ds = load_dataset("cifar10", root=task["root"])
        images = len(ds.train) + len(ds.test)
    elif kind == "cifar-float32":
        images = previous_cifar_loader(task["root"])
    elif kind == "baseline":
        images = 0
    else:
        raise ValueError(kind)
    seconds = time.perf_counter() - t0
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB, the largest child
    return {"kind": kind, "seconds": seconds, "images": images, "peak_mib": rss.peak_mib(), "worker_peak_mib": workers}


def plain_loop(folder: Path, workers: int, batch: int, normalize: bool) -> int:
    """The textbook loop: torchvision ImageFolder, Resize(224) + CenterCrop(224), then ToTensor + Normalize (the
    float inputs a network takes, made in the workers) or PILToTensor (decoding only, uint8), and a DataLoader."""
    import torch
    from torchvision import datasets, transforms

    from dd.data.folders import IMAGENET_MEAN, IMAGENET_STD

    tail = ([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)] if normalize
            else [transforms.PILToTensor()])
    tf = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224), *tail])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), transform=tf), batch_size=batch,
                                         num_workers=workers, shuffle=False)
    n = 0
    for x, _ in loader:
        n += len(x)
    return n


def previous_cifar_loader(root: str) -> int:
    """What the loader did before uint8 storage, on the same files: both splits normalized to float32 at once
    (dd.data.torchvision_formats._cifar_split + dd.data.base.normalize_uint8, as its _cifar_dataset called them)."""
    from pathlib import Path as P

    from dd.data.base import normalize_uint8
    from dd.data.torchvision_formats import CIFAR10_STATS, _cifar_split, _load_batch

    folder = P(root) / "cifar-10-batches-py"
    x_tr, y_tr = _cifar_split([folder / f"data_batch_{i}" for i in range(1, 6)], "labels", 10, "")
    x_te, y_te = _cifar_split([folder / "test_batch"], "labels", 10, "")
    _load_batch(folder / "batches.meta", "")
    train = normalize_uint8(x_tr, *CIFAR10_STATS, channels_last=False)
    test = normalize_uint8(x_te, *CIFAR10_STATS, channels_last=False)
    return len(train) + len(test)


def run_child(task: dict, pythonpath: Path = REPO) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{pythonpath}"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(task)], env=env,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {task['kind']} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def run_reference_cifar(reference: Path, root: Path) -> dict:
    """Loads the fixture with the dd checkout at `reference` (its own load_dataset) in a fresh process."""
    code = ("import sys, json, time; sys.path.insert(0, %r); import rss; rss.reset_peak(); import torch; "
            "from dd.data import load_dataset; t0 = time.perf_counter(); ds = load_dataset('cifar10', root=%r); "
            "print('RESULT ' + json.dumps({'kind': 'cifar-reference', 'seconds': time.perf_counter() - t0, "
            "'images': len(ds.train_labels) + len(ds.test_labels), 'peak_mib': rss.peak_mib(), 'worker_peak_mib': 0, "
            "'dtype': str(ds.train_images.dtype)}))") % (str(HERE), str(root))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(reference)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"reference load failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------- the tree benchmark

def tree_tasks(tree: Path, set_path: Path, out: Path, args) -> dict[str, dict]:
    """The three fresh-process measurements of one tree: ddtk eval, one buffer epoch, the plain loop."""
    data = ["--file-backed-above", "0", "--data-workers", str(args.workers), "--device", "cpu"]
    ev = ["eval", str(set_path), "--baseline", "random", "--models", args.model, "--runs", "1", "--epochs",
          str(args.epochs), "--out", str(out / "eval"), *data, *shlex.split(args.eval_args)]
    buf = ["buffer", "--dataset", f"folder:{tree}", "--res", "224", "--model", args.model, "--experts", "1",
           "--epochs", "1", "--no-dsa", "--batch", str(args.batch), "--quiet", "--out", str(out / "buffer"), *data]
    return {"eval": {"kind": "eval", "argv": ev},
            "buffer": {"kind": "buffer", "argv": buf},
            **{f"{kind}-{split}": {"kind": "plain", "folder": str(tree / split), "workers": args.workers,
                                   "batch": args.batch, "normalize": kind == "plain"}
               for kind in ("plain", "decode") for split in ("val", "train")}}


def bench_tree(args) -> None:
    import shutil

    sizes = {"N": args.train_per_class, "2N": 2 * args.train_per_class}
    vals = {"N": args.val_per_class, "2N": 2 * args.val_per_class}
    results: dict[tuple[str, str], list[dict]] = {}
    for label, per in sizes.items():
        tree = Path(args.root) / f"tree_{args.classes}x{per}+{vals[label]}_224"
        t0 = time.perf_counter()
        make_tree(tree, args.classes, per, vals[label])
        n = args.classes * (per + vals[label])
        print(f"tree {label}: {tree} ({n} JPEGs, {args.classes} classes; ready in {time.perf_counter() - t0:.1f}s)")
        with tempfile.TemporaryDirectory(dir=args.root) as tmp:
            tmp = Path(tmp)
            set_path = make_set(tree, tmp / "set.safetensors", args.ipc, args.workers)
            tasks = tree_tasks(tree, set_path, tmp, args)
            for _ in range(args.repeats):  # alternate command and plain loop so a shared machine's load hits both
                for name, task in tasks.items():
                    for sub in ("eval", "buffer"):
                        shutil.rmtree(tmp / sub, ignore_errors=True)
                    results.setdefault((label, name), []).append(run_child(task))
    report_tree(results, args)


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report_tree(results: dict, args) -> None:
    print(f"\nfile-backed ImageFolder tree, 224 px JPEGs, --res 224, {args.workers} DataLoader workers, batch "
          f"{args.batch}, model {args.model}, OMP_NUM_THREADS=1, {os.cpu_count()} CPUs; median of {args.repeats} "
          f"fresh process(es) each{'; eval ' + args.eval_args if args.eval_args else ''}")
    print(f"{'run':<12}{'size':>5}{'images':>8}{'seconds':>9}{'img/s':>7}{'plain':>7}{'ratio':>7}{'decode':>8}"
          f"{'ratio':>7}{'peak RSS MiB':>14}{'worker MiB':>12}")

    def rate(rows):
        return statistics.median(r["images"] / r["seconds"] for r in rows)

    for name, split in (("eval", "val"), ("buffer", "train")):
        for label in ("N", "2N"):
            rows = results[(label, name)]
            mine, plain, decode = rate(rows), rate(results[(label, f"plain-{split}")]), rate(results[(label, f"decode-{split}")])
            print(f"{'ddtk ' + name:<12}{label:>5}{int(_median(rows, 'images')):>8}{_median(rows, 'seconds'):>9.2f}"
                  f"{mine:>7.0f}{plain:>7.0f}{mine / plain:>7.2f}{decode:>8.0f}{mine / decode:>7.2f}"
                  f"{_median(rows, 'peak_mib'):>14.0f}{_median(rows, 'worker_peak_mib'):>12.0f}")
    for name in ("eval", "buffer", "plain-train"):
        a, b = _median(results[("N", name)], "peak_mib"), _median(results[("2N", name)], "peak_mib")
        print(f"peak RSS growth N -> 2N, {name}: {a:.0f} -> {b:.0f} MiB = {100 * (b / a - 1):+.1f}% (target <= +10%)")
    print("img/s: images the command decoded / its wall time (loading the index, decoding, normalizing, the network; "
          "eval = two test-set passes + the random baseline's sampled files, buffer = one epoch + a test-set pass).\n"
          "plain: torchvision ImageFolder + DataLoader, Resize/CenterCrop/ToTensor/Normalize in the same number of "
          "workers, over the split the command reads most; ratio = img/s / plain (target >= 0.80).\n"
          "decode: the same loop with PILToTensor only (uint8, no normalization); ratio = img/s / decode.")


# ---------------------------------------------------------------- the CIFAR fixture

def bench_cifar(args) -> None:
    root = Path(args.root) / f"cifar10_{args.cifar}"
    t0 = time.perf_counter()
    make_cifar(root, args.cifar)
    print(f"\nCIFAR-10 fixture: {root} ({args.cifar} train + 10000 test images; ready in {time.perf_counter() - t0:.1f}s)")
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for kind in ("baseline", "cifar-uint8", "cifar-float32"):
            runs.setdefault(kind, []).append(run_child({"kind": kind, "root": str(root)}))
        if args.reference_tree:
            runs.setdefault("cifar-reference", []).append(run_reference_cifar(Path(args.reference_tree), root))
    base = _median(runs["baseline"], "peak_mib")
    u8, f32 = _median(runs["cifar-uint8"], "peak_mib"), _median(runs["cifar-float32"], "peak_mib")
    print(f"peak RSS, fresh process: python + torch + dd.data imported {base:.0f} MiB; loading uint8 {u8:.0f} MiB "
          f"({_median(runs['cifar-uint8'], 'seconds'):.2f}s); float32 as before {f32:.0f} MiB "
          f"({_median(runs['cifar-float32'], 'seconds'):.2f}s)")
    print(f"uint8 / float32 peak RSS = {u8 / f32:.3f} (target <= 0.35); above the import baseline: "
          f"{(u8 - base) / (f32 - base):.3f}")
    if "cifar-reference" in runs:
        ref = _median(runs["cifar-reference"], "peak_mib")
        print(f"reference checkout {args.reference_tree}: load_dataset('cifar10') peak {ref:.0f} MiB "
              f"({_median(runs['cifar-reference'], 'seconds'):.2f}s); uint8 / reference = {u8 / ref:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "dd_bench_data"),
                    help="where the generated tree and fixture are written (and reused); keep it outside git")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=500, help="N = classes x (train + val per class)")
    ap.add_argument("--val-per-class", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers, for dd and the plain loop alike")
    ap.add_argument("--batch", type=int, default=256, help="batch size of the buffer epoch and the plain loop")
    ap.add_argument("--model", default="bench_data:subsampled_linear")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of each eval row")
    ap.add_argument("--ipc", type=int, default=10, help="images per class of the set and the random baseline")
    ap.add_argument("--eval-args", default="", help="more `ddtk eval` options, e.g. '--protocol-option dsa=false' "
                                                    "(the hard protocol's DSA at 224 px is network work, not data)")
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per measurement (median reported)")
    ap.add_argument("--cifar", type=int, default=50000, help="train images of the CIFAR-10 fixture (0: skip)")
    ap.add_argument("--reference-tree", default=None, help="a dd checkout whose load_dataset('cifar10') is 'before'")
    ap.add_argument("--skip-tree", action="store_true", help="only the CIFAR fixture")
    args = ap.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(child(json.loads(args.child))))
        return
    Path(args.root).mkdir(parents=True, exist_ok=True)
    if not args.skip_tree:
        bench_tree(args)
    if args.cifar:
        bench_cifar(args)


if __name__ == "__main__":
    main()
