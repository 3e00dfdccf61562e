"""Datasets in memory (uint8) and file-backed behind one interface: exact values, every consumer on a small generated
ImageFolder tree forced file-backed (same results as in memory), folder:PATH and package.module:callable datasets,
unreadable files reported by path and class (skipped only when asked), and ZCA."""
from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dd.buffers import TrajectoryStore, record_buffer
from dd.buffers.config import BufferConfig
from dd.buffers.store import shard_name
from dd.cli import main
from dd.data import BadImageError, DatasetNotFoundError, FileImages, Uint8Images, load_dataset, stratified_split
from dd.data.base import normalize_uint8
from dd.data.zca import ZCA
from dd.eval import evaluate, evaluate_full, evaluate_random, get_protocol
from dd.eval.train import accuracy
from dd.methods import build_method, distill
from dd.synset import SyntheticSet

CLASSES = ("ant", "bee", "cat")
TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 3
FILES = {"file_backed_above_mib": 0, "workers": 1}  # forced file-backed, decoded by one DataLoader worker process
RUN = {"iterations": 2, "eval_every": 0, "eval_runs": 0, "progress": False}


def write_tree(root, classes=CLASSES, train=TRAIN_PER_CLASS, val=VAL_PER_CLASS, seed=0, fmt="PNG", size=(20, 16)):
    """root/{train,val}/<class>/img_k.png: 20x16 (w x h) class-tinted noise, lossless so decodes are exact."""
    rng = np.random.default_rng(seed)
    for split, k in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(k):
                tint = np.array([60 * c + 20, 200 - 50 * c, 90], dtype=np.int64)
                a = np.clip(tint + rng.integers(-40, 40, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(folder / f"img_{j}.{'png' if fmt == 'PNG' else 'jpg'}", format=fmt)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("tree") / "pets")


def folder(tree, **kw):
    return load_dataset(f"folder:{tree}", res=16, **kw)


@pytest.fixture(scope="module")
def mem(tree):
    return folder(tree)


def files(tree):
    """A fresh file-backed load (fresh decode counters)."""
    return folder(tree, **FILES)


def tiny(epochs=1, **kw):
    return get_protocol("hard", epochs=epochs, **kw)


# ---------------------------------------------------------------- in memory: uint8, the same floats as before

def test_uint8_in_memory_sets_hold_exactly_the_old_normalized_values():
    from importlib import resources

    ds = load_dataset("mnist10k")
    assert isinstance(ds.train, Uint8Images) and ds.train.pixels.dtype == torch.uint8
    with resources.files("dd.data").joinpath("assets/mnist10k.npz").open("rb") as f:
        z = np.load(f)
        images, labels = z["images"], z["labels"]
    tr, te = stratified_split(labels, 0.2, seed=0)
    old = normalize_uint8(images, (0.1307,), (0.3081,))  # what the loader stored before: the whole set normalized
    assert torch.equal(ds.train_images, old[tr]) and torch.equal(ds.test_images, old[te])
    idx = torch.tensor([5, 0, 7999, 17])
    assert torch.equal(ds.train.batch(idx), old[tr][idx])
    assert ds.train.nbytes * 4 == old[tr].numel() * 4 == ds.train_images.numel() * ds.train_images.element_size()


def test_cifar_format_is_uint8_and_equal_to_the_float32_normalization(tmp_path):
    folder_ = tmp_path / "cifar-10-batches-py"
    folder_.mkdir()
    rng = np.random.default_rng(0)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        with open(folder_ / name, "wb") as f:
            pickle.dump({b"data": rows[name], b"labels": list(rng.integers(0, 10, 4))}, f, protocol=2)
    with open(folder_ / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, f, protocol=2)
    ds = load_dataset("cifar10", root=str(tmp_path))
    stats = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    train = np.concatenate([rows[f"data_batch_{i}"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert ds.train.kind == "uint8" and ds.describe["storage"] == "uint8"
    assert torch.equal(ds.train_images, normalize_uint8(train, *stats, channels_last=False))
    assert torch.equal(ds.test_images, normalize_uint8(rows["test_batch"].reshape(-1, 3, 32, 32), *stats, channels_last=False))
    train_part, val = ds.split_validation(0.25, seed=0)  # carves keep uint8
    assert train_part.train.kind == "uint8" and val.test.kind == "uint8"


def test_zca_still_whitens_in_memory_sets_and_refuses_file_backed_ones(tree, mem):
    white = folder(tree, zca=False)
    ref = ZCA.fit(white.train_images, eps=0.1)
    white = load_dataset(f"folder:{tree}", res=16, zca=True)
    assert white.zca is not None and white.train.kind == "float32"
    assert torch.allclose(white.test_images, ref.apply(mem.test_images), atol=1e-4)
    assert torch.allclose(white.zca.inverse(white.test_images), mem.test_images, atol=1e-4)
    with pytest.raises(ValueError, match="ZCA whitening needs the whole training split .* file-backed"):
        load_dataset(f"folder:{tree}", res=16, zca=True, **FILES)


# ---------------------------------------------------------------- folder:PATH and package.module:callable

def test_folder_tree_in_memory_and_file_backed_read_the_same_images(tree, mem):
    fb = files(tree)
    assert mem.class_names == list(CLASSES) and mem.num_classes == 3 and mem.image_size == (16, 16)
    assert mem.name == f"folder:{tree}" and mem.train.kind == "uint8" and not mem.file_backed
    assert isinstance(fb.train, FileImages) and fb.file_backed and fb.describe["storage"] == "files"
    assert len(fb.train) == 3 * TRAIN_PER_CLASS and fb.test_labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert torch.equal(fb.train_labels, mem.train_labels)
    for split in ("train", "test"):
        got = torch.cat([x for _, x in getattr(fb, split).batches(4)])
        assert torch.equal(got, getattr(mem, split).materialize())
    idx = torch.tensor([7, 2, 11])
    assert torch.equal(fb.train.batch(idx), mem.train_images[idx])
    with pytest.raises(RuntimeError, match=r"file-backed \(18 images decoded from disk on demand\).*\.batches"):
        fb.train_images
    # the center crop of a 20x16 image at 16 px drops 2 columns on each side
    raw = np.asarray(Image.open(tree / "train" / "bee" / "img_0.png").convert("RGB"))[:, 2:18]
    expected = normalize_uint8(raw[None], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[0]
    assert torch.equal(fb.train.batch(torch.tensor([TRAIN_PER_CLASS]))[0], expected)


def test_batches_are_assembled_from_decoded_chunks(tree, mem, bad_tree, monkeypatch):
    from dd.data import file_images

    monkeypatch.setattr(file_images, "DECODE_CHUNK", 2)  # workers decode 2 images at a time; batches of 5 from 3 chunks
    fb = files(tree)
    order = torch.randperm(len(fb.train), generator=torch.Generator().manual_seed(1))
    for reuse in (False, True):
        got = [(idx.clone(), x.clone()) for idx, x in fb.train.batches(5, order=order, reuse=reuse)]
        assert [len(i) for i, _ in got] == [5, 5, 5, 3]
        assert torch.equal(torch.cat([i for i, _ in got]), order)
        assert torch.equal(torch.cat([x for _, x in got]), mem.train_images[order])
    skip = load_dataset(f"folder:{bad_tree}", res=16, skip_bad_images=True, **FILES)
    with pytest.warns(UserWarning, match=r"train/bee/img_5\.jpg"):
        sizes = [len(idx) for idx, _ in skip.train.batches(5)]
    assert sizes == [5, 5, 4, 3]  # bee img_5 is position 6 + 5 = 11, in the third batch (positions 10..14)


def test_folder_errors_name_the_expected_path(tmp_path, tree):
    with pytest.raises(DatasetNotFoundError, match=rf"missing directory {tmp_path / 'nowhere'} for dataset"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "half" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=rf"missing directory {tmp_path / 'half' / 'val'}; expected an "
                                                   r"ImageFolder tree at .*/train/<class>/<image files>"):
        load_dataset(f"folder:{tmp_path / 'half'}")
    (tmp_path / "half" / "val" / "b").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=r"val has class folder\(s\) with no training folder: b"):
        load_dataset(f"folder:{tmp_path / 'half'}")
    odd = write_tree(tmp_path / "odd", classes=("x", "y"), train=1, val=1)
    import shutil

    shutil.rmtree(odd / "val" / "y")
    with pytest.raises(DatasetNotFoundError, match=r"1 class folder\(s\) missing under .*odd/val: y"):
        load_dataset(f"folder:{odd}")
    rel = load_dataset("folder:pets", root=str(tree.parent), res=8)  # a relative PATH is read under --data-root
    assert rel.image_size == (8, 8) and len(rel.train) == 18
    with pytest.raises(ValueError, match="dataset 'digits' does not take --res"):
        load_dataset("digits", res=8)
    with pytest.raises(ValueError, match="does not take --file-backed-above"):
        load_dataset("cifar10", root=str(tmp_path), file_backed_above_mib=0)


def test_missing_files_of_a_folder_tree_without_reading_it(tmp_path, tree):
    from dd.data import missing_files

    assert missing_files(f"folder:{tree}") == []
    assert missing_files(f"folder:{tmp_path / 'none'}") == [str(tmp_path / "none")]
    (tmp_path / "half" / "train").mkdir(parents=True)
    assert missing_files(f"folder:{tmp_path / 'half'}") == [str(tmp_path / "half" / "val")]
    assert missing_files("folder:half", root=str(tmp_path)) == [str(tmp_path / "half" / "val")]


def test_run_identity_of_a_folder_tree_is_what_distill_records(tmp_path, tree):
    import json

    from dd.methods.driver import run_identity

    kw = dict(config={"batch_real": 4}, run=RUN, seed=0)
    distill("dm", f"folder:{tree}", 1, out=tmp_path / "o", device="cpu", data_options={"res": 16}, **kw)
    recorded = json.loads((tmp_path / "o" / "config.json").read_text())
    assert recorded["dataset"] == f"folder:{tree}" and recorded["image_size"] == [16, 16]
    assert run_identity("dm", f"folder:{tree}", 1, data_options={"res": 16}, **kw) == recorded
    assert run_identity("dm", f"folder:{tree}", 1, **kw)["image_size"] == [64, 64]  # the folder default, unread
    assert "image_size" not in run_identity("dm", "digits", 1, **kw)


USER_MODULE = '''
import numpy as np
from dd.data import ImageDataset

def make(root=None, res=8):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 3, res, res), dtype=np.uint8)
    y = np.arange(24) % 2
    return ImageDataset.from_uint8("mine", x, y, x[:8], y[:8], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                                   class_names=["odd", "even"])

def not_a_dataset(root=None):
    return "nope"
'''


def test_package_module_callable_dataset(tmp_path, monkeypatch, capsys):
    (tmp_path / "userdata_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_dataset("userdata_mod:make", res=4).image_size == (4, 4)  # data options reach the user's loader
    ds = load_dataset("userdata_mod:make")
    assert ds.name == "userdata_mod:make" and ds.info["user_name"] == "mine" and ds.image_size == (8, 8)
    assert ds.class_names == ["odd", "even"] and ds.train.kind == "uint8"
    r = distill("dm", ds, 2, run=RUN, device="cpu", config={"batch_real": 4})
    assert r.synset.meta["dataset"] == "userdata_mod:make" and r.synset.images.shape == (4, 3, 8, 8)
    with pytest.raises(KeyError, match="cannot load user dataset 'userdata_mod:missing'.*package.module:callable"):
        load_dataset("userdata_mod:missing")
    with pytest.raises(ValueError, match="returned a str, expected a dd.data.ImageDataset"):
        load_dataset("userdata_mod:not_a_dataset")
    path = r.synset.save(tmp_path / "set.safetensors")
    assert main(["eval", str(path), "--models", "mlp", "--epochs", "1", "--runs", "1", "--device", "cpu",
                 "--no-baselines"]) == 0  # the set records its dataset, and the loader is found again
    assert "userdata_mod:make" in capsys.readouterr().out


# ---------------------------------------------------------------- every consumer on a file-backed tree

def test_buffer_recorder_file_backed_records_the_same_experts(tmp_path, tree, mem):
    cfg = BufferConfig(dataset=f"folder:{tree}", model="convnet-d1", model_options={"width": 8}, experts=1, epochs=2,
                       batch_size=5, lr=0.05)
    record_buffer(cfg, tmp_path / "mem", device="cpu", dataset=mem, progress=False, log=lambda s: None)
    record_buffer(cfg, tmp_path / "files", device="cpu", progress=False, log=lambda s: None,
                  data_options={"res": 16, **FILES})
    a, b = (tmp_path / d / shard_name(0) for d in ("mem", "files"))
    assert a.read_bytes() == b.read_bytes()  # same batches, same floats, same experts
    assert TrajectoryStore(tmp_path / "files").dataset_name == f"folder:{tree}"
    with pytest.raises(ValueError, match="image_size \\[16, 16\\], but the data now has \\[8, 8\\]"):
        record_buffer(cfg, tmp_path / "files", device="cpu", progress=False, log=lambda s: None,
                      data_options={"res": 8, **FILES})


def test_test_set_evaluation_and_full_data_baseline_file_backed(tree, mem):
    fb = files(tree)
    s = SyntheticSet.from_real(mem, 2, torch.Generator().manual_seed(0))
    got = evaluate(s, "convnet-d1", tiny(3), runs=2, dataset=fb, device="cpu", progress=False)
    ref = evaluate(s, "convnet-d1", tiny(3), runs=2, dataset=mem, device="cpu", progress=False)
    assert got.accs == ref.accs
    assert fb.test.stats["decoded"] == 2 * len(fb.test) and fb.train.stats["decoded"] == 0
    full = evaluate_full(fb, "convnet-d1", tiny(), runs=1, epochs=2, device="cpu", progress=False)
    assert full.accs == evaluate_full(mem, "convnet-d1", tiny(), runs=1, epochs=2, device="cpu", progress=False).accs
    assert fb.train.stats["decoded"] == 2 * len(fb.train)  # two epochs streamed, never one tensor
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    assert accuracy(m, fb.test, fb.test_labels) == accuracy(m, mem.test_images, mem.test_labels)


def test_random_real_reads_only_the_sampled_files(tree, mem):
    fb = files(tree)
    got = evaluate_random(fb, 2, "mlp", tiny(2), runs=2, device="cpu", progress=False)
    ref = evaluate_random(mem, 2, "mlp", tiny(2), runs=2, device="cpu", progress=False)
    assert got.accs == ref.accs
    assert fb.train.stats["decoded"] == 2 * 2 * 3  # ipc x classes x runs, of 18 files
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(SyntheticSet.from_real(fb, 3, g1).images, SyntheticSet.from_real(mem, 3, g2).images)


def test_teacher_protocol_full_baseline_reads_crop_views_file_backed(tree, mem):
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)).eval()
    p = get_protocol("teacher", epochs=1, batch_size=4)
    got = evaluate_full(files(tree), "mlp", p, runs=1, device="cpu", teacher=teacher, progress=False)
    ref = evaluate_full(mem, "mlp", p, runs=1, device="cpu", teacher=teacher, progress=False)
    assert got.accs == ref.accs


def test_validation_split_and_lr_search_file_backed(tree, mem):
    fb = files(tree)
    train, val = fb.split_validation(0.34, seed=0)
    assert isinstance(train.train, FileImages) and isinstance(val.test, FileImages)
    _, mval = mem.split_validation(0.34, seed=0)
    assert torch.equal(torch.cat([x for _, x in val.test.batches(100)]), mval.test_images)
    got = evaluate_random(fb, 1, "mlp", tiny(1), runs=1, device="cpu", progress=False, lr_search=[0.01, 0.1])
    ref = evaluate_random(mem, 1, "mlp", tiny(1), runs=1, device="cpu", progress=False, lr_search=[0.01, 0.1])
    assert got.extra["lr_search"] == ref.extra["lr_search"] and got.accs == ref.accs


@pytest.mark.parametrize("method,config", [("dm", {"batch_real": 4}), ("datadam", {"batch_real": 4})])
def test_dm_and_datadam_real_batches_file_backed(tree, mem, method, config):
    run = {**RUN, "eval_every": 2, "val_epochs": 1}  # validates on a carve of the file-backed training split
    got = distill(method, files(tree), 2, run=run, device="cpu", config=config)
    ref = distill(method, mem, 2, run=run, device="cpu", config=config)
    assert torch.equal(got.synset.images, ref.synset.images) and got.history == ref.history


@pytest.fixture(scope="module")
def bn_teacher(tmp_path_factory, tree):
    """The squeeze step on the file-backed tree: a BatchNorm ConvNet recorded by the buffer recorder."""
    path = tmp_path_factory.mktemp("teacher") / "bn"
    cfg = BufferConfig(dataset=f"folder:{tree}", model="convnet-bn", model_options={"width": 8, "depth": 2}, experts=1,
                       epochs=2, lr=0.05, batch_size=6)
    record_buffer(cfg, path, device="cpu", progress=False, log=lambda s: None, data_options={"res": 16, **FILES})
    return path


@pytest.mark.parametrize("method", ["sre2l", "cda"])
def test_sre2l_and_cda_real_init_file_backed(tree, mem, bn_teacher, method):
    config = {"init": "real", "batch_classes": 3, "jitter": 1}
    fb = files(tree)
    got = build_method(method, fb, 2, config, teachers=[str(bn_teacher)], device="cpu")
    ref = build_method(method, mem, 2, config, teachers=[str(bn_teacher)], device="cpu")
    assert torch.equal(got.images, ref.images)
    assert fb.train.stats["decoded"] == 2 * 3  # only the init images were read
    got.num_steps(1)
    assert torch.isfinite(torch.tensor(got.step(0)["loss"]))


def test_cli_buffer_and_eval_on_a_folder_tree(tmp_path, tree, mem, capsys):
    assert main(["buffer", "--dataset", f"folder:{tree}", "--res", "16", "--file-backed-above", "0", "--data-workers",
                 "1", "--model", "convnet-d1", "--experts", "1", "--epochs", "1", "--no-dsa", "--quiet", "--device",
                 "cpu", "--out", str(tmp_path / "buf")]) == 0
    s = SyntheticSet.from_real(mem, 1, torch.Generator().manual_seed(0))
    path = s.save(tmp_path / "set.safetensors")
    assert s.meta["dataset"] == f"folder:{tree}" and s.meta["image_size"] == [16, 16]
    # the set's resolution is used again without --res
    assert main(["eval", str(path), "--baseline", "random", "--models", "mlp", "--epochs", "1", "--runs", "1",
                 "--device", "cpu", "--file-backed-above", "0", "--data-workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "random-real [mlp" in out and "synthetic [mlp" in out


# ---------------------------------------------------------------- unreadable files: by path and class

@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory):
    root = write_tree(tmp_path_factory.mktemp("bad") / "pets", fmt="JPEG")
    good = (root / "train" / "bee" / "img_0.jpg").read_bytes()
    (root / "train" / "bee" / "img_5.jpg").write_bytes(good[: len(good) * 6 // 10])  # truncated
    (root / "val" / "cat" / "img_1.jpg").write_bytes(b"not an image at all")  # unreadable
    return root


def test_unreadable_files_stop_an_in_memory_load_naming_path_and_class(bad_tree):
    with pytest.raises(BadImageError, match=r"cannot read image .*train/bee/img_5\.jpg \(class 'bee', label 1, train "
                                            r"split of 'folder:.*'\): OSError: .*[Tt]runcated.*--skip-bad-images"):
        load_dataset(f"folder:{bad_tree}", res=16)
    with pytest.warns(UserWarning) as caught:
        ds = load_dataset(f"folder:{bad_tree}", res=16, skip_bad_images=True)
    messages = [str(w.message) for w in caught]
    assert any("train/bee/img_5.jpg (class 'bee'" in m for m in messages)
    assert any("skipping unreadable image" in m and "val/cat/img_1.jpg (class 'cat'" in m for m in messages)
    assert len(ds.train) == 3 * TRAIN_PER_CLASS - 1 and len(ds.test) == 3 * VAL_PER_CLASS - 1
    assert torch.bincount(ds.test_labels).tolist() == [3, 3, 2]


def test_unreadable_files_file_backed_are_reported_from_workers_by_path_and_class(tmp_path, bad_tree, capsys):
    ds = load_dataset(f"folder:{bad_tree}", res=16, **FILES)  # the index loads; files are read when used
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    with pytest.raises(BadImageError, match=r"val/cat/img_1\.jpg \(class 'cat', label 2, test split .*"
                                            r"UnidentifiedImageError"):
        accuracy(m, ds.test, ds.test_labels)  # decoded in a DataLoader worker, raised here as a BadImageError
    with pytest.raises(BadImageError, match=r"train/bee/img_5\.jpg \(class 'bee'"):
        ds.real().all_of(1)  # decoded in threads
    cfg = BufferConfig(dataset=f"folder:{bad_tree}", model="mlp", experts=1, epochs=1, batch_size=8, dsa=False)
    with pytest.raises(BadImageError, match=r"train/bee/img_5\.jpg \(class 'bee'"):
        record_buffer(cfg, tmp_path / "buf", device="cpu", progress=False, log=lambda s: None,
                      data_options={"res": 16, **FILES})
    args = ["eval", "--baseline", "full", "--dataset", f"folder:{bad_tree}", "--res", "16", "--file-backed-above",
            "0", "--data-workers", "1", "--models", "mlp", "--epochs", "1", "--runs", "1", "--device", "cpu",
            "--out", str(tmp_path / "ev")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ddtk eval: error: cannot read image" in err and "(class 'bee'" in err and "Traceback" not in err
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert main(args + ["--skip-bad-images"]) == 0


def test_skipping_unreadable_files_file_backed(tmp_path, bad_tree):
    ds = load_dataset(f"folder:{bad_tree}", res=16, skip_bad_images=True, **FILES)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    with pytest.warns(UserWarning, match=r"val/cat/img_1\.jpg"):
        acc = accuracy(m, ds.test, ds.test_labels)
    with pytest.warns(UserWarning):
        readable = load_dataset(f"folder:{bad_tree}", res=16, skip_bad_images=True)  # in memory, bad files left out
    assert acc == accuracy(m, readable.test_images, readable.test_labels)  # scored on the 8 readable images
    real = ds.real()
    with pytest.warns(UserWarning, match=r"train/bee/img_5\.jpg"):
        bees = real.all_of(1)
    assert len(bees) == TRAIN_PER_CLASS - 1
    g = torch.Generator().manual_seed(0)
    for _ in range(4):  # every draw of 5 of the 6 bees is filled up to 5 readable images
        assert len(real.sample(1, TRAIN_PER_CLASS - 1, g)) == TRAIN_PER_CLASS - 1
    with pytest.raises(ValueError, match="class 1 has fewer than 6 readable training images"):
        real.sample(1, TRAIN_PER_CLASS, g)
    assert str(bad_tree / "train" / "bee" / "img_5.jpg") in ds.train.bad
    rows = [x.clone() for _, x in ds.train.batches(7)]
    assert sum(len(x) for x in rows) == 3 * TRAIN_PER_CLASS - 1
    # training passes go on without the file: crop views (mixing partners included) and a buffer epoch
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)).eval()
    p = get_protocol("teacher", epochs=1, batch_size=4, mix="cutmix")
    assert len(evaluate_full(ds, "mlp", p, runs=1, device="cpu", teacher=teacher, progress=False).accs) == 1
    cfg = BufferConfig(dataset=f"folder:{bad_tree}", model="mlp", experts=1, epochs=1, batch_size=5, dsa=False)
    record_buffer(cfg, tmp_path / "buf", device="cpu", dataset=ds, progress=False, log=lambda s: None)
    assert TrajectoryStore(tmp_path / "buf").num_experts == 1


def test_image_sources_pickle_for_worker_processes(tree):
    """Spawned workers (not only forked ones) get the index: the worker dataset pickles without Python objects per file."""
    from dd.data.file_images import _DecodeDataset

    fb = files(tree)
    d = pickle.loads(pickle.dumps(_DecodeDataset(fb.train.root, fb.train.rel, 16, "center")))
    i, pixels, err = d[3]
    assert err is None and pixels.shape == (16, 16, 3) and fb.train.rel.dtype.kind == "S"
    assert sys.getsizeof(fb.train.rel) < 200 + 64 * len(fb.train)
