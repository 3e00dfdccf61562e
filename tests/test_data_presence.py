"""dd.data.missing_files names what a dataset's loader would read and is absent, without loading anything."""
from pathlib import Path

import pytest

from dd.data import DATASETS, DatasetEntry, DatasetNotFoundError, load_dataset, missing_files
from dd.data.folders import SUBSETS

FILE_DATASETS = [n for n in DATASETS.names() if n not in ("mnist10k", "digits")]


def test_every_registered_dataset_has_a_check():
    assert all(DATASETS.get(n).missing is not None for n in DATASETS.names())


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_an_empty_root_lists_what_the_loader_then_reports_missing(name, tmp_path):
    missing = missing_files(name, str(tmp_path))
    assert missing, f"{name}: nothing reported missing under an empty root"
    assert all(m.startswith(str(tmp_path)) for m in missing)
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset(name, root=str(tmp_path))
    assert missing[0] in str(e.value), "the check and the loader must name the same place"


def test_embedded_datasets_need_nothing(tmp_path):
    assert missing_files("mnist10k", str(tmp_path)) == []
    assert missing_files("digits") == []


def test_a_partial_cifar10_folder_lists_only_its_absent_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(b"")
    assert missing_files("cifar10", str(tmp_path)) == [str(folder / "test_batch"), str(folder / "batches.meta")]


def test_a_partial_tinyimagenet_lists_the_validation_parts(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    (base / "train").mkdir(parents=True)
    (base / "wnids.txt").write_text("n01443537\n")
    assert missing_files("tinyimagenet", str(tmp_path)) == [str(base / "val" / "images"),
                                                            str(base / "val" / "val_annotations.txt")]


def test_an_imagenet_subset_lists_its_absent_class_folders(tmp_path):
    (tmp_path / "train" / SUBSETS["imagenette"][0][0]).mkdir(parents=True)
    (tmp_path / "val").mkdir()
    missing = missing_files("imagenette", str(tmp_path))
    assert len(missing) == 2 * 10 - 1  # every class folder of both splits but the one made
    assert str(tmp_path / "val" / SUBSETS["imagenette"][0][0]) in missing


def test_a_dataset_registered_without_a_check_is_tried_once(monkeypatch):
    calls = []

    def loader(root=None, **_):
        calls.append(root)
        raise DatasetNotFoundError(f"missing {Path(root) / 'mine'}")

    monkeypatch.setitem(DATASETS._items, "user-set", DatasetEntry("user-set", loader))
    assert missing_files("user-set", "/nowhere") == ["missing /nowhere/mine"]
    assert calls == ["/nowhere"]


def test_an_unknown_dataset_is_a_key_error():
    with pytest.raises(KeyError, match="unknown dataset"):
        missing_files("no-such-set")


USER_DATASET = '''
from pathlib import Path

import numpy as np
from dd.data import DatasetNotFoundError, ImageDataset, register_dataset

def _absent(root):
    return [p for p in (root / "ticks" / "train.npy", root / "ticks" / "test.npy") if not p.exists()]

@register_dataset("ticks", help="stripes saved as .npy under ROOT/ticks", options={"res": 6, "flip": False},
                  missing=_absent)
def ticks(root=None, res=6, flip=False):
    base = Path(root or ".") / "ticks"
    if not (base / "train.npy").exists():
        raise DatasetNotFoundError(f"missing {base / 'train.npy'}")
    x = np.load(base / "train.npy")[:, :, :res, :res]
    y = np.arange(len(x)) % 2
    return ImageDataset.from_uint8("ticks", x, y, x[:4], y[:4], mean=(0.5,), std=(0.25,), class_names=["a", "b"])
'''


def test_a_dataset_registered_outside_dd_declares_its_options_and_files_check(tmp_path, monkeypatch, capsys):
    """One decorated loader in a user module: its declared options reach it, undeclared ones are refused by name,
    its `res` default is the dataset's resolution, and missing_files asks its check (nothing is loaded)."""
    import numpy as np

    from dd.data import resolution

    (tmp_path / "ticks_mod.py").write_text(USER_DATASET)
    monkeypatch.syspath_prepend(str(tmp_path))
    import ticks_mod  # noqa: F401  (registers 'ticks')

    try:
        root = tmp_path / "data"
        assert missing_files("ticks", str(root)) == [str(root / "ticks" / "train.npy"), str(root / "ticks" / "test.npy")]
        assert missing_files("ticks_mod:ticks", str(root)) == missing_files("ticks", str(root))  # same entry
        (root / "ticks").mkdir(parents=True)
        x = np.zeros((8, 1, 6, 6), dtype=np.uint8)
        x[:, :, ::2] = 255
        np.save(root / "ticks" / "train.npy", x)
        assert missing_files("ticks", str(root)) == [str(root / "ticks" / "test.npy")]
        assert load_dataset("ticks", root=str(root)).image_size == (6, 6)
        assert load_dataset("ticks", root=str(root), res=4).image_size == (4, 4)  # a declared option reaches it
        assert resolution("ticks") == 6 and resolution("ticks", {"res": 3}) == 3
        with pytest.raises(ValueError, match="dataset 'ticks' does not take --file-backed-above"):
            load_dataset("ticks", root=str(root), file_backed_above_mib=1)
        with pytest.raises(ValueError, match=r"dataset 'ticks' takes no option 'colour'; it takes: flip, res"):
            load_dataset("ticks", root=str(root), colour=1)
        assert "ticks" in DATASETS.names() and DATASETS.help("ticks").startswith("stripes")
        from dd.cli import main

        assert main(["datasets"]) == 0
        listed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ticks ")]
        assert listed and listed[0].endswith("[options: res=6, flip=False]")
    finally:
        DATASETS._items.pop("ticks", None)
        DATASETS._help.pop("ticks", None)
