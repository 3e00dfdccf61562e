"""SyntheticSet: bit-exact round trips, refusal of corrupted/foreign files, MTT and DC-BENCH imports, PNG grids."""
import json
import os
import struct

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dd.data import load_dataset
from dd.synset import SyntheticSet, SyntheticSetError, import_pt


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist10k")


def make_set(soft=False, lr=0.0123456789, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(20, 1, 28, 28, generator=g)
    hard = torch.arange(10).repeat(2)
    labels = torch.softmax(torch.randn(20, 10, generator=g) + 5 * torch.eye(10)[hard], 1) if soft else hard
    meta = {"dataset": "mnist10k", "method": "dm", "seed": 3, "config": {"lr_img": 1.0, "archs": ["convnet", "mlp"]},
            "normalization": {"mean": [0.1307], "std": [0.3081]}, "note": "ünïcode ok"}
    extra = {"teacher_logits": torch.randn(20, 10, generator=g, dtype=torch.float64)}
    return SyntheticSet(images, labels, 10, lr, meta, extra)


def assert_same(a: SyntheticSet, b: SyntheticSet):
    assert torch.equal(a.images, b.images) and a.images.dtype == b.images.dtype
    assert torch.equal(a.labels, b.labels) and a.labels.dtype == b.labels.dtype
    assert a.num_classes == b.num_classes and a.lr == b.lr and a.meta == b.meta
    assert a.extra.keys() == b.extra.keys()
    for k in a.extra:
        assert torch.equal(a.extra[k], b.extra[k]) and a.extra[k].dtype == b.extra[k].dtype


@pytest.mark.parametrize("soft", [False, True])
def test_save_load_round_trip_is_bit_exact(tmp_path, soft):
    s = make_set(soft=soft)
    path = s.save(tmp_path / "set.safetensors")
    back = SyntheticSet.load(path)
    assert_same(s, back)
    assert back.soft is soft and back.ipc == 2


def test_round_trip_without_lr_and_suffix_is_added(tmp_path):
    s = make_set(lr=None)
    path = s.save(tmp_path / "noext")
    assert path.name == "noext.safetensors" and path.exists()
    back = SyntheticSet.load(path)
    assert back.lr is None
    assert_same(s, back)


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path):
    make_set(seed=0).save(tmp_path / "s.safetensors")
    s2 = make_set(seed=1)
    s2.save(tmp_path / "s.safetensors")
    assert os.listdir(tmp_path) == ["s.safetensors"]
    assert_same(s2, SyntheticSet.load(tmp_path / "s.safetensors"))


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    s = make_set(seed=0)
    s.save(tmp_path / "s.safetensors")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        make_set(seed=1).save(tmp_path / "s.safetensors")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["s.safetensors"]
    assert_same(s, SyntheticSet.load(tmp_path / "s.safetensors"))


def data_region_start(path) -> int:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    json.loads(raw[8:8 + n])  # the header really ends here
    return 8 + n


@pytest.mark.parametrize("where", [0.1, 0.5, 0.999])
def test_flipped_byte_in_data_is_refused_naming_the_file(tmp_path, where):
    path = make_set().save(tmp_path / "set.safetensors")
    raw = bytearray(path.read_bytes())
    start = data_region_start(path)
    pos = start + int((len(raw) - start) * where)
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(SyntheticSetError, match=r"set\.safetensors.*corrupted"):
        SyntheticSet.load(path)


def test_truncated_file_is_refused(tmp_path):
    path = make_set().save(tmp_path / "set.safetensors")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SyntheticSetError, match=r"set\.safetensors.*truncated or corrupted"):
        SyntheticSet.load(path)
    path.write_bytes(raw[:5])
    with pytest.raises(SyntheticSetError, match="truncated or corrupted"):
        SyntheticSet.load(path)


def test_foreign_safetensors_and_missing_files_are_refused(tmp_path):
    save_file({"weight": torch.randn(3, 3)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SyntheticSetError, match=r"model\.safetensors.*not a dd synthetic set"):
        SyntheticSet.load(tmp_path / "model.safetensors")
    with pytest.raises(SyntheticSetError, match="no synthetic set at"):
        SyntheticSet.load(tmp_path / "absent.safetensors")


def test_mtt_images_best_imports_with_labels_and_learned_lr(tmp_path):
    images, labels = torch.randn(30, 3, 32, 32), torch.arange(10).repeat_interleave(3)
    torch.save(images, tmp_path / "images_best.pt")
    torch.save(labels, tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.0125, requires_grad=True).detach(), tmp_path / "lr_best.pt")
    s = SyntheticSet.load(tmp_path / "images_best.pt")
    assert torch.equal(s.images, images) and torch.equal(s.labels, labels)
    assert s.num_classes == 10 and s.ipc == 3 and s.lr == pytest.approx(0.0125)
    assert s.meta["imported_from"].endswith("images_best.pt")
    # and it survives a save -> load in dd's own format
    assert_same(s, SyntheticSet.load(s.save(tmp_path / "imported.safetensors")))


def test_mtt_soft_labels_and_missing_labels(tmp_path):
    images, soft = torch.randn(20, 3, 8, 8), torch.softmax(torch.randn(20, 10), 1)
    torch.save(images, tmp_path / "images_best.pt")
    with pytest.raises(SyntheticSetError, match="labels_best.pt"):
        SyntheticSet.load(tmp_path / "images_best.pt")
    torch.save(soft, tmp_path / "labels_best.pt")
    s = SyntheticSet.load(tmp_path / "images_best.pt")
    assert s.soft and s.num_classes == 10 and torch.equal(s.labels, soft) and s.lr is None


def test_dcbench_result_dict_imports(tmp_path):
    images, labels = torch.randn(10, 3, 32, 32), torch.arange(10)
    torch.save({"data": [[images, labels]], "accs_all_exps": {"ConvNet": [0.3]}}, tmp_path / "res_DC_CIFAR10_ConvNet_1ipc.pt")
    s = import_pt(tmp_path / "res_DC_CIFAR10_ConvNet_1ipc.pt")
    assert torch.equal(s.images, images) and torch.equal(s.labels, labels) and s.ipc == 1 and s.num_classes == 10


class NotATensor:
    pass


def test_unsafe_pickles_are_refused(tmp_path):
    torch.save(NotATensor(), tmp_path / "images_best.pt")
    with pytest.raises(SyntheticSetError, match="weights_only=True"):
        SyntheticSet.load(tmp_path / "images_best.pt")


def test_from_real_gives_ipc_training_images_per_class(mnist):
    s = SyntheticSet.from_real(mnist, 3, torch.Generator().manual_seed(0))
    assert s.images.shape == (30, 1, 28, 28) and s.ipc == 3
    assert torch.bincount(s.labels, minlength=10).tolist() == [3] * 10
    train = mnist.train_images.flatten(1)
    for img, lab in zip(s.images, s.labels):  # every image is a training image of its own class
        hits = torch.nonzero((train == img.flatten()).all(1)).flatten()
        assert len(hits) >= 1 and (mnist.train_labels[hits] == lab).all()
    other = SyntheticSet.from_real(mnist, 3, torch.Generator().manual_seed(1))
    assert not torch.equal(s.images, other.images)
    assert s.meta["dataset"] == "mnist10k" and s.meta["ipc"] == 3
    with pytest.raises(ValueError, match="fewer than ipc"):
        SyntheticSet.from_real(mnist, 10_000)


def grid_set(ipc, side=28, shuffle=True):
    labels = torch.arange(10).repeat_interleave(ipc)
    images = (labels.float() / 9).view(-1, 1, 1, 1).expand(-1, 1, side, side).clone()  # class c is grey c/9
    if shuffle:
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        images, labels = images[perm], labels[perm]
    return SyntheticSet(images, labels, 10)  # no normalization recorded: pixel space already


@pytest.mark.parametrize("ipc,max_per_class,side,cols,cell", [
    (3, 10, 28, 3, 56),   # 28 px upscaled x2 (64 // 28)
    (5, 2, 28, 2, 56),    # capped at 2 per row
    (1, 10, 28, 1, 56),   # IPC-1: one column, not ten
    (2, None, 8, 2, 64),  # 8 px upscaled x8
])
def test_save_grid_png_has_one_row_per_class(tmp_path, ipc, max_per_class, side, cols, cell):
    out = grid_set(ipc, side).save_grid(tmp_path / "grid.png", max_per_class)
    img = Image.open(out)
    pad = 2
    assert img.size == (cols * (cell + pad) + pad, 10 * (cell + pad) + pad)  # (width, height)
    px = img.convert("L")
    for c in range(10):
        centre_y = pad + c * (cell + pad) + cell // 2
        for k in range(cols):
            assert abs(px.getpixel((pad + k * (cell + pad) + cell // 2, centre_y)) - round(255 * c / 9)) <= 1
    assert os.listdir(tmp_path) == ["grid.png"]


def test_display_undoes_the_recorded_normalization():
    pixels = torch.rand(10, 1, 4, 4)
    s = SyntheticSet((pixels - 0.1307) / 0.3081, torch.arange(10), 10,
                     meta={"normalization": {"mean": [0.1307], "std": [0.3081]}})
    shown, per = s.display_images()
    assert per == 1
    torch.testing.assert_close(shown, pixels, atol=1e-6, rtol=0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="N, C, H, W"):
        SyntheticSet(torch.zeros(3, 28, 28), torch.zeros(3, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        SyntheticSet(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="num_classes=10"):
        SyntheticSet(torch.zeros(3, 1, 2, 2), torch.zeros(3, 4), 10)


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os
    import stat

    from dd.utils import atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode) == 0o644
