"""Trajectory buffers: stored epochs are true snapshots, the store reads them back, and bad buffers are refused."""
import json
import shutil

import pytest
import torch

from dd.buffers import BufferConfig, TrajectoryStore, record_buffer, train_expert
from dd.data import load_dataset
from dd.eval.train import accuracy

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads mostly wait on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(dataset="digits", model="convnet-d1", model_options={"width": 8}, experts=2, epochs=2, batch_size=64, lr=0.1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def small(digits):
    """The first 512 training images: enough to move every weight, quick to train."""
    return digits.with_train(digits.train_images[:512], digits.train_labels[:512])


@pytest.fixture(scope="module")
def buf(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("buf") / "b"
    record_buffer(BufferConfig(**TINY), out, device="cpu", dataset=digits, progress=False, log=lambda s: None)
    return out


def test_each_stored_epoch_is_a_copy_of_the_live_parameters(small):
    """Acceptance 6: snapshot e equals the parameters right after epoch e and differs from epoch e-1."""
    cfg = BufferConfig(**{**TINY, "experts": 1, "epochs": 3})
    live = {}

    def on_epoch(ep, model):
        live[ep] = {n: p.detach().clone() for n, p in model.named_parameters()}

    tensors, _ = train_expert(cfg, small, 0, "cpu", on_epoch=on_epoch)
    names = sorted(live[1])
    for ep in (1, 2, 3):
        for n in names:
            assert torch.equal(tensors[f"p.{ep:04d}.{n}"], live[ep][n]), (ep, n)
        # every weight moves each epoch (a conv bias before a norm layer has zero gradient, so it may not)
        for n in (n for n in names if n.endswith("weight")):
            assert not torch.equal(tensors[f"p.{ep:04d}.{n}"], tensors[f"p.{ep - 1:04d}.{n}"]), (ep, n)


def test_store_reads_flat_dict_and_module_consistently(buf, digits):
    s = TrajectoryStore(buf)
    assert (s.num_experts, s.num_epochs, s.dataset_name, s.model_name) == (2, 3, "digits", "convnet-d1")
    assert s.model_options == {"width": 8}
    model = s.module(1, 2)
    assert s.param_names == [n for n, _ in model.named_parameters()]
    assert s.param_shapes == [tuple(p.shape) for _, p in model.named_parameters()]
    flat = s.flat(1, 2)
    assert torch.equal(flat, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    d = s.params(1, 2)
    assert all(torch.equal(s.unflatten(flat)[n], d[n]) for n in s.param_names)
    # the rebuilt final expert scores exactly the accuracy the recorder measured and wrote to the manifest
    assert accuracy(model, digits.test_images, digits.test_labels) == pytest.approx(s.final_accuracy(1), abs=0)
    assert s.final_accuracy(1) > 0.5  # 2 epochs on digits: well above chance (10%)
    assert not torch.equal(s.flat(0, 0), s.flat(1, 0))  # independent initializations
    assert torch.equal(s.flat(0, -1), s.flat(0, 2))
    with pytest.raises(IndexError, match="epochs 0..2"):
        s.flat(0, 3)
    m = s.manifest
    assert [e["seed"] for e in m["experts"]] == [0, 1] and m["config"]["epochs"] == 2
    assert m["dataset"]["name"] == "digits" and "torch" in m["versions"]


def test_rerun_skips_and_changed_config_is_refused(buf, digits):
    before = {p.name: p.read_bytes() for p in buf.iterdir()}
    logs = []
    record_buffer(BufferConfig(**TINY), buf, device="cpu", dataset=digits, progress=False, log=logs.append)
    assert sum("skipping" in s for s in logs) == 2
    assert {p.name: p.read_bytes() for p in buf.iterdir()} == before
    with pytest.raises(ValueError, match=r"epochs: recorded 2, now 3"):
        record_buffer(BufferConfig(**{**TINY, "epochs": 3}), buf, device="cpu", dataset=digits, progress=False)


def test_corrupt_missing_and_foreign_buffers_are_refused(buf, tmp_path):
    """Acceptance 3."""
    bad = tmp_path / "bad"
    shutil.copytree(buf, bad)
    shard = bad / "expert_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01  # one bit of one parameter
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="expert_00001.safetensors.*corrupt"):
        TrajectoryStore(bad)
    lazy = TrajectoryStore(bad, verify="lazy")  # opens; fails on first read of that expert only
    lazy.flat(0, 1)
    with pytest.raises(ValueError, match="expert_00001.safetensors"):
        lazy.flat(1, 1)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="expert_00001.safetensors"):
        TrajectoryStore(bad)
    s = TrajectoryStore(buf)
    with pytest.raises(ValueError, match=r"dataset 'digits'.*dataset 'mnist10k'"):
        s.check_compatible(dataset="mnist10k", model="convnet-d1")
    with pytest.raises(ValueError, match=r"model 'convnet-d1'.*model 'convnet'"):
        s.check_compatible(dataset="digits", model="convnet")
    from dd.methods import build_method

    with pytest.raises(ValueError, match=r"'digits'.*'mnist10k'"):
        build_method("mtt", "mnist10k", 1, {"model": "convnet-d1"}, buffers=[buf])


def test_incomplete_buffer_is_refused(buf, tmp_path):
    part = tmp_path / "part"
    shutil.copytree(buf, part)
    m = json.loads((part / "manifest.json").read_text())
    m["complete"], m["experts"] = False, m["experts"][:1]
    (part / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="incomplete.*rerun"):
        TrajectoryStore(part)


def test_half_precision_storage_and_batchnorm_buffers(tmp_path, digits, small):
    """bfloat16 shards hold the live values rounded to bf16; BN running stats travel with a teacher."""
    cfg = BufferConfig(**{**TINY, "model": "convnet-d1", "model_options": {"width": 8, "norm": "batch"}, "experts": 1,
                          "epochs": 1, "storage_dtype": "bfloat16"})
    out = record_buffer(cfg, tmp_path / "bf", device="cpu", dataset=small, progress=False, log=lambda s: None)
    s = TrajectoryStore(out)
    assert any("running_mean" in n for n in s.buffer_names)
    raw = s.params(0, 1, dtype=None)
    assert all(t.dtype == torch.bfloat16 for t in raw.values())
    full32, _ = train_expert(BufferConfig(**{**cfg.to_dict(), "storage_dtype": "float32"}), small, 0, "cpu")
    for n in s.param_names:
        assert torch.equal(raw[n], full32[f"p.0001.{n}"].to(torch.bfloat16))
    bn = s.buffers(0, 1)
    mean_name = next(n for n in s.buffer_names if n.endswith("running_mean"))
    assert not torch.allclose(bn[mean_name], torch.zeros_like(bn[mean_name]))  # trained statistics, not the init
    teacher = s.module(0, 1)
    assert not teacher.training
    # the rebuilt teacher is the live network with every tensor rounded to bf16, running statistics included
    ref = s.build_model()
    ref.load_state_dict({n: (t.to(torch.bfloat16).float() if t.is_floating_point() else t)
                         for n, t in ((k.split(".", 2)[2], v) for k, v in full32.items() if k.startswith(("p.0001.", "b.0001.")))})
    ref.eval()
    x = digits.test_images[:50]
    assert torch.equal(teacher(x), ref(x))
    assert accuracy(teacher, digits.test_images, digits.test_labels) == pytest.approx(s.final_accuracy(0), abs=0.03)
    bare = s.build_model()
    bare.load_state_dict(s.params(0, 1), strict=False)
    bare.eval()
    assert not torch.allclose(bare(digits.test_images[:50]), teacher(digits.test_images[:50]))
