"""Config resolution before data, declared inputs (buffers, teachers), and every form of a teacher spec."""
import json

import pytest
import torch
from safetensors.torch import save_file

from dd.buffers import record_buffer
from dd.buffers.config import BufferConfig
from dd.data import DATASETS, load_dataset, register_dataset
from dd.methods import build_method, prepare
from dd.methods.trajectory_presets import MTT_TABLE
from dd.models import build_model
from dd.teachers import open_teacher


@pytest.fixture(scope="module")
def presetted(tmp_path_factory):
    """A registered dataset 'digits-zca' whose MTT preset says zca=True and model convnet-d1, and its ZCA buffer."""
    @register_dataset("digits-zca", help="digits under another name, for preset tests")
    def loader(root=None):
        ds = load_dataset("digits")
        ds.name = "digits-zca"
        return ds

    MTT_TABLE[("digits-zca", 1)] = dict(syn_steps=2, expert_epochs=1, max_start_epoch=0, zca=True, batch_syn=None,
                                         lr_img=10.0, lr_lr=1e-6, lr_teacher=0.01, model="convnet-d1")
    path = tmp_path_factory.mktemp("buf") / "zca"
    cfg = BufferConfig(dataset="digits-zca", model="convnet-d1", model_options={"width": 4}, experts=1, epochs=1,
                       batch_size=256, zca=True)
    record_buffer(cfg, path, device="cpu", progress=False, log=lambda s: None)
    yield path
    del MTT_TABLE[("digits-zca", 1)]
    DATASETS._items.pop("digits-zca")


def test_a_presets_zca_and_model_are_applied_before_the_data_is_loaded(presetted):
    cls, cfg, inputs, data = prepare("mtt", "digits-zca", 1, {}, buffers=[presetted])
    assert cfg.zca is True and cfg.model == "convnet-d1" and cfg.syn_steps == 2
    assert data.zca is not None  # loaded whitened because the preset said so
    m = build_method("mtt", "digits-zca", 1, {}, buffers=[presetted])
    assert m.dataset.zca is not None and m.config.model == "convnet-d1"
    assert m.hp["lr_teacher"] == 0.01  # the buffer's expert lr (manifest) fills an unset lr_teacher
    # the user beats the preset: zca off then no longer matches the buffer, and says so before any data is read
    with pytest.raises(ValueError, match="recorded with zca=True but this run resolves zca=False"):
        prepare("mtt", "digits-zca", 1, {"zca": False}, buffers=[presetted])
    with pytest.raises(ValueError, match="model 'convnet-d1' but this run uses model 'convnet'"):
        prepare("mtt", "digits-zca", 1, {"model": "convnet"}, buffers=[presetted])


def test_the_resolved_config_is_stored_in_the_set(presetted, tmp_path):
    from dd.methods import distill

    run = {"iterations": 1, "eval_every": 0, "eval_runs": 0, "progress": False}
    res = distill("mtt", "digits-zca", 1, buffer=presetted, run=run, out=tmp_path, device="cpu")
    assert res.synset.meta["config"]["zca"] is True and res.synset.meta["config"]["syn_steps"] == 2
    assert res.synset.meta["inputs"]["buffers"][0]["sha256"] == res.synset.meta["buffer_sha256"]
    assert json.loads((tmp_path / "config.json").read_text())["config"]["model"] == "convnet-d1"


def test_ipc_must_be_positive():
    with pytest.raises(ValueError, match="--ipc must be a positive"):
        prepare("dm", "digits", 0)


# ---- teacher specs ----------------------------------------------------------------------------------



def _net(digits):
    torch.manual_seed(3)
    return build_model("convnet-bn", 1, 10, (8, 8), width=8, depth=2).eval()


def test_checkpoint_teachers_load_weights_only_and_need_their_architecture(digits, tmp_path):
    net = _net(digits)
    x = digits.test_images[:4]
    pt = tmp_path / "t.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, pt)
    with pytest.raises(ValueError, match="does not say its architecture; pass --teacher-model"):
        open_teacher(str(pt))
    src = open_teacher(str(pt), "convnet-bn")
    with pytest.raises(ValueError, match="does not fit model 'convnet-bn'"):
        src.module(digits)  # width 128 by default: the shapes differ
    st = tmp_path / "t.safetensors"
    save_file(net.state_dict(), st, metadata={"model": "convnet-bn", "model_options": json.dumps({"width": 8, "depth": 2}),
                                              "dataset": "digits"})
    src = open_teacher(str(st))
    assert src.kind == "file" and src.arch == "convnet-bn" and len(src.sha256) == 64
    assert torch.allclose(src.module(digits)(x), net(x))
    with pytest.raises(ValueError, match="trained on dataset 'digits' but this run uses 'mnist10k'"):
        src.check_compatible("mnist10k", False)
    torch.save(net, tmp_path / "pickled.pt")  # a whole pickled module is refused, never unpickled
    with pytest.raises(ValueError, match="weights-only"):
        open_teacher(str(tmp_path / "pickled.pt"), "convnet-bn")
    with pytest.raises(FileNotFoundError, match="neither a buffer directory"):
        open_teacher(str(tmp_path / "missing.pt"))


def test_callable_and_buffer_teachers(digits, tmp_path, monkeypatch):
    import sys
    import types

    net = _net(digits)
    mod = types.ModuleType("my_teachers")
    mod.make = lambda: net
    monkeypatch.setitem(sys.modules, "my_teachers", mod)
    src = open_teacher("my_teachers:make")
    assert src.kind == "callable" and src.module(digits) is net
    cfg = BufferConfig(dataset="digits", model="convnet-bn", model_options={"width": 4, "depth": 1}, experts=2, epochs=1)
    record_buffer(cfg, tmp_path / "buf", device="cpu", progress=False, log=lambda s: None)
    a, b = open_teacher(str(tmp_path / "buf")), open_teacher(f"{tmp_path / 'buf'}@1")
    assert a.sha256 != b.sha256 and a.dataset == "digits" and a.zca is False
    x = digits.test_images[:3]
    assert not torch.allclose(a.module(digits)(x), b.module(digits)(x))
    with pytest.raises(ValueError, match="expert 2 out of range"):
        open_teacher(f"{tmp_path / 'buf'}@2")


def test_torchvision_resnet_weights_load_into_the_zoo_model():
    import torchvision

    tv = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    ours = build_model("resnet18-tv", 3, 5, (64, 64)).eval()
    ours.load_state_dict(ours.adapt_state_dict(tv.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(ours(x), tv(x), atol=1e-5)


def test_teacher_model_once_for_all_or_once_per_teacher(digits, tmp_path):
    from dd.teachers import open_teachers

    net = _net(digits)
    for name in ("a.pt", "b.pt"):
        torch.save(net.state_dict(), tmp_path / name)
    specs = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    assert [t.arch for t in open_teachers(specs, "convnet-bn")] == ["convnet-bn", "convnet-bn"]
    assert [t.arch for t in open_teachers(specs, ["convnet-bn", "convnet-bn-w32"])] == ["convnet-bn", "convnet-bn-w32"]
    with pytest.raises(ValueError, match="given 3 times for 2 teachers"):
        open_teachers(specs, ["a", "b", "c"])
