"""`ddtk export`: .pt tensors that read back exactly (and evaluate to the same accuracy), 8-bit PNG folders in pixel
space, DD-Ranking's class-by-class input, export.json provenance, clear refusals."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dd.cli import main
from dd.data import load_dataset
from dd.data.zca import ZCA
from dd.synset import SyntheticSet
from dd.utils import sha256_file


pytestmark = pytest.mark.usefixtures("one_thread")




def digits_set(digits, ipc=2, lr=None, seed=0):
    s = SyntheticSet.from_real(digits, ipc, torch.Generator().manual_seed(seed), method="dm")
    s.lr = lr
    return s


def soft_version(s, seed=0):
    """The same images with random label distributions peaked on each image's class (a DATM-like soft set)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(s), s.num_classes, generator=g) + 10 * torch.nn.functional.one_hot(s.labels, s.num_classes)
    probs = torch.softmax(logits, 1)
    return SyntheticSet(s.images.clone(), probs, s.num_classes, s.lr, dict(s.meta), dict(s.extra))


# ---- pt ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("soft", [False, True])
def test_pt_export_reads_back_exactly(tmp_path, digits, soft):
    s = digits_set(digits, lr=0.0123456789)
    s = soft_version(s) if soft else s
    src = s.save(tmp_path / "set.safetensors")
    assert main(["export", str(src), "--format", "pt", "--out", str(tmp_path / "pt")]) == 0
    back = SyntheticSet.load(tmp_path / "pt" / "images.pt")
    assert torch.equal(back.images, s.images) and back.images.dtype == torch.float32
    assert torch.equal(back.labels, s.labels) and back.labels.dtype == s.labels.dtype
    assert back.lr == s.lr and back.num_classes == 10
    # plain tensors, readable without dd
    assert torch.equal(torch.load(tmp_path / "pt" / "labels.pt", weights_only=True), s.labels)
    rec = json.loads((tmp_path / "pt" / "export.json").read_text())
    assert rec["format"] == "pt" and rec["source"]["sha256"] == sha256_file(src)
    assert rec["source"]["method"] == "dm" and rec["source"]["dataset"] == "digits" and "torch" in rec["versions"]
    assert rec["source"]["path"] == "../set.safetensors"  # relative to the export: no directory of this machine
    assert str(tmp_path) not in (tmp_path / "pt" / "export.json").read_text()
    assert sorted(rec["files"]) == ["images.pt", "labels.pt", "lr.pt"]
    for name, info in rec["files"].items():
        assert info["sha256"] == sha256_file(tmp_path / "pt" / name)
    assert sorted(p.name for p in (tmp_path / "pt").iterdir()) == ["export.json", "images.pt", "labels.pt", "lr.pt"]


@pytest.mark.parametrize("zca", [False, True])
def test_dd_eval_on_the_exported_pt_gives_the_same_accuracy(tmp_path, digits, zca):
    data = load_dataset("digits", zca=True) if zca else digits
    src = digits_set(data, ipc=3, lr=0.02).save(tmp_path / "orig" / "set.safetensors")
    assert main(["export", str(src), "--format", "pt", "--out", str(tmp_path / "pt")]) == 0
    opts = ["--no-baselines", "--model", "convnet-d1", "--epochs", "2", "--runs", "2", "--device", "cpu", "--seed", "3"]
    assert main(["eval", str(src), *opts]) == 0
    # a .pt file records neither dataset nor ZCA: the command line says them (export.json's notes do too)
    notes = json.loads((tmp_path / "pt" / "export.json").read_text())["notes"]
    assert any(f"--dataset digits{' --zca' if zca else ''} evaluates" in n for n in notes)
    assert main(["eval", str(tmp_path / "pt" / "images.pt"), "--dataset", "digits", *(["--zca"] if zca else []),
                 *opts]) == 0
    a = json.loads((tmp_path / "orig" / "eval.json").read_text())["rows"][0]
    b = json.loads((tmp_path / "pt" / "eval.json").read_text())["rows"][0]
    assert b["accs"] == a["accs"] and b["extra"]["lr"] == a["extra"]["lr"] == 0.02


# ---- imagefolder ---------------------------------------------------------------------------------

def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_imagefolder_writes_one_folder_per_class_of_8bit_pngs_in_pixel_space(tmp_path, digits):
    s = digits_set(digits, ipc=3)
    src = s.save(tmp_path / "set.safetensors")
    out = tmp_path / "folder"
    assert main(["export", str(src), "--format", "imagefolder", "--out", str(out)]) == 0
    classes = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert classes == [str(c) for c in range(10)]
    # independent expectation: from_real picks real images, so pixels are images * std + mean
    norm = s.meta["normalization"]
    pixels = (s.images * torch.tensor(norm["std"]).view(1, -1, 1, 1) + torch.tensor(norm["mean"]).view(1, -1, 1, 1))
    shown, per = s.display_images()
    for c in range(10):
        files = sorted((out / str(c)).iterdir())
        assert [f.name for f in files] == ["0.png", "1.png", "2.png"]
        idx = torch.nonzero(s.labels == c).flatten()
        for i, f in enumerate(files):
            img = Image.open(f)
            assert img.mode == "L" and img.size == (8, 8)
            arr = read_png(f)
            assert arr.dtype == np.uint8
            got = torch.from_numpy(arr.astype(np.float32) / 255)
            assert (got - shown[c * per + i, 0]).abs().max() <= 1 / 255
            assert (got - pixels[idx[i], 0].clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6
    rec = json.loads((out / "export.json").read_text())
    assert rec["format"] == "imagefolder" and rec["files"]["per_class"] == [3] * 10


def test_imagefolder_of_a_zca_rgb_set_undoes_the_whitening(tmp_path):
    g = torch.Generator().manual_seed(0)
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    m, sd = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    real = (torch.rand(200, 3, 4, 4, generator=g) - m) / sd
    zca = ZCA.fit(real)
    pixels = torch.rand(12, 3, 4, 4, generator=g)  # what the PNGs must show
    images = zca.apply((pixels - m) / sd)
    labels = torch.arange(12) % 12  # 12 classes, one image each: folder names need two digits
    s = SyntheticSet(images, labels, 12, meta={"dataset": "toy", "normalization": {"mean": mean, "std": std},
                                              "zca": True}, extra=zca.tensors())
    out = tmp_path / "folder"
    assert main(["export", str(s.save(tmp_path / "set.safetensors")), "--format", "imagefolder", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"{c:02d}" for c in range(12)]
    for c in range(12):
        arr = read_png(out / f"{c:02d}" / "0.png")
        assert arr.shape == (4, 4, 3) and arr.dtype == np.uint8
        got = torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)
        assert (got - pixels[c]).abs().max() <= 1 / 255


def test_imagefolder_refuses_an_empty_class_and_a_set_without_normalization(tmp_path, digits, capsys):
    s = digits_set(digits)
    s.labels[s.labels == 9] = 0  # class 9 has no image any more
    rc = main(["export", str(s.save(tmp_path / "set.safetensors")), "--format", "imagefolder",
               "--out", str(tmp_path / "f")])
    assert rc == 2 and "classes [9] have no image" in capsys.readouterr().err
    src = digits_set(digits).save(tmp_path / "ok.safetensors")
    assert main(["export", str(src), "--format", "pt", "--out", str(tmp_path / "pt")]) == 0
    rc = main(["export", str(tmp_path / "pt" / "images.pt"), "--format", "imagefolder", "--out", str(tmp_path / "g")])
    assert rc == 2 and "records no normalization" in capsys.readouterr().err


# ---- ddranking -----------------------------------------------------------------------------------

def test_ddranking_export_is_class_by_class_with_labels_and_lr(tmp_path, digits):
    s = digits_set(digits, ipc=2, lr=0.03)
    perm = torch.randperm(len(s), generator=torch.Generator().manual_seed(1))
    s = SyntheticSet(s.images[perm], s.labels[perm], 10, s.lr, dict(s.meta), {})  # shuffled order
    out = tmp_path / "ddr"
    assert main(["export", str(s.save(tmp_path / "set.safetensors")), "--format", "ddranking", "--out", str(out)]) == 0
    images = torch.load(out / "images.pt", weights_only=True)
    labels = torch.load(out / "labels.pt", weights_only=True)
    assert torch.equal(labels, torch.arange(10).repeat_interleave(2)) and labels.dtype == torch.int64
    for c in range(10):  # class c's images, in the set's order
        assert torch.equal(images[2 * c: 2 * c + 2], s.images[s.labels == c])
    assert float(torch.load(out / "lr.pt", weights_only=True)) == 0.03
    readme = (out / "README.txt").read_text()
    assert "images.pt" in readme and "hard_labels=labels" in readme and "syn_lr" in readme
    assert json.loads((out / "export.json").read_text())["format"] == "ddranking"


def test_ddranking_soft_labels_are_logits_of_the_distributions(tmp_path, digits):
    s = soft_version(digits_set(digits, ipc=2))
    out = tmp_path / "ddr"
    assert main(["export", str(s.save(tmp_path / "set.safetensors")), "--format", "ddranking", "--out", str(out)]) == 0
    logits = torch.load(out / "labels.pt", weights_only=True)
    order = torch.argsort(s.labels.argmax(1), stable=True)
    torch.testing.assert_close(torch.softmax(logits, 1), s.labels[order], atol=1e-6, rtol=0)
    assert not (out / "lr.pt").exists() and "soft_labels=labels" in (out / "README.txt").read_text()


def test_ddranking_refuses_unequal_class_counts_and_export_refuses_a_used_directory(tmp_path, digits, capsys):
    s = digits_set(digits)
    s.labels[0] = 1  # class 0: 1 image, class 1: 3
    src = s.save(tmp_path / "set.safetensors")
    assert main(["export", str(src), "--format", "ddranking", "--out", str(tmp_path / "d")]) == 2
    assert "same number of images per class" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.png").write_bytes(b"x")
    assert main(["export", str(src), "--format", "pt", "--out", str(tmp_path / "used")]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["old.png"]
