"""dd.data.missing_files names what a dataset's loader would read and is absent, without loading anything."""
from pathlib import Path

import pytest

from dd.data import DATASETS, DatasetNotFoundError, load_dataset, missing_files
from dd.data.folders import SUBSETS
from dd.data.registry import FILES

FILE_DATASETS = [n for n in DATASETS.names() if n not in ("mnist10k", "digits")]


def test_every_registered_dataset_has_a_check():
    assert set(DATASETS.names()) <= set(FILES)


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

    monkeypatch.setitem(DATASETS._items, "user-set", loader)
    assert missing_files("user-set", "/nowhere") == ["missing /nowhere/mine"]
    assert calls == ["/nowhere"]


def test_an_unknown_dataset_is_a_key_error():
    with pytest.raises(KeyError, match="unknown dataset"):
        missing_files("no-such-set")
