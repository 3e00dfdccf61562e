"""Loaders for MNIST, FashionMNIST, SVHN, CIFAR-10 and CIFAR-100 read from torchvision's on-disk layout.

The files are parsed directly (idx ubyte, MATLAB .mat, CIFAR pickles) so no torchvision dataset class is
involved and nothing is ever downloaded; a missing or malformed file raises DatasetNotFoundError naming
the expected path and layout. Means/stds are the canonical ones of the DC/MTT code.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from dd.data.base import DatasetNotFoundError, ImageDataset
from dd.data.registry import absent, data_root, register_dataset
from dd.data.sources import Uint8Images

DIGIT_NAMES = [str(i) for i in range(10)]
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_STATS = ((0.2861,), (0.3530,))
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762))

IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049  # 0x00000803 (uint8, 3 dims), 0x00000801 (uint8, 1 dim)


# ---------------------------------------------------------------- MNIST / FashionMNIST (idx ubyte)

def _read_idx(stem: Path, magic: int, layout: str) -> np.ndarray:
    """Reads `stem` or `stem.gz` as an idx file of uint8 with the given magic number."""
    gz = stem.with_name(stem.name + ".gz")
    if stem.is_file():
        data = stem.read_bytes()
    elif gz.is_file():
        try:
            data = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as e:
            raise DatasetNotFoundError(f"{gz} is not a valid gzip file ({e}); {layout}") from e
    else:
        raise DatasetNotFoundError(f"missing {stem} (or {gz.name}); {layout}")
    src = stem if stem.is_file() else gz
    if len(data) < 8:
        raise DatasetNotFoundError(f"{src} is truncated ({len(data)} bytes); {layout}")
    found = int.from_bytes(data[0:4], "big")
    if found != magic:
        raise DatasetNotFoundError(f"{src} has magic number {found}, expected {magic} for an idx file of this kind; {layout}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DatasetNotFoundError(f"{src} has {len(data)} bytes but its header {dims} implies {expected}; {layout}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable for torch


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_missing(root, folder: str) -> list[Path]:
    """The idx files (plain or .gz) absent under root/folder/raw; the folder alone when it is absent."""
    raw = data_root(root) / folder / "raw"
    if not raw.is_dir():
        return [raw]
    return [raw / f for f in IDX_FILES if not (raw / f).is_file() and not (raw / f"{f}.gz").is_file()]


def _idx_dataset(name: str, folder: str, root, stats, class_names, flip_ok: bool, archive: str) -> ImageDataset:
    raw = data_root(root) / folder / "raw"
    layout = (f"expected {name} in torchvision's format at {raw}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]; "
              f"put the {archive} files there or pass --data-root")
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(raw / f"{prefix}-images-idx3-ubyte", IDX_IMAGES_MAGIC, layout)
        labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte", IDX_LABELS_MAGIC, layout).astype(np.int64)
        if len(images) != len(labels):
            raise DatasetNotFoundError(f"{raw}: {prefix} has {len(images)} images but {len(labels)} labels; {layout}")
        if labels.size and labels.max() >= len(class_names):
            raise DatasetNotFoundError(f"{raw}: {prefix} labels go up to {labels.max()}, expected 0..{len(class_names) - 1}; {layout}")
        splits[split] = (Uint8Images(torch.from_numpy(images).unsqueeze(1), *stats), torch.from_numpy(labels))
    h, w = splits["train"][0].shape[-2:]
    return ImageDataset(
        name=name.lower(), channels=1, image_size=(h, w), num_classes=len(class_names), class_names=list(class_names),
        mean=stats[0], std=stats[1], train_images=splits["train"][0], train_labels=splits["train"][1],
        test_images=splits["test"][0], test_labels=splits["test"][1], flip_ok=flip_ok,
        info={"split": "official train/test", "source": str(raw)},
    )


@register_dataset("mnist", help="MNIST from torchvision's layout: ROOT/MNIST/raw/*-ubyte[.gz]; official 60k/10k split",
                  missing=lambda root: _idx_missing(root, "MNIST"))
def mnist(root=None) -> ImageDataset:
    """MNIST read from idx files under root/MNIST/raw (the layout torchvision.datasets.MNIST writes)."""
    return _idx_dataset("MNIST", "MNIST", root, MNIST_STATS, DIGIT_NAMES, flip_ok=False, archive="MNIST idx")


@register_dataset("fashion-mnist", help="FashionMNIST from torchvision's layout: ROOT/FashionMNIST/raw/*-ubyte[.gz]",
                  missing=lambda root: _idx_missing(root, "FashionMNIST"))
def fashion_mnist(root=None) -> ImageDataset:
    """FashionMNIST read from idx files under root/FashionMNIST/raw."""
    return _idx_dataset("fashion-mnist", "FashionMNIST", root, FASHION_STATS, FASHION_NAMES, flip_ok=True, archive="Fashion-MNIST idx")


# ---------------------------------------------------------------- SVHN (.mat)

def _svhn_missing(root) -> list[Path]:
    return absent([data_root(root) / f"{split}_32x32.mat" for split in ("train", "test")])


@register_dataset("svhn", help="SVHN cropped digits: ROOT/{train,test}_32x32.mat (label 10 is digit 0)",
                  missing=_svhn_missing)
def svhn(root=None) -> ImageDataset:
    """SVHN format 2 (32x32 crops); the 'extra' split is not used, as in the DC/MTT code."""
    import scipy.io

    r = data_root(root)
    layout = f"expected SVHN in torchvision's format at {r}/{{train,test}}_32x32.mat; put the cropped-digit .mat files there or pass --data-root"
    splits = {}
    for split in ("train", "test"):
        path = r / f"{split}_32x32.mat"
        if not path.is_file():
            raise DatasetNotFoundError(f"missing {path}; {layout}")
        try:
            mat = scipy.io.loadmat(str(path))
        except Exception as e:  # scipy raises several types for a corrupt file
            raise DatasetNotFoundError(f"{path} is not a readable .mat file ({e}); {layout}") from e
        if "X" not in mat or "y" not in mat:
            raise DatasetNotFoundError(f"{path} lacks the 'X'/'y' arrays; {layout}")
        x, y = mat["X"], mat["y"].reshape(-1).astype(np.int64)
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
            raise DatasetNotFoundError(f"{path}: X has shape {x.shape}, expected (32, 32, 3, {len(y)}); {layout}")
        if y.size and (y.min() < 0 or y.max() > 10):
            raise DatasetNotFoundError(f"{path}: labels span {y.min()}..{y.max()}, expected 1..10; {layout}")
        y[y == 10] = 0  # SVHN stores digit 0 as label 10
        images = np.ascontiguousarray(np.transpose(x.astype(np.uint8, copy=False), (3, 2, 0, 1)))  # (N, 3, 32, 32)
        splits[split] = (Uint8Images(torch.from_numpy(images), *SVHN_STATS), torch.from_numpy(y))
    return ImageDataset(
        name="svhn", channels=3, image_size=(32, 32), num_classes=10, class_names=DIGIT_NAMES,
        mean=SVHN_STATS[0], std=SVHN_STATS[1], train_images=splits["train"][0], train_labels=splits["train"][1],
        test_images=splits["test"][0], test_labels=splits["test"][1], flip_ok=False,
        info={"split": "official train/test (extra unused)", "source": str(r)},
    )


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100 (python pickles)

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the official CIFAR batches (dicts of lists and numpy arrays) and refuses any other class."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays and lists")


def _str(v) -> str:
    return v.decode("latin1") if isinstance(v, bytes) else str(v)


def _load_batch(path: Path, layout: str) -> dict:
    """One CIFAR pickle as a dict with str keys (official py2 files decode with latin1; bytes keys are accepted)."""
    if not path.is_file():
        raise DatasetNotFoundError(f"missing {path}; {layout}")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise DatasetNotFoundError(f"{path} is not a CIFAR python batch ({type(e).__name__}: {e}); {layout}") from e
    if not isinstance(obj, dict):
        raise DatasetNotFoundError(f"{path} holds a {type(obj).__name__}, expected a dict; {layout}")
    return {_str(k): v for k, v in obj.items()}


def _cifar_split(paths: list[Path], label_key: str, num_classes: int, layout: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for path in paths:
        batch = _load_batch(path, layout)
        if "data" not in batch or label_key not in batch:
            raise DatasetNotFoundError(f"{path} lacks the 'data'/'{label_key}' entries (has {sorted(batch)}); {layout}")
        x = np.asarray(batch["data"])
        y = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise DatasetNotFoundError(f"{path}: data has shape {x.shape} for {len(y)} labels, expected ({len(y)}, 3072); {layout}")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DatasetNotFoundError(f"{path}: labels span {y.min()}..{y.max()}, expected 0..{num_classes - 1}; {layout}")
        xs.append(x.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))  # rows are R(1024) G(1024) B(1024), row-major
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _cifar_dataset(name, folder: Path, train_files, test_file, meta_file, names_key, label_key, num_classes, stats, layout):
    if not folder.is_dir():
        raise DatasetNotFoundError(f"missing directory {folder}; {layout}")
    x_tr, y_tr = _cifar_split([folder / f for f in train_files], label_key, num_classes, layout)
    x_te, y_te = _cifar_split([folder / test_file], label_key, num_classes, layout)
    meta = _load_batch(folder / meta_file, layout)
    if names_key not in meta or len(meta[names_key]) != num_classes:
        raise DatasetNotFoundError(f"{folder / meta_file} lacks '{names_key}' with {num_classes} names; {layout}")
    return ImageDataset(
        name=name, channels=3, image_size=(32, 32), num_classes=num_classes,
        class_names=[_str(n) for n in meta[names_key]], mean=stats[0], std=stats[1],
        train_images=Uint8Images(torch.from_numpy(x_tr), *stats), train_labels=torch.from_numpy(y_tr),
        test_images=Uint8Images(torch.from_numpy(x_te), *stats), test_labels=torch.from_numpy(y_te),
        flip_ok=True, info={"split": "official train/test", "source": str(folder)},
    )


CIFAR10_FOLDER, CIFAR10_FILES = "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FOLDER, CIFAR100_FILES = "cifar-100-python", ("train", "test", "meta")


def _folder_missing(root, folder: str, files) -> list[Path]:
    """The folder when it is absent, else the listed files absent from it."""
    base = data_root(root) / folder
    return [base] if not base.is_dir() else absent([base / f for f in files])


@register_dataset("cifar10", help="CIFAR-10 from ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
                  missing=lambda root: _folder_missing(root, CIFAR10_FOLDER, CIFAR10_FILES))
def cifar10(root=None) -> ImageDataset:
    """CIFAR-10 python batches as extracted from cifar-10-python.tar.gz (torchvision's layout)."""
    folder = data_root(root) / CIFAR10_FOLDER
    layout = (f"expected CIFAR-10 in torchvision's format at {folder}/{{data_batch_1..5,test_batch,batches.meta}}; "
              "put the extracted cifar-10-python.tar.gz there or pass --data-root")
    return _cifar_dataset("cifar10", folder, list(CIFAR10_FILES[:5]), "test_batch", "batches.meta",
                          "label_names", "labels", 10, CIFAR10_STATS, layout)


@register_dataset("cifar100", help="CIFAR-100 (fine labels) from ROOT/cifar-100-python/{train,test,meta}",
                  missing=lambda root: _folder_missing(root, CIFAR100_FOLDER, CIFAR100_FILES))
def cifar100(root=None) -> ImageDataset:
    """CIFAR-100 python files as extracted from cifar-100-python.tar.gz; the 100 fine labels are used."""
    folder = data_root(root) / CIFAR100_FOLDER
    layout = (f"expected CIFAR-100 in torchvision's format at {folder}/{{train,test,meta}}; "
              "put the extracted cifar-100-python.tar.gz there or pass --data-root")
    return _cifar_dataset("cifar100", folder, ["train"], "test", "meta", "fine_label_names", "fine_labels", 100,
                          CIFAR100_STATS, layout)


