"""Every artifact kind is verified on read: a flipped byte, a truncation and a missing file are refused, naming the path.

Kinds: synthetic set, buffer shard, distill checkpoint, stored labels, teacher checkpoint, reproduce state. Each file is
made for real (tiny: digits, an MLP), damaged three ways, and read back through the reader the commands use.
"""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import mlp_teacher_file

pytestmark = pytest.mark.usefixtures("one_thread")

DAMAGES = ("flip_data", "flip_header", "truncate", "missing")


def damage(path: Path, how: str) -> None:
    """Flips one byte near the end (tensor data) or in the first 64 bytes after the length prefix (the header), cuts
    the file to two thirds, or removes it."""
    data = bytearray(path.read_bytes())
    if how == "missing":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) * 2 // 3]))
    else:
        i = len(data) - 2 if how == "flip_data" else min(20, len(data) - 1)
        data[i] ^= 0x01
        path.write_bytes(bytes(data))


def refused(fn, path: Path, exc=(ValueError, RuntimeError, OSError)) -> str:
    with pytest.raises(exc) as e:
        fn()
    message = str(e.value)
    assert str(path) in message or f"'{path}'" in message, message
    return message


@pytest.fixture(scope="module")
def made(tmp_path_factory, digits):
    """One of each artifact, written by the library's own writers."""
    from dd.buffers import BufferConfig, record_buffer
    from dd.eval import get_protocol
    from dd.eval.labels import relabel
    from dd.methods import distill
    from dd.synset import SyntheticSet

    root = tmp_path_factory.mktemp("artifacts")
    torch.set_num_threads(1)
    net, teacher = mlp_teacher_file(root, digits)
    s = SyntheticSet.from_real(digits, 1, torch.Generator().manual_seed(0))
    s.save(root / "set.safetensors")
    protocol = get_protocol("teacher", batch_size=5)
    relabel(s.images, net, protocol, 2, root / "labels", topk=3, flip=False, progress=False)
    record_buffer(BufferConfig(dataset="digits", model="mlp", experts=1, epochs=1, batch_size=256), root / "buffer",
                  device="cpu", progress=False, log=lambda m: None)
    distill("dm", digits, 1, out=root / "run", config={"init": "noise"}, device="cpu",
            run={"iterations": 2, "eval_every": 0, "eval_runs": 0, "checkpoint_every": 1, "progress": False})
    return root


@pytest.fixture
def copy(made, tmp_path):
    """A private copy of the artifacts for one test to damage."""
    dst = tmp_path / "a"
    shutil.copytree(made, dst)
    return dst


@pytest.mark.parametrize("how", DAMAGES)
def test_synthetic_set(copy, how):
    from dd.synset import SyntheticSet

    path = copy / "set.safetensors"
    damage(path, how)
    refused(lambda: SyntheticSet.load(path), path)


@pytest.mark.parametrize("how", DAMAGES)
def test_buffer_shard(copy, how):
    from dd.buffers import TrajectoryStore

    shard = next((copy / "buffer").glob("*.safetensors"))
    damage(shard, how)
    refused(lambda: TrajectoryStore(copy / "buffer"), shard)


@pytest.mark.parametrize("how", DAMAGES)
def test_distill_checkpoint(copy, how, digits):
    from dd.methods import build_method
    from dd.methods.driver import _load_checkpoint

    path = copy / "run" / "checkpoint.safetensors"
    damage(path, how)
    m = build_method("dm", digits, 1, {"init": "noise"})
    identity = json.loads((copy / "run" / "config.json").read_text())
    refused(lambda: _load_checkpoint(path, m, torch.Generator(), identity), path)


def test_distill_resume_refuses_a_damaged_checkpoint(copy, digits):
    """Through the driver: the rerun that would resume from it stops, naming the file."""
    from dd.methods import distill

    path = copy / "run" / "checkpoint.safetensors"
    damage(path, "flip_data")
    refused(lambda: distill("dm", digits, 1, out=copy / "run", config={"init": "noise"}, device="cpu",
                            run={"iterations": 3, "eval_every": 0, "eval_runs": 0, "checkpoint_every": 1,
                                 "progress": False}), path)


@pytest.mark.parametrize("how", DAMAGES)
def test_stored_labels(copy, how):
    from dd.eval.labels import StoredLabels

    path = copy / "labels" / "epoch_0001.safetensors"
    damage(path, how)
    refused(lambda: StoredLabels(copy / "labels"), path)


@pytest.mark.parametrize("how", ["flip_data", "truncate", "missing"])
def test_label_manifest(copy, how):
    from dd.eval.labels import StoredLabels

    path = copy / "labels" / "manifest.json"
    if how == "flip_data":  # a changed sha256 in the manifest: the epoch file no longer matches it
        path.write_text(re.sub(r'"sha256": "(.)', lambda m: f'"sha256": "{"0" if m[1] != "0" else "1"}',
                               path.read_text(), count=1))
        refused(lambda: StoredLabels(copy / "labels"), copy / "labels" / "epoch_0000.safetensors")
        return
    damage(path, how)
    refused(lambda: StoredLabels(copy / "labels"), copy / "labels")


@pytest.mark.parametrize("how", DAMAGES)
def test_teacher_checkpoint_recorded_by_a_set(copy, how, digits):
    """A set records its teacher's sha256: the teacher file changed, cut or gone is refused when the set is scored."""
    from dd.teachers import open_teacher, teacher_from_records

    path = copy / "teacher.safetensors"
    record = open_teacher(str(path)).describe()
    damage(path, how)
    refused(lambda: teacher_from_records([record], digits), path)


@pytest.mark.parametrize("how", ["truncate", "missing"])
def test_teacher_checkpoint_opened_alone(copy, how):
    from dd.teachers import open_teacher

    path = copy / "teacher.safetensors"
    damage(path, how)
    refused(lambda: open_teacher(str(path)), path)


@pytest.mark.parametrize("how", ["flip_value", "flip_syntax", "truncate"])
def test_reproduce_state(tmp_path, how):
    from dd.reproduce import State

    path = tmp_path / "state.json"
    State(path).put({"seconds": 12.5, "set": "rows/a/distill/synset.safetensors"}, "rows", "a")
    assert State(path).get("rows", "a", "seconds") == 12.5  # an intact file reads back
    text = path.read_text()
    if how == "flip_value":  # still valid JSON, another number
        text = text.replace("12.5", "13.5")
    elif how == "flip_syntax":
        text = text.replace("{", "[", 1)
    else:
        text = text[: len(text) * 2 // 3]
    path.write_text(text)
    refused(lambda: State(path), path)


def test_missing_reproduce_state_and_checkpoint_mean_starting_afresh(tmp_path):
    """The two artifacts whose absence is not an error: no state.json means reproduce checks every artifact again, no
    checkpoint means the run starts from iteration 0 (how every run starts)."""
    from dd.reproduce import State

    assert State(tmp_path / "state.json").get("rows") == {}
