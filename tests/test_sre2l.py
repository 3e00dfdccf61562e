"""SRe2L / CDA: the BN-statistics loss by hand, the crop curriculum, recovery on real digits, resume, relabel replay."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from dd.eval import evaluate, get_protocol
from dd.eval.labels import StoredLabels, relabel
from dd.eval.views import apply_views, draw_views, epoch_generator
from dd.methods import build_method, distill
from dd.methods.recover import bn_distance, crop_scale_min, forward_with_bn_loss
from dd.synset import SyntheticSet
from helpers import digits_buffer




@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A BatchNorm ConvNet trained on digits by the buffer recorder: `ddtk buffer --experts 1` is the squeeze step."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("teacher") / "bn"
    return digits_buffer(path, model="convnet-bn", width=16, experts=1, epochs=10)


# ---- the loss and the schedule ------------------------------------------------------------------

def test_bn_statistics_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    bn1, bn2 = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
    net = nn.Sequential(conv, bn1, nn.ReLU(), nn.Conv2d(2, 2, 1, bias=False), bn2, nn.Flatten(), nn.LazyLinear(3))
    net.eval()
    net(torch.zeros(1, 1, 4, 4))  # materializes the lazy layer (eval mode: running statistics untouched)
    for bn in (bn1, bn2):
        bn.running_mean.copy_(torch.tensor([0.3, -0.2]))
        bn.running_var.copy_(torch.tensor([1.5, 0.5]))
    x = torch.randn(5, 1, 4, 4)
    logits, loss = forward_with_bn_loss(net, x, first_bn_weight=10.0)

    def by_hand(a, rm, rv):  # numpy: per-channel mean and biased variance over (N, H, W)
        a = a.detach().numpy()
        mean = a.mean(axis=(0, 2, 3))
        var = ((a - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
        return np.sqrt(((mean - rm) ** 2).sum()) + np.sqrt(((var - rv) ** 2).sum())

    rm, rv = np.array([0.3, -0.2]), np.array([1.5, 0.5])
    a1 = conv(x)
    a2 = net[3](torch.relu(bn1(a1)))
    expected = 10.0 * by_hand(a1, rm, rv) + by_hand(a2, rm, rv)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(logits, net(x))
    assert float(bn_distance(a1, torch.tensor(rm).float(), torch.tensor(rv).float()).detach()) == pytest.approx(by_hand(a1, rm, rv), rel=1e-5)
    with pytest.raises(ValueError, match="no BatchNorm layers.*convnet-bn"):
        forward_with_bn_loss(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), x)


def test_bn_loss_gradient_matches_finite_differences():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 2)).double().eval()
    net[1].running_mean.fill_(0.1)
    net[1].running_var.fill_(0.7)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: forward_with_bn_loss(net, v, 10.0)[1], (x,))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "step"])
def test_crop_scale_schedule_hits_its_endpoints_and_is_monotone(schedule):
    k = 200
    values = [crop_scale_min(i, k, schedule) for i in range(k + 1)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.08)
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))
    half = [crop_scale_min(i, k, schedule, milestone=0.5) for i in range(k)]
    assert half[0] == pytest.approx(1.0) and all(v == pytest.approx(0.08) for v in half[100:])
    if schedule == "cosine":
        assert values[100] == pytest.approx(0.08 + 0.92 * 0.5)  # cos(pi/2) = 0: halfway between the ends
    if schedule == "linear":
        assert values[50] == pytest.approx(0.08 + 0.92 * 0.75)
    with pytest.raises(ValueError, match="unknown crop schedule"):
        crop_scale_min(0, 10, "exp")


# ---- recovery -------------------------------------------------------------------------------------

def test_recovery_makes_images_the_teacher_recognizes(digits, teacher_dir):
    m = build_method("sre2l", digits, 2, {"batch_classes": 10, "r_bn": 0.01, "lr": 0.25, "crop": False, "jitter": 1},
                     teachers=[str(teacher_dir)])
    start = m.current_set().images
    teacher = m.teacher
    with torch.no_grad():
        before = (teacher(start).argmax(1) == m.labels).float().mean()
    steps = m.num_steps(60)
    assert steps == 2 * 60  # 2 batches (IPC index 0 and 1) of 10 classes
    for it in range(steps):
        m.step(it)
    s = m.current_set()
    with torch.no_grad():
        after = (teacher(s.images).argmax(1) == s.labels).float().mean()
    assert float(after) >= 0.95 > float(before) + 0.3
    lo = (0 - torch.tensor(digits.mean)) / torch.tensor(digits.std)
    hi = (1 - torch.tensor(digits.mean)) / torch.tensor(digits.std)
    assert float(s.images.min()) >= float(lo) - 1e-6 and float(s.images.max()) <= float(hi) + 1e-6


def test_checkpointed_recovery_continues_exactly(digits, teacher_dir):
    cfg = {"batch_classes": 5, "jitter": 1}
    whole = build_method("cda", digits, 1, cfg, teachers=[str(teacher_dir)], seed=4)
    n = whole.num_steps(6)
    for it in range(n):
        whole.step(it)
    first = build_method("cda", digits, 1, cfg, teachers=[str(teacher_dir)], seed=4)
    first.num_steps(6)
    for it in range(4):  # stop inside the first of two batches
        first.step(it)
    tensors, info = first.state()
    second = build_method("cda", digits, 1, cfg, teachers=[str(teacher_dir)], seed=4)
    second.num_steps(6)
    second.load_state({k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(info)))
    for it in range(4, n):
        second.step(it)
    assert torch.equal(second.current_set().images, whole.current_set().images)
    other = build_method("cda", digits, 1, cfg, teachers=[str(teacher_dir)], seed=4)
    other.num_steps(7)
    with pytest.raises(ValueError, match="6 iterations.*asks for 7"):
        other.load_state(tensors, info)


def test_distill_records_the_teacher_and_the_protocol(digits, teacher_dir, tmp_path):
    run = {"iterations": 3, "eval_every": 0, "eval_runs": 0, "progress": False}
    res = distill("sre2l", "digits", 1, out=tmp_path / "o", teachers=[str(teacher_dir)], config={"batch_classes": 10},
                  run=run, device="cpu")
    saved = SyntheticSet.load(tmp_path / "o" / "synset.safetensors")
    rec = saved.meta["inputs"]["teachers"][0]
    assert rec["kind"] == "buffer" and rec["spec"] == str(teacher_dir) and len(rec["sha256"]) == 64
    assert saved.meta["evaluation"]["protocol"]["name"] == "teacher"
    assert saved.meta["evaluation"]["teachers"] == [rec]
    assert res.synset.meta["config"]["r_bn"] == 0.01
    with pytest.raises(ValueError, match="needs 1 teacher: pass --teacher"):
        distill("sre2l", "digits", 1, run=run)
    with pytest.raises(ValueError, match="takes no teachers"):
        distill("dm", "digits", 1, teachers=[str(teacher_dir)], run=run)


# ---- the teacher protocol and stored labels -------------------------------------------------------

def test_stored_labels_replay_the_exact_views_and_logits(digits, teacher_dir, tmp_path):
    from dd.teachers import open_teacher

    teacher = open_teacher(str(teacher_dir)).module(digits)
    images = SyntheticSet.from_real(digits, 3, torch.Generator().manual_seed(0)).images
    protocol = get_protocol("teacher", batch_size=8)
    out = relabel(images, teacher, protocol, 3, tmp_path / "labels", seed=5, topk=4, flip=False, progress=False)
    stored = StoredLabels(out)
    stored.check(images, protocol)
    for e in range(3):
        views = draw_views(len(images), (8, 8), 8, epoch_generator(5, e), scale=protocol.crop_scale, flip=False,
                           mix="cutmix", alpha=1.0)
        data = stored.epoch(images, e)
        loader = torch.utils.data.DataLoader(data, batch_size=None)
        for b, (x, logits) in enumerate(loader):
            expect = apply_views(images, views, b)
            assert torch.equal(x, expect)
            with torch.no_grad():
                full = teacher(expect)
            top = full.topk(4, 1)
            got = logits.gather(1, top.indices)
            assert torch.allclose(got, top.values.half().float())
            others = torch.ones_like(logits, dtype=torch.bool).scatter_(1, top.indices, False)
            assert (logits[others] <= -1e8).all()
    assert stored.epoch(images, 4).views.order.tolist() == stored.epoch(images, 1).views.order.tolist()  # cycles
    with pytest.raises(ValueError, match="another set"):
        stored.check(images + 1, protocol)
    with pytest.raises(ValueError, match="batch_size: labels 8 vs protocol 64"):
        stored.check(images, get_protocol("teacher"))
    relabel(images, teacher, protocol, 3, out, seed=5, topk=4, flip=False, progress=False)  # complete: a no-op
    with pytest.raises(ValueError, match="made differently.*seed"):
        relabel(images, teacher, protocol, 3, out, seed=6, topk=4, flip=False, progress=False)


def test_teacher_protocol_options_reach_training_and_the_report(digits, teacher_dir):
    from dd.teachers import open_teacher

    teacher = open_teacher(str(teacher_dir)).module(digits)
    s = SyntheticSet.from_real(digits, 2, torch.Generator().manual_seed(0))
    p = get_protocol("teacher", epochs=3, temperature=7.0, lr=0.02, batch_size=16, teacher_bn="train")
    row = evaluate(s, "convnet-d2", p, runs=1, dataset=digits, device="cpu", teacher=teacher, progress=False)
    assert row.protocol["temperature"] == 7.0 and row.protocol["lr"] == 0.02 and row.protocol["teacher_bn"] == "train"
    assert row.extra["lr"] == 0.02
    with pytest.raises(ValueError, match="needs a teacher"):
        evaluate(s, "convnet-d2", p, runs=1, dataset=digits, device="cpu", progress=False)
    # a teacher in train mode is run on a copy: its running statistics stay as recorded
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    evaluate(s, "convnet-d2", p, runs=1, dataset=digits, device="cpu", teacher=teacher, progress=False)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_crop_views_resample_the_box(digits):
    from dd.eval.views import crop_flip

    x = torch.arange(64.0).view(1, 1, 8, 8)
    same = crop_flip(x, torch.tensor([[0, 0, 8, 8]]), torch.tensor([False]))
    assert torch.allclose(same, x, atol=1e-5)
    mirrored = crop_flip(x, torch.tensor([[0, 0, 8, 8]]), torch.tensor([True]))
    assert torch.allclose(mirrored, x.flip(-1), atol=1e-5)
    half = crop_flip(x, torch.tensor([[0, 0, 4, 4]]), torch.tensor([False]))  # 4x4 top-left box, upsampled 2x
    # output pixel centre p maps to (p + 0.5) / 2 - 0.5 in the input: 7 -> 3.25, i.e. 3.25 * 8 + 3.25 (bilinear)
    assert half[0, 0, 0, 0] == pytest.approx(0.0) and half[0, 0, -1, -1] == pytest.approx(3.25 * 8 + 3.25)
    assert half[0, 0, 2, 2] == pytest.approx(0.75 * 8 + 0.75)
    boxes = draw_views(1000, (8, 8), 100, torch.Generator().manual_seed(0), scale=(0.5, 1.0)).boxes.float()
    area = boxes[:, 2] * boxes[:, 3] / 64
    assert area.min() >= 0.5 * 0.75 and area.max() <= 1.0  # rounding of h, w moves the area a little
    assert math.isclose(float((boxes[:, 0] + boxes[:, 2]).max()), 8.0) or float((boxes[:, 0] + boxes[:, 2]).max()) <= 8


def test_torchrun_two_ranks_recover_the_single_process_images(teacher_dir, tmp_path):
    """Batches are dealt to 2 gloo ranks and gathered; the images equal one process's with the same seed."""
    import os
    import socket
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["distill", "--method", "cda", "--dataset", "digits", "--ipc", "3", "--teacher", str(teacher_dir),
            "--iterations", "4", "--set", "batch_classes=5", "--eval-runs", "0", "--device", "cpu", "--seed", "2"]
    single = subprocess.run([sys.executable, "-m", "dd.cli", *args, "--out", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True, timeout=180)
    assert single.returncode == 0, single.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                          f"--master_port={port}", "-m", "dd.cli", *args, "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    a = SyntheticSet.load(tmp_path / "one" / "synset.safetensors")
    b = SyntheticSet.load(tmp_path / "two" / "synset.safetensors")
    init = build_method("cda", "digits", 3, {"batch_classes": 5}, teachers=[str(teacher_dir)], seed=2).current_set()
    assert not torch.equal(a.images, init.images)  # recovered, not the initialization
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint*")) == ["checkpoint.rank0of2.safetensors",
                                                                             "checkpoint.rank1of2.safetensors"]


def test_command_line_recover_relabel_and_evaluate_with_stored_labels(teacher_dir, tmp_path, capsys):
    """ddtk distill (teacher recorded) -> ddtk show names it -> ddtk relabel -> ddtk eval --labels, reporting label bytes."""
    from dd.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--method", "sre2l", "--dataset", "digits", "--ipc", "1", "--teacher", str(teacher_dir),
                 "--iterations", "2", "--set", "batch_classes=10", "--eval-runs", "0", "--device", "cpu",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["show", str(out / "synset.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert str(teacher_dir) in shown and '"name": "teacher"' in shown
    labels = tmp_path / "labels"
    assert main(["relabel", str(out / "synset.safetensors"), "--epochs", "2", "--batch-size", "4", "--topk", "3",
                 "--out", str(labels), "--device", "cpu"]) == 0
    assert "wrote 2 epochs of labels for 10 images" in capsys.readouterr().out
    assert main(["eval", str(out / "synset.safetensors"), "--labels", str(labels), "--batch-size", "4", "--epochs", "3",
                 "--models", "convnet-d2", "--runs", "1", "--no-baselines", "--device", "cpu",
                 "--out", str(tmp_path / "ev")]) == 0
    md = (tmp_path / "ev" / "eval.md").read_text()
    stored = StoredLabels(labels)
    # the budget columns: image bytes, then the stored label files' bytes
    assert f"| 2,560 | {stored.nbytes:,} |" in md and "| teacher | 3 | 1 |" in md
    row = json.loads((tmp_path / "ev" / "eval.json").read_text())["rows"][0]
    assert row["protocol"]["batch_size"] == 4 and (tmp_path / "ev" / row["extra"]["labels"]).resolve() == labels
    assert str(tmp_path) not in (tmp_path / "ev" / "eval.json").read_text()  # paths relative to the report
    # view options other than the stored ones are refused with the difference named
    assert main(["eval", str(out / "synset.safetensors"), "--labels", str(labels), "--epochs", "1", "--models",
                 "convnet-d2", "--runs", "1", "--no-baselines", "--device", "cpu"]) == 2
    assert "batch_size: labels 4 vs protocol 64" in capsys.readouterr().err
