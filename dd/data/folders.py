"""Image-folder datasets: Tiny-ImageNet's layout, an ImageNet ImageFolder tree, and MTT's 10-class ImageNet subsets.

Images are decoded with PIL (threads), center-resized to a square resolution and kept in memory as normalized
float32 tensors, like every other dd dataset. That suits Tiny-ImageNet (100k x 3x64x64 = 4.9 GB) and the
10-class subsets (~13k x 3x128x128 = 2.5 GB); full ImageNet-1k does NOT fit this way (1.28M images are
63 GB at 64x64 and 252 GB at 128x128 in float32): pass `classes=[...]` or `train_per_class=N` to load a part.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dd.data.base import DatasetNotFoundError, ImageDataset, normalize_uint8
from dd.data.registry import DATASETS, absent, expects_files

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp")

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


# ---------------------------------------------------------------- decoding

def load_image(path: Path, res: int, resize: str = "center") -> np.ndarray:
    """One image as uint8 (res, res, 3) RGB.

    resize="center": scale the shorter side to `res` (bilinear, antialiased) then center-crop res x res;
    resize="stretch": scale both sides to `res` ignoring the aspect ratio (what MTT's Resize((128, 128)) does).
    Images already res x res are returned untouched.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.format == "JPEG" and min(w, h) >= 2 * res:  # libjpeg decodes at 1/2..1/8 scale, keeping >= target
                s = res / min(w, h)
                im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)) if resize == "center" else (res, res))
            im = im.convert("RGB")
            w, h = im.size
            if (w, h) != (res, res):
                if resize == "stretch":
                    im = im.resize((res, res), Image.BILINEAR)
                else:
                    s = res / min(w, h)
                    nw, nh = max(res, round(w * s)), max(res, round(h * s))
                    if (nw, nh) != (w, h):
                        im = im.resize((nw, nh), Image.BILINEAR)
                    left, top = (nw - res) // 2, (nh - res) // 2
                    im = im.crop((left, top, left + res, top + res))
            return np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise DatasetNotFoundError(f"cannot decode image {path}: {e}") from e


def _decode_all(paths: Sequence[Path], res: int, resize: str, workers: int | None) -> np.ndarray:
    out = np.empty((len(paths), res, res, 3), dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)

    def work(i: int) -> None:
        out[i] = load_image(paths[i], res, resize)

    if workers <= 1 or len(paths) < 64:
        for i in range(len(paths)):
            work(i)
    else:
        with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding and resizing
            list(pool.map(work, range(len(paths))))
    return out


def _normalized(images: np.ndarray, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalized float32 (N, 3, H, W), filled chunk by chunk to bound peak memory."""
    n, h, w, _ = images.shape
    out = torch.empty((n, 3, h, w), dtype=torch.float32)
    for i in range(0, n, chunk):
        out[i:i + chunk] = normalize_uint8(images[i:i + chunk], IMAGENET_MEAN, IMAGENET_STD)
    return out


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _check_resize(resize: str) -> None:
    if resize not in ("center", "stretch"):
        raise ValueError(f"resize must be 'center' or 'stretch', got {resize!r}")


def _build(name, class_names, train, test, res, resize, workers, info) -> ImageDataset:
    """train/test: lists of (path, label) -> ImageDataset."""
    def split(items):
        x = _normalized(_decode_all([p for p, _ in items], res, resize, workers))
        y = torch.tensor([label for _, label in items], dtype=torch.int64)
        return x, y

    x_tr, y_tr = split(train)
    x_te, y_te = split(test)
    return ImageDataset(
        name=name, channels=3, image_size=(res, res), num_classes=len(class_names), class_names=list(class_names),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, train_images=x_tr, train_labels=y_tr, test_images=x_te, test_labels=y_te,
        flip_ok=True, info=info,
    )


# ---------------------------------------------------------------- Tiny-ImageNet

def _tiny_base(root) -> Path:
    return Path(root if root is not None else ".").expanduser() / "tiny-imagenet-200"


def _tiny_entries(base: Path) -> list[Path]:
    """What the Tiny-ImageNet loader opens first: the class list, the train folder, the val images and labels."""
    return [base / "wnids.txt", base / "train", base / "val" / "images", base / "val" / "val_annotations.txt"]


@expects_files("tinyimagenet")
def _tiny_missing(root) -> list[Path]:
    base = _tiny_base(root)
    return [base] if not base.is_dir() else absent(_tiny_entries(base))


@DATASETS.register("tinyimagenet", help="Tiny-ImageNet-200 (64x64) from ROOT/tiny-imagenet-200; test split = val")
def tinyimagenet(root=None, workers: int | None = None, **_) -> ImageDataset:
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
    train = []
    for w in wnids:
        folder = base / "train" / w / "images"
        if not folder.is_dir():
            raise DatasetNotFoundError(f"missing {folder} for class {w} listed in wnids.txt; {layout}")
        files = _image_files(folder)
        if not files:
            raise DatasetNotFoundError(f"{folder} holds no images; {layout}")
        train += [(p, label[w]) for p in files]
    test = []
    for n, line in enumerate(ann_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in label:
            raise DatasetNotFoundError(f"{ann_file} line {n}: expected '<file>\\t<wnid>...' with a wnid from wnids.txt, got {line!r}")
        path = base / "val" / "images" / parts[0]
        if not path.is_file():
            raise DatasetNotFoundError(f"{ann_file} line {n} names {path}, which does not exist; {layout}")
        test.append((path, label[parts[1]]))
    return _build("tinyimagenet", [names.get(w, w) for w in wnids], train, test, 64, "center", workers,
                  {"split": "official train / val as test", "source": str(base), "wnids": wnids})


# ---------------------------------------------------------------- ImageNet ImageFolder tree and subsets

def _tree_base(root) -> Path:
    return Path(root if root is not None else ".").expanduser()


def _tree_missing(root, wnids: Sequence[str] | None = None) -> list[Path]:
    """train/ and val/ under root when absent, else the class folders of `wnids` absent from either (no file is read)."""
    base = _tree_base(root)
    splits = absent([base / "train", base / "val"])
    if splits or wnids is None:
        return splits
    return absent([base / split / w for split in ("train", "val") for w in wnids])


@expects_files("imagenet")
def _imagenet_missing(root) -> list[Path]:
    return _tree_missing(root)


def imagefolder(name: str, root, wnids: Sequence[str] | None, names: Sequence[str] | None, res: int,
                resize: str = "center", train_per_class: int | None = None, workers: int | None = None) -> ImageDataset:
    """ImageNet-style tree root/{train,val}/<wnid>/*.JPEG; `wnids` picks (and orders) classes, None = all sorted."""
    _check_resize(resize)
    if res < 1:
        raise ValueError(f"res must be positive, got {res}")
    base = _tree_base(root)
    layout = (f"expected an ImageFolder tree at {base}/{{train,val}}/<wnid>/*.JPEG (torchvision ImageNet's layout with "
              "val sorted into class folders); pass --data-root")
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise DatasetNotFoundError(f"missing directory {base / split}; {layout}")
    if wnids is None:
        wnids = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
        if not wnids:
            raise DatasetNotFoundError(f"{base / 'train'} has no class folders; {layout}")
    names = list(names) if names is not None else list(wnids)
    items = {}
    for split in ("train", "val"):
        missing = [f"{w} ({n})" if n != w else w for w, n in zip(wnids, names) if not (base / split / w).is_dir()]
        if missing:
            raise DatasetNotFoundError(f"{name}: {len(missing)} class folder(s) missing under {base / split}: "
                                       f"{', '.join(missing)}; {layout}")
        items[split] = []
        for i, w in enumerate(wnids):
            files = _image_files(base / split / w)
            if not files:
                raise DatasetNotFoundError(f"{base / split / w} holds no images; {layout}")
            if split == "train" and train_per_class is not None:
                files = files[:train_per_class]
            items[split] += [(p, i) for p in files]
    info = {"split": "train / val as test", "source": str(base), "wnids": list(wnids), "resize": resize,
            "train_per_class": train_per_class}
    return _build(name, names, items["train"], items["val"], res, resize, workers, info)


@DATASETS.register("imagenet", help="ImageNet ImageFolder tree ROOT/{train,val}/<wnid>/*.JPEG at res x res (default 64)")
def imagenet(root=None, res: int = 64, classes: Sequence[str] | None = None, resize: str = "center",
             train_per_class: int | None = None, workers: int | None = None, **_) -> ImageDataset:
    """All (or `classes`) wnid folders of an ImageNet tree; the full 1k classes need far more memory than a typical host."""
    return imagefolder("imagenet", root, list(classes) if classes is not None else None, None, res, resize,
                       train_per_class, workers)


def _register_subset(subset: str) -> None:
    wnids, names = zip(*SUBSETS[subset])

    def load(root=None, res: int = 128, resize: str = "center", train_per_class: int | None = None,
             workers: int | None = None, **_) -> ImageDataset:
        return imagefolder(subset, root, list(wnids), list(names), res, resize, train_per_class, workers)

    load.__doc__ = f"MTT's {subset} (10 ImageNet classes) read from an ImageNet tree, 128x128 by default."
    DATASETS.add(subset, load, help=f"MTT's {subset}: 10 ImageNet classes from ROOT/{{train,val}}/<wnid>, 128x128")
    expects_files(subset)(lambda root: _tree_missing(root, wnids))


for _subset in SUBSETS:
    _register_subset(_subset)
