"""Loaders for user-supplied files: tiny files written in each exact on-disk format, read back through load_dataset."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dd.data import DatasetNotFoundError, load_dataset
from dd.data.folders import SUBSETS

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
IN_MEAN, IN_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
JPEG_TOL = 3 / 255 / 0.224  # a uniform JPEG block decodes within a few levels of its colour


def write_idx(path: Path, arr: np.ndarray, compress: bool = False) -> None:
    """idx format: big-endian magic (0x00000800 | ndim for uint8), then each dim as a big-endian uint32, then the bytes."""
    data = struct.pack(">I", 0x0800 | arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def save_image(path: Path, array: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    Image.fromarray(array).save(path, format=fmt, **kw)


def uniform(color, h, w) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, dtype=np.uint8), (h, w, 3)).copy()


# ---------------------------------------------------------------- MNIST / FashionMNIST

@pytest.mark.parametrize("name,folder,compress", [("mnist", "MNIST", False), ("fashion-mnist", "FashionMNIST", True)])
def test_idx_datasets(tmp_path, name, folder, compress):
    raw = tmp_path / folder / "raw"
    train_x = np.zeros((6, 28, 28), np.uint8)
    train_x[2, 3, 4] = 255
    train_x[5, 27, 0] = 51
    train_y = np.array([3, 1, 3, 0, 9, 1], np.uint8)
    test_x = np.full((2, 28, 28), 7, np.uint8)
    test_y = np.array([2, 8], np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", train_x, compress)
    write_idx(raw / "train-labels-idx1-ubyte", train_y, compress)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x, compress)
    write_idx(raw / "t10k-labels-idx1-ubyte", test_y, compress)

    ds = load_dataset(name, root=str(tmp_path))
    mean, std = (0.1307, 0.3081) if name == "mnist" else (0.2861, 0.3530)
    assert ds.train_images.shape == (6, 1, 28, 28) and ds.test_images.shape == (2, 1, 28, 28)
    assert ds.train_labels.tolist() == [3, 1, 3, 0, 9, 1] and ds.test_labels.tolist() == [2, 8]
    assert torch.bincount(ds.train_labels, minlength=10).tolist() == [1, 2, 0, 2, 0, 0, 0, 0, 0, 1]
    assert ds.train_images[2, 0, 3, 4].item() == pytest.approx((1.0 - mean) / std, abs=1e-5)
    assert ds.train_images[5, 0, 27, 0].item() == pytest.approx((0.2 - mean) / std, abs=1e-5)
    assert ds.train_images[0, 0, 0, 0].item() == pytest.approx(-mean / std, abs=1e-5)
    assert ds.test_images[1, 0, 10, 10].item() == pytest.approx((7 / 255 - mean) / std, abs=1e-5)
    assert ds.num_classes == 10 and ds.mean == (mean,) and ds.std == (std,)
    assert ds.flip_ok == (name == "fashion-mnist")
    assert ds.class_names[0] == ("0" if name == "mnist" else "T-shirt/top")


def test_idx_rejects_wrong_magic_and_missing_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros((2, 1), np.uint8))  # 2 dims: magic 2050, not 2049
    with pytest.raises(DatasetNotFoundError, match="magic number 2050, expected 2049"):
        load_dataset("mnist", root=str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=r"missing .*FashionMNIST/raw/train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", root=str(tmp_path))


# ---------------------------------------------------------------- SVHN

def test_svhn_mat(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    for split, y in (("train", [10, 1, 10, 5, 3]), ("test", [2, 10])):
        x = rng.integers(0, 256, size=(32, 32, 3, len(y)), dtype=np.uint8)
        if split == "train":
            x[4, 7, 2, 3] = 200  # row 4, column 7, blue channel of image 3
            train_x = x
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array(y, np.uint8).reshape(-1, 1)})
    ds = load_dataset("svhn", root=str(tmp_path))
    assert ds.train_images.shape == (5, 3, 32, 32) and ds.test_images.shape == (2, 3, 32, 32)
    assert ds.train_labels.tolist() == [0, 1, 0, 5, 3] and ds.test_labels.tolist() == [2, 0]
    assert ds.train_images[3, 2, 4, 7].item() == pytest.approx((200 / 255 - SVHN_MEAN[2]) / SVHN_STD[2], abs=1e-5)
    r, c, ch, n = 9, 30, 0, 1
    assert ds.train_images[n, ch, r, c].item() == pytest.approx((train_x[r, c, ch, n] / 255 - SVHN_MEAN[0]) / SVHN_STD[0], abs=1e-5)
    assert not ds.flip_ok and ds.num_classes == 10


def test_svhn_missing_names_the_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"train_32x32\.mat"):
        load_dataset("svhn", root=str(tmp_path))


# ---------------------------------------------------------------- CIFAR

def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def test_cifar10_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = []
    for i in range(1, 6):
        data = cifar_rows(2, i)
        labels = [(2 * i) % 10, (2 * i + 1) % 10]
        batches.append((data, labels))
        write_pickle(folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": labels, b"data": data, b"filenames": [b"a.png", b"b.png"]})
    test = cifar_rows(3, 99)
    test[1, 2 * 1024 + 5 * 32 + 6] = 255  # blue channel, row 5, column 6 of test image 1
    write_pickle(folder / "test_batch", {b"labels": [7, 7, 0], b"data": test})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 2, b"num_vis": 3072})

    ds = load_dataset("cifar10", root=str(tmp_path))
    assert ds.train_images.shape == (10, 3, 32, 32) and ds.test_images.shape == (3, 3, 32, 32)
    assert ds.train_labels.tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert torch.bincount(ds.train_labels, minlength=10).tolist() == [1] * 10
    assert ds.test_labels.tolist() == [7, 7, 0]
    assert ds.test_images[1, 2, 5, 6].item() == pytest.approx((1.0 - CIFAR10_MEAN[2]) / CIFAR10_STD[2], abs=1e-5)
    data3, _ = batches[2]  # train images 4, 5 come from data_batch_3
    v = data3[1, 1 * 1024 + 31 * 32 + 0]  # green, row 31, column 0 of train image 5
    assert ds.train_images[5, 1, 31, 0].item() == pytest.approx((v / 255 - CIFAR10_MEAN[1]) / CIFAR10_STD[1], abs=1e-5)
    assert ds.class_names[1] == "automobile" and ds.flip_ok
    assert ds.mean == CIFAR10_MEAN and ds.std == CIFAR10_STD


def _py2_str(s) -> bytes:
    """A Python 2 `str` in pickle protocol 2 (SHORT_BINSTRING / BINSTRING), as in the official CIFAR files."""
    b = s.encode("latin1") if isinstance(s, str) else s
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def _py2_uint8_matrix(a: np.ndarray) -> bytes:
    """The opcodes numpy 1.x under Python 2 wrote for a uint8 (n, d) array: _reconstruct, then ndarray.__setstate__."""
    n, d = a.shape
    dtype = (b"cnumpy\ndtype\n" + _py2_str("u1") + b"K\x00K\x01\x87R(K\x03" + _py2_str("|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str("b") + b"\x87R("
            + b"K\x01M" + struct.pack("<H", n) + b"M" + struct.pack("<H", d) + b"\x86" + dtype
            + b"\x89" + _py2_str(a.tobytes()) + b"tb")


def _py2_int_list(values) -> bytes:
    return b"](" + b"".join(b"K" + bytes([v]) for v in values) + b"e"


def test_cifar10_reads_python2_pickles(tmp_path):
    """The official batches are Python 2 pickles with str keys and numpy.core globals; latin1 decoding reads them."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        rows[name] = cifar_rows(1, 50 + i)
        stream = (b"\x80\x02}(" + _py2_str("data") + _py2_uint8_matrix(rows[name])
                  + _py2_str("labels") + _py2_int_list([i]) + b"u.")
        (folder / name).write_bytes(stream)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(b"\x80\x02}(" + _py2_str("label_names") + b"](" + b"".join(_py2_str(n) for n in names) + b"eu.")
    ds = load_dataset("cifar10", root=str(tmp_path))
    assert ds.train_labels.tolist() == [0, 1, 2, 3, 4] and ds.test_labels.tolist() == [5]
    assert ds.class_names == names
    v = rows["data_batch_4"][0, 2 * 1024 + 10 * 32 + 20]  # blue, row 10, column 20 of train image 3
    assert ds.train_images[3, 2, 10, 20].item() == pytest.approx((v / 255 - CIFAR10_MEAN[2]) / CIFAR10_STD[2], abs=1e-5)


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    train = cifar_rows(4, 1)
    train[0, 0] = 128  # red, row 0, column 0 of train image 0
    write_pickle(folder / "train", {b"data": train, b"fine_labels": [99, 0, 42, 42], b"coarse_labels": [1, 2, 3, 3]})
    write_pickle(folder / "test", {b"data": cifar_rows(2, 2), b"fine_labels": [5, 99], b"coarse_labels": [0, 1]})
    names = [f"class{i}".encode() for i in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c%d" % i for i in range(20)]})

    ds = load_dataset("cifar100", root=str(tmp_path))
    assert ds.num_classes == 100 and ds.train_images.shape == (4, 3, 32, 32)
    assert ds.train_labels.tolist() == [99, 0, 42, 42] and ds.test_labels.tolist() == [5, 99]
    assert ds.train_images[0, 0, 0, 0].item() == pytest.approx((128 / 255 - CIFAR100_MEAN[0]) / CIFAR100_STD[0], abs=1e-5)
    assert ds.class_names[42] == "class42" and ds.std == CIFAR100_STD


def test_cifar_missing_and_foreign_pickles(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py/\{data_batch_1\.\.5,test_batch"):
        load_dataset("cifar10", root=str(tmp_path))
    folder = tmp_path / "cifar-100-python"
    import datetime

    write_pickle(folder / "train", {b"data": cifar_rows(1, 0), b"fine_labels": [0], b"when": datetime.date(2020, 1, 1)})
    with pytest.raises(DatasetNotFoundError, match="refusing to load datetime.date"):
        load_dataset("cifar100", root=str(tmp_path))


# ---------------------------------------------------------------- Tiny-ImageNet

TINY_COLORS = {"n02999999": (200, 30, 60), "n01000001": (10, 250, 128), "n01500000": (90, 90, 160)}


def test_tinyimagenet_tree(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("\n".join(TINY_COLORS) + "\n")  # not sorted: labels follow the sorted wnids
    (base / "words.txt").write_text("n01000001\tgoldfish, Carassius auratus\nn09999999\tunused\nn02999999\tcastle\n")
    counts = {"n02999999": 3, "n01000001": 1, "n01500000": 2}
    for w, k in counts.items():
        for j in range(k):
            save_image(base / "train" / w / "images" / f"{w}_{j}.JPEG", uniform(TINY_COLORS[w], 64, 64), "JPEG")
    val = [("val_0.JPEG", "n01500000"), ("val_1.JPEG", "n02999999"), ("val_2.JPEG", "n01500000")]
    lines = []
    for f, w in val:
        save_image(base / "val" / "images" / f, uniform(TINY_COLORS[w], 64, 64), "JPEG")
        lines.append(f"{f}\t{w}\t0\t3\t60\t58")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    ds = load_dataset("tinyimagenet", root=str(tmp_path))
    order = sorted(TINY_COLORS)  # n01000001 -> 0, n01500000 -> 1, n02999999 -> 2
    assert ds.train_images.shape == (6, 3, 64, 64) and ds.test_images.shape == (3, 3, 64, 64)
    assert torch.bincount(ds.train_labels, minlength=3).tolist() == [1, 2, 3]
    assert ds.test_labels.tolist() == [1, 2, 1]
    assert ds.class_names == ["goldfish, Carassius auratus", "n01500000", "castle"]
    for x, y in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
        for i in range(len(y)):
            color = TINY_COLORS[order[y[i]]]
            expected = torch.tensor([(color[c] / 255 - IN_MEAN[c]) / IN_STD[c] for c in range(3)])
            assert torch.allclose(x[i, :, 17, 40], expected, atol=JPEG_TOL)
    (base / "val" / "val_annotations.txt").write_text("val_9.JPEG\tn01500000\t0\t0\t1\t1\n")
    with pytest.raises(DatasetNotFoundError, match=r"val_9\.JPEG, which does not exist"):
        load_dataset("tinyimagenet", root=str(tmp_path))


def test_tinyimagenet_missing_names_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"tiny-imagenet-200/wnids\.txt.*val/val_annotations\.txt"):
        load_dataset("tinyimagenet", root=str(tmp_path))


# ---------------------------------------------------------------- ImageNet tree and MTT subsets

def test_imagenet_tree_center_crop_exact(tmp_path):
    # PNG (lossless) 16 wide x 8 high: column j has value 10*j in every channel. res=8 keeps the height,
    # so the center crop must be columns 4..11 exactly.
    cols = (np.arange(16, dtype=np.uint8) * 10)[None, :, None]
    wide = np.broadcast_to(cols, (8, 16, 3)).copy()
    for split, k in (("train", 2), ("val", 1)):
        for w in ("n00000002", "n00000001"):
            for j in range(k):
                save_image(tmp_path / split / w / f"{w}_{j}.png", wide if w == "n00000001" else 255 - wide, "PNG")
    (tmp_path / "train" / "n00000001" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagenet", root=str(tmp_path), res=8)
    assert ds.train_images.shape == (4, 3, 8, 8) and ds.test_images.shape == (2, 3, 8, 8)
    assert ds.train_labels.tolist() == [0, 0, 1, 1] and ds.test_labels.tolist() == [0, 1]
    assert ds.class_names == ["n00000001", "n00000002"] and ds.image_size == (8, 8)
    for c in range(3):
        got = ds.train_images[0, c, 5]  # any row: values depend on the column only
        expected = torch.tensor([((10 * j) / 255 - IN_MEAN[c]) / IN_STD[c] for j in range(4, 12)], dtype=torch.float32)
        assert torch.allclose(got, expected, atol=1e-5)
        inv = torch.tensor([((255 - 10 * j) / 255 - IN_MEAN[c]) / IN_STD[c] for j in range(4, 12)], dtype=torch.float32)
        assert torch.allclose(ds.test_images[1, c, 0], inv, atol=1e-5)
    only = load_dataset("imagenet", root=str(tmp_path), res=8, classes=["n00000002"], train_per_class=1)
    assert only.num_classes == 1 and only.train_images.shape[0] == 1
    assert torch.equal(only.train_images[0], ds.train_images[2])


def test_subset_reads_only_its_classes_in_mtt_order(tmp_path):
    wnids = [w for w, _ in SUBSETS["imagenette"]]
    assert wnids[:3] == ["n01440764", "n02102040", "n02979186"]  # tench, English springer, cassette player
    colors = {w: (20 * i + 5, 250 - 20 * i, 100) for i, w in enumerate(wnids)}
    for i, w in enumerate(wnids):
        # 160x128 (w x h): the center-resize keeps 128 rows and crops 16 columns on each side
        for j in range(1 + (i % 2)):
            save_image(tmp_path / "train" / w / f"{w}_{j}.JPEG", uniform(colors[w], 128, 160), "JPEG")
        save_image(tmp_path / "val" / w / f"ILSVRC2012_val_{i:08d}.JPEG", uniform(colors[w], 128, 160), "JPEG")
    save_image(tmp_path / "train" / "n09999999" / "x.JPEG", uniform((0, 0, 0), 128, 160), "JPEG")  # not in the subset

    ds = load_dataset("imagenette", root=str(tmp_path))
    assert ds.image_size == (128, 128) and ds.num_classes == 10
    assert ds.train_images.shape == (15, 3, 128, 128) and ds.test_images.shape == (10, 3, 128, 128)
    assert torch.bincount(ds.train_labels, minlength=10).tolist() == [1, 2] * 5
    assert ds.test_labels.tolist() == list(range(10))
    assert ds.class_names[0] == "tench" and ds.class_names[9] == "parachute"
    for i in (0, 7):
        color = colors[wnids[i]]
        expected = torch.tensor([(color[c] / 255 - IN_MEAN[c]) / IN_STD[c] for c in range(3)])
        assert torch.allclose(ds.test_images[i, :, 64, 0], expected, atol=JPEG_TOL)

    import shutil

    shutil.rmtree(tmp_path / "val" / "n03888257")
    with pytest.raises(DatasetNotFoundError, match=r"n03888257 \(parachute\)") as e:
        load_dataset("imagenette", root=str(tmp_path))
    assert str(tmp_path / "val") in str(e.value)


@pytest.mark.parametrize("resize", ["center", "stretch"])
def test_large_jpeg_reduced_decode_matches_full_decode(tmp_path, resize):
    """Big JPEGs are decoded at reduced DCT scale; the result must match a full decode + resize within a few levels."""
    from dd.data.folders import load_image

    yy, xx = np.mgrid[0:300, 0:400]
    img = np.stack([xx * 255 // 399, yy * 255 // 299, (xx + yy) * 255 // 698], -1).astype(np.uint8)
    save_image(tmp_path / "big.JPEG", img, "JPEG")
    got = load_image(tmp_path / "big.JPEG", 64, resize).astype(float)
    with Image.open(tmp_path / "big.JPEG") as im:  # reference: full-size decode, then the same geometry
        im = im.convert("RGB")
        if resize == "stretch":
            ref = im.resize((64, 64), Image.BILINEAR)
        else:
            ref = im.resize((85, 64), Image.BILINEAR).crop((10, 0, 74, 64))  # 400x300 -> 85.3x64, center 64 columns
    assert got.shape == (64, 64, 3)
    assert np.abs(got - np.asarray(ref, dtype=float)).mean() < 2.0


def test_imagefolder_missing_dir_names_path(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"missing directory .*train.*\{train,val\}/<wnid>/\*\.JPEG"):
        load_dataset("imagewoof", root=str(tmp_path / "nowhere"))
