"""Image-folder datasets: Tiny-ImageNet's layout, ImageNet ImageFolder trees, MTT's 10-class ImageNet subsets and
any ImageFolder tree given as `folder:PATH`.

Images are decoded with PIL and center-resized (or stretched) to a square resolution. A dataset whose decoded
pixels (train + test, uint8) fit in `file_backed_above_mib` MiB (default 2048) is decoded once and kept in memory as
uint8 (Tiny-ImageNet: 1.35 GB; a 10-class subset at 128 px: 0.6 GB); a larger one (ImageNet-1K: 1.28M images, 15.7
GB at 64 px and 193 GB at 224 px) is file-backed: an index of paths and labels whose images are decoded on demand
in DataLoader worker processes (dd.data.file_images.FileImages), so memory does not grow with the number of images.
A truncated or unreadable file is reported by path and class; `skip_bad_images=True` leaves such files out instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from dd.data.base import DatasetNotFoundError, ImageDataset
from dd.data.registry import TREE_OPTIONS, DatasetEntry, absent, data_root, register_dataset
from dd.data import file_images
from dd.data.file_images import FileImages
from dd.data.sources import Uint8Images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp")
DEFAULT_FILE_BACKED_ABOVE_MIB = 2048.0  # decoded uint8 size (train + test) above which a tree stays on disk
FOLDER_PREFIX = "folder:"
DEFAULT_FOLDER_RES = 64

# MTT's subsets (Cazenavette et al. 2022, utils.py Config), as (wnid, name) in MTT's label order: label i is entry i.
# MTT lists ImageNet-1k class indices; the wnids here are those indices in the sorted 1000-wnid list.
SUBSETS: dict[str, list[tuple[str, str]]] = {
    "imagenette": [  # [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
        ("n01440764", "tench"), ("n02102040", "English springer"), ("n02979186", "cassette player"),
        ("n03000684", "chain saw"), ("n03028079", "church"), ("n03394916", "French horn"),
        ("n03417042", "garbage truck"), ("n03425413", "gas pump"), ("n03445777", "golf ball"), ("n03888257", "parachute"),
    ],
    "imagewoof": [  # [193, 182, 258, 162, 155, 167, 159, 273, 207, 229]
        ("n02096294", "Australian terrier"), ("n02093754", "Border terrier"), ("n02111889", "Samoyed"),
        ("n02088364", "beagle"), ("n02086240", "Shih-Tzu"), ("n02089973", "English foxhound"),
        ("n02087394", "Rhodesian ridgeback"), ("n02115641", "dingo"), ("n02099601", "golden retriever"),
        ("n02105641", "Old English sheepdog"),
    ],
    "imagefruit": [  # [953, 954, 949, 950, 951, 957, 952, 945, 943, 948]
        ("n07753275", "pineapple"), ("n07753592", "banana"), ("n07745940", "strawberry"), ("n07747607", "orange"),
        ("n07749582", "lemon"), ("n07768694", "pomegranate"), ("n07753113", "fig"), ("n07720875", "bell pepper"),
        ("n07718472", "cucumber"), ("n07742313", "Granny Smith"),
    ],
    "imageyellow": [  # [309, 986, 954, 951, 987, 779, 599, 291, 72, 11]
        ("n02206856", "bee"), ("n12057211", "yellow lady's slipper"), ("n07753592", "banana"), ("n07749582", "lemon"),
        ("n12144580", "corn"), ("n04146614", "school bus"), ("n03530642", "honeycomb"), ("n02129165", "lion"),
        ("n01773157", "black and gold garden spider"), ("n01531178", "goldfinch"),
    ],
    "imagemeow": [  # [281, 282, 283, 284, 285, 291, 292, 290, 289, 287]
        ("n02123045", "tabby"), ("n02123159", "tiger cat"), ("n02123394", "Persian cat"), ("n02123597", "Siamese cat"),
        ("n02124075", "Egyptian cat"), ("n02129165", "lion"), ("n02129604", "tiger"), ("n02128925", "jaguar"),
        ("n02128757", "snow leopard"), ("n02127052", "lynx"),
    ],
    "imagesquawk": [  # [84, 130, 88, 144, 145, 22, 96, 9, 100, 89]
        ("n01806143", "peacock"), ("n02007558", "flamingo"), ("n01818515", "macaw"), ("n02051845", "pelican"),
        ("n02056570", "king penguin"), ("n01614925", "bald eagle"), ("n01843383", "toucan"), ("n01518878", "ostrich"),
        ("n01860187", "black swan"), ("n01819313", "sulphur-crested cockatoo"),
    ],
}


# ---------------------------------------------------------------- decoding and indexing

def load_image(path: Path, res: int, resize: str = "center") -> np.ndarray:
    """One image as uint8 (res, res, 3) RGB (see dd.data.file_images.load_image); a bad file raises DatasetNotFoundError."""
    try:
        return file_images.load_image(path, res, resize)
    except OSError as e:
        raise DatasetNotFoundError(f"cannot decode image {path}: {e}") from e


def _image_names(folder: Path) -> list[str]:
    """The image files directly in `folder`, sorted by name (ImageFolder's order)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)


class _Index:
    """Paths (relative to the dataset root, as one numpy bytes array) and labels of one split, built class by class
    so no Python object per file outlives the listing."""

    def __init__(self):
        self.parts: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, rel_paths: Sequence[str], label) -> None:
        if len(rel_paths):
            self.parts.append(np.array([p.encode() for p in rel_paths], dtype=bytes))
            self.labels.append(np.broadcast_to(np.asarray(label, dtype=np.int64), (len(rel_paths),)).copy())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, dtype="S1"), np.zeros(0, dtype=np.int64)
        width = max(p.dtype.itemsize for p in self.parts)
        return np.concatenate([p.astype(f"S{width}") for p in self.parts]), np.concatenate(self.labels)


def _check_resize(resize: str) -> None:
    if resize not in ("center", "stretch"):
        raise ValueError(f"resize must be 'center' or 'stretch', got {resize!r}")


def _check_res(res) -> int:
    if isinstance(res, bool) or not isinstance(res, int) or res < 1:
        raise ValueError(f"res must be a positive integer (the side of the square images), got {res!r}")
    return res


def _split_source(name, split, root, index: _Index, class_names, res, resize, workers, skip_bad, in_memory):
    """(source, labels) of one split: a FileImages index, or its images decoded once into uint8 memory."""
    rel, labels = index.arrays()
    files = FileImages(root, rel, labels, res=res, resize=resize, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       class_names=class_names, what=f"{split} split of '{name}'", workers=workers, skip_bad=skip_bad)
    if not in_memory:
        return files, torch.from_numpy(labels)
    kept, pixels = files.load_all()
    return Uint8Images(pixels, IMAGENET_MEAN, IMAGENET_STD), torch.from_numpy(labels[kept])


def _build(name, class_names, root, train: _Index, test: _Index, res, resize, workers, info,
           file_backed_above_mib: Optional[float] = None, skip_bad_images: bool = False) -> ImageDataset:
    """Both splits' indexes -> ImageDataset, in memory (uint8) or file-backed by the decoded size (see the module doc)."""
    limit = DEFAULT_FILE_BACKED_ABOVE_MIB if file_backed_above_mib is None else float(file_backed_above_mib)
    if not limit >= 0:
        raise ValueError(f"file_backed_above_mib must be >= 0 (MiB of decoded images), got {file_backed_above_mib!r}")
    n = sum(len(p) for p in train.parts) + sum(len(p) for p in test.parts)
    mib = n * 3 * res * res / 2**20
    in_memory = mib <= limit
    x_tr, y_tr = _split_source(name, "train", root, train, class_names, res, resize, workers, skip_bad_images, in_memory)
    x_te, y_te = _split_source(name, "test", root, test, class_names, res, resize, workers, skip_bad_images, in_memory)
    info = {**info, "storage": "uint8 in memory" if in_memory else "files", "decoded_mib": round(mib, 1),
            "file_backed_above_mib": limit}
    return ImageDataset(
        name=name, channels=3, image_size=(res, res), num_classes=len(class_names), class_names=list(class_names),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, train_images=x_tr, train_labels=y_tr, test_images=x_te,
        test_labels=y_te, flip_ok=True, info=info,
    )


# ---------------------------------------------------------------- Tiny-ImageNet

def _tiny_base(root) -> Path:
    return data_root(root) / "tiny-imagenet-200"


def _tiny_entries(base: Path) -> list[Path]:
    """What the Tiny-ImageNet loader opens first: the class list, the train folder, the val images and labels."""
    return [base / "wnids.txt", base / "train", base / "val" / "images", base / "val" / "val_annotations.txt"]


def _tiny_missing(root) -> list[Path]:
    base = _tiny_base(root)
    return [base] if not base.is_dir() else absent(_tiny_entries(base))


@register_dataset("tinyimagenet", help="Tiny-ImageNet-200 (64x64) from ROOT/tiny-imagenet-200; test split = val",
                  options={k: TREE_OPTIONS[k] for k in ("workers", "file_backed_above_mib", "skip_bad_images")},
                  missing=_tiny_missing)
def tinyimagenet(root=None, workers: int | None = None, file_backed_above_mib: float | None = None,
                 skip_bad_images: bool = False) -> ImageDataset:
    """Tiny-ImageNet-200 in its distributed layout; labels follow the sorted wnids (ImageFolder's order, as in MTT)."""
    base = _tiny_base(root)
    layout = (f"expected Tiny-ImageNet at {base}/{{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
              "val/val_annotations.txt}; put the extracted tiny-imagenet-200.zip there or pass --data-root")
    wnids_file, ann_file = base / "wnids.txt", base / "val" / "val_annotations.txt"
    for p in _tiny_entries(base):
        if not p.exists():
            raise DatasetNotFoundError(f"missing {p}; {layout}")
    wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    if not wnids:
        raise DatasetNotFoundError(f"{wnids_file} lists no classes; {layout}")
    label = {w: i for i, w in enumerate(wnids)}
    names = {}
    words = base / "words.txt"
    if words.is_file():
        for line in words.read_text().splitlines():
            wnid, _, text = line.partition("\t")
            if wnid in label:
                names[wnid] = text.strip()
    train = _Index()
    for w in wnids:
        folder = base / "train" / w / "images"
        if not folder.is_dir():
            raise DatasetNotFoundError(f"missing {folder} for class {w} listed in wnids.txt; {layout}")
        files = _image_names(folder)
        if not files:
            raise DatasetNotFoundError(f"{folder} holds no images; {layout}")
        train.add([f"train/{w}/images/{f}" for f in files], label[w])
    test_paths, test_labels = [], []
    for n, line in enumerate(ann_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in label:
            raise DatasetNotFoundError(f"{ann_file} line {n}: expected '<file>\\t<wnid>...' with a wnid from wnids.txt, got {line!r}")
        path = base / "val" / "images" / parts[0]
        if not path.is_file():
            raise DatasetNotFoundError(f"{ann_file} line {n} names {path}, which does not exist; {layout}")
        test_paths.append(f"val/images/{parts[0]}")
        test_labels.append(label[parts[1]])
    test = _Index()
    test.add(test_paths, test_labels)
    return _build("tinyimagenet", [names.get(w, w) for w in wnids], base, train, test, 64, "center", workers,
                  {"split": "official train / val as test", "source": str(base), "wnids": wnids},
                  file_backed_above_mib, skip_bad_images)


# ---------------------------------------------------------------- ImageFolder trees: ImageNet, its subsets, folder:PATH

def _tree_missing(root, wnids: Sequence[str] | None = None) -> list[Path]:
    """train/ and val/ under root when absent, else the class folders of `wnids` absent from either (no file is read)."""
    base = data_root(root)
    splits = absent([base / "train", base / "val"])
    if splits or wnids is None:
        return splits
    return absent([base / split / w for split in ("train", "val") for w in wnids])


def _imagenet_missing(root) -> list[Path]:
    return _tree_missing(root)


def imagefolder(name: str, root, wnids: Sequence[str] | None, names: Sequence[str] | None, res: int,
                resize: str = "center", train_per_class: int | None = None, workers: int | None = None,
                file_backed_above_mib: float | None = None, skip_bad_images: bool = False,
                layout: Optional[str] = None) -> ImageDataset:
    """ImageNet-style tree root/{train,val}/<wnid>/*.JPEG; `wnids` picks (and orders) classes, None = all sorted.

    In memory (uint8) or file-backed by the decoded size (see the module docstring); `layout` replaces the
    ImageNet wording of the missing-files messages.
    """
    _check_resize(resize)
    res = _check_res(res)
    base = data_root(root)
    layout = layout or (f"expected an ImageFolder tree at {base}/{{train,val}}/<wnid>/*.JPEG (torchvision ImageNet's "
                        "layout with val sorted into class folders); pass --data-root")
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise DatasetNotFoundError(f"missing directory {base / split}; {layout}")
    if wnids is None:
        wnids = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
        if not wnids:
            raise DatasetNotFoundError(f"{base / 'train'} has no class folders; {layout}")
    names = list(names) if names is not None else list(wnids)
    index = {}
    for split in ("train", "val"):
        missing = [f"{w} ({n})" if n != w else w for w, n in zip(wnids, names) if not (base / split / w).is_dir()]
        if missing:
            raise DatasetNotFoundError(f"{name}: {len(missing)} class folder(s) missing under {base / split}: "
                                       f"{', '.join(missing)}; {layout}")
        index[split] = _Index()
        for i, w in enumerate(wnids):
            files = _image_names(base / split / w)
            if not files:
                raise DatasetNotFoundError(f"{base / split / w} holds no images; {layout}")
            if split == "train" and train_per_class is not None:
                files = files[:train_per_class]
            index[split].add([f"{split}/{w}/{f}" for f in files], i)
    info = {"split": "train / val as test", "source": str(base), "wnids": list(wnids), "resize": resize,
            "train_per_class": train_per_class}
    return _build(name, names, base, index["train"], index["val"], res, resize, workers, info,
                  file_backed_above_mib, skip_bad_images)


@register_dataset("imagenet", help="ImageNet ImageFolder tree ROOT/{train,val}/<wnid>/*.JPEG at res x res (default 64); "
                                   "file-backed above --file-backed-above MiB",
                  options={"res": 64, "classes": None, "train_per_class": None, **TREE_OPTIONS},
                  missing=_imagenet_missing)
def imagenet(root=None, res: int = 64, classes: Sequence[str] | None = None, resize: str = "center",
             train_per_class: int | None = None, workers: int | None = None, file_backed_above_mib: float | None = None,
             skip_bad_images: bool = False) -> ImageDataset:
    """All (or `classes`) wnid folders of an ImageNet tree; the full 1k classes are file-backed (decoded on demand)."""
    return imagefolder("imagenet", root, list(classes) if classes is not None else None, None, res, resize,
                       train_per_class, workers, file_backed_above_mib, skip_bad_images)


def _register_subset(subset: str) -> None:
    wnids, names = zip(*SUBSETS[subset])

    def load(root=None, res: int = 128, resize: str = "center", train_per_class: int | None = None,
             workers: int | None = None, file_backed_above_mib: float | None = None,
             skip_bad_images: bool = False) -> ImageDataset:
        return imagefolder(subset, root, list(wnids), list(names), res, resize, train_per_class, workers,
                           file_backed_above_mib, skip_bad_images)

    load.__doc__ = f"MTT's {subset} (10 ImageNet classes) read from an ImageNet tree, 128x128 by default."
    register_dataset(subset, help=f"MTT's {subset}: 10 ImageNet classes from ROOT/{{train,val}}/<wnid>, 128x128",
                     options={"res": 128, "train_per_class": None, **TREE_OPTIONS},
                     missing=lambda root: _tree_missing(root, wnids))(load)


for _subset in SUBSETS:
    _register_subset(_subset)


def _folder_base(spec: str, root) -> Path:
    """PATH of `folder:PATH` (a relative PATH under `root` when one is given)."""
    if not spec.startswith(FOLDER_PREFIX) or not spec[len(FOLDER_PREFIX):].strip():
        raise ValueError(f"expected folder:PATH (an ImageFolder tree PATH/{{train,val}}/<class>/*), got {spec!r}")
    base = Path(spec[len(FOLDER_PREFIX):]).expanduser()
    return Path(root).expanduser() / base if not base.is_absolute() and root is not None else base


def folder_missing(spec: str, root=None) -> list[Path]:
    """The absent train/ and val/ directories of a `folder:PATH` tree (PATH itself when it is absent); no file is read."""
    base = _folder_base(spec, root)
    return [base] if not base.is_dir() else absent([base / "train", base / "val"])


def folder_dataset(spec: str, root=None, res: int = DEFAULT_FOLDER_RES, resize: str = "center",
                   train_per_class: int | None = None, workers: int | None = None,
                   file_backed_above_mib: float | None = None, skip_bad_images: bool = False) -> ImageDataset:
    """`folder:PATH`: any ImageFolder tree PATH/train/<class>/* and PATH/val/<class>/* (val is the test split).

    Classes are the sorted folder names under PATH/train (labels in that order, as torchvision's ImageFolder); every
    one must have a folder under PATH/val too, and val may hold no other class. A relative PATH is read under `root`
    (--data-root) when one is given. The dataset's name is `spec` itself, so sets and buffers can reload it.
    """
    base = _folder_base(spec, root)
    layout = (f"expected an ImageFolder tree at {base}/train/<class>/<image files> and {base}/val/<class>/<image files> "
              f"(one folder per class; val is the test split)")
    if not base.is_dir():
        raise DatasetNotFoundError(f"missing directory {base} for dataset {spec!r}; {layout}")
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise DatasetNotFoundError(f"missing directory {base / split}; {layout}")
    classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"{base / 'train'} has no class folders; {layout}")
    extra = sorted(p.name for p in (base / "val").iterdir() if p.is_dir() and p.name not in set(classes))
    if extra:
        raise DatasetNotFoundError(f"{base / 'val'} has class folder(s) with no training folder: {', '.join(extra)}; "
                                   f"{layout}")
    ds = imagefolder(spec, base, classes, classes, res, resize, train_per_class, workers, file_backed_above_mib,
                     skip_bad_images, layout)
    ds.info.pop("wnids", None)
    return ds


def folder_entry(spec: str) -> DatasetEntry:
    """The entry of `folder:PATH`: the tree's loader, the image-tree options and its train/val check."""
    return DatasetEntry(spec, lambda root=None, **options: folder_dataset(spec, root=root, **options),
                        {"res": DEFAULT_FOLDER_RES, "train_per_class": None, **TREE_OPTIONS},
                        lambda root: folder_missing(spec, root), "an ImageFolder tree PATH/{train,val}/<class>/*")
