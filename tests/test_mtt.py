"""MTT / FTD / DATM as `ddtk distill` methods on a tiny digits buffer: learning, guards, resume, soft labels."""
import math

import pytest
import torch

from dd.buffers import TrajectoryStore, record_buffer
from dd.buffers.config import BufferConfig
from dd.methods import DistillationDiverged, build_method, distill
from dd.methods.datm import start_epoch_bound
from dd.methods.ftd import buffer_is_flat
from dd.methods.mtt import ema_update, perturb_conv_weights
from dd.methods.trajectory import ParamLayout
from dd.synset import SyntheticSet
from helpers import digits_buffer

TINY = {"syn_steps": 6, "expert_epochs": 1, "max_start_epoch": 2, "lr_img": 10.0, "lr_lr": 1e-5, "lr_teacher": 0.05}
RUN = {"iterations": 6, "eval_every": 0, "eval_runs": 0, "progress": False}


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
    path = tmp_path_factory.mktemp("buf") / "digits"
    return digits_buffer(path, epochs=4)


def _method(name, digits, buffer, ipc=2, **cfg):
    return build_method(name, digits, ipc, {**TINY, **cfg}, buffers=[buffer])


def test_mtt_reduces_the_matching_loss_on_a_fixed_segment(digits, buffer):
    m = _method("mtt", digits, buffer, dsa=False, lr_img=100.0)
    m.draw_segment = lambda it: (0, 1)  # one fixed segment: the loss must go down as images are learned
    losses = [m.step(i)["loss"] for i in range(8)]
    assert losses[-1] < 0.9 * losses[0]
    assert m.current_set().lr != pytest.approx(TINY["lr_teacher"], rel=1e-12)  # the lr is learned too


def test_student_lr_starts_at_the_experts_lr_unless_set(digits, buffer):
    assert _method("mtt", digits, buffer, lr_teacher=None).hp["lr_teacher"] == 0.05  # the buffer's recorded lr
    assert _method("mtt", digits, buffer, lr_teacher=0.02).hp["lr_teacher"] == 0.02


@pytest.mark.parametrize("memory", ["unrolled", "constant"])
def test_memory_modes_give_the_same_update(digits, buffer, memory):
    ref = _method("mtt", digits, buffer, memory="unrolled")
    other = _method("mtt", digits, buffer, memory=memory)
    for i in range(2):
        ref.step(i)
        other.step(i)
    assert torch.allclose(ref.images, other.images, rtol=1e-4, atol=1e-5)


def test_guards_stop_the_run(digits, buffer):
    m = _method("mtt", digits, buffer, lr_lr=1e6)  # a huge lr step drives the learned lr negative or NaN
    with pytest.raises(DistillationDiverged, match="lr became"):
        for i in range(5):
            m.step(i)
    with pytest.raises(ValueError, match="expert_epochs"):
        _method("mtt", digits, buffer, expert_epochs=0)
    z = _method("mtt", digits, buffer)
    z.buffer.flat = lambda e, t, device="cpu": torch.ones(z.layout.size)  # start == target: zero distance
    with pytest.raises(DistillationDiverged, match="zero trajectory distance"):
        z.step(0)


def test_distill_resumes_to_the_same_result_and_records_provenance(tmp_path, buffer):
    kw = dict(dataset="digits", ipc=1, buffer=buffer, config=TINY, seed=3)
    straight = distill("mtt", out=tmp_path / "a", run=RUN, **kw)
    distill("mtt", out=tmp_path / "b", run={**RUN, "iterations": 3}, **kw)  # 'killed' after 3 iterations
    resumed = distill("mtt", out=tmp_path / "b", run=RUN, **kw)
    assert torch.equal(straight.synset.images, resumed.synset.images)
    assert straight.synset.lr == resumed.synset.lr
    saved = SyntheticSet.load(tmp_path / "b" / "synset.safetensors")
    assert saved.meta["buffer_sha256"] == TrajectoryStore(buffer).manifest_sha256
    assert saved.meta["seed"] == 3 and saved.meta["config"]["syn_steps"] == 6 and saved.lr == resumed.synset.lr


def test_ftd_keeps_and_saves_an_ema_of_the_images(digits, buffer):
    m = _method("ftd", digits, buffer, ema_decay=0.5)
    x0 = m.images.detach().clone()
    m.step(0)
    assert torch.allclose(m.current_set().images, 0.5 * x0 + 0.5 * m.images.detach())
    a = torch.zeros(3)
    ema_update(a, torch.ones(3), 0.999)
    assert torch.allclose(a, torch.full((3,), 0.001))


def test_ftd_can_require_a_gsam_buffer(digits, buffer, tmp_path):
    assert not buffer_is_flat(TrajectoryStore(buffer))  # plain-SGD experts (rho 0)
    with pytest.raises(ValueError, match="not recorded with GSAM"):
        _method("ftd", digits, buffer, require_flat_buffer=True)
    cfg = BufferConfig(dataset="digits", model="convnet", model_options={"width": 8, "depth": 2}, experts=1, epochs=2,
                       batch_size=128, lr=0.05, expert_kind="ftd", rho=0.01)
    record_buffer(cfg, tmp_path / "flat", device="cpu", progress=False, log=lambda s: None)
    assert buffer_is_flat(TrajectoryStore(tmp_path / "flat"))
    _method("ftd", digits, tmp_path / "flat", require_flat_buffer=True, max_start_epoch=0)


def test_datm_init_soft_labels_window_and_skip(digits, buffer):
    assert [start_epoch_bound(it, 10, 20, 1000) for it in (0, 99, 100, 550, 1000, 5000)] == [10, 10, 11, 15, 20, 20]
    assert start_epoch_bound(7, None, 20, 1000) == 20
    m = _method("datm", digits, buffer, ipc=3, threshold=10.0, lr_y=1.0, min_start_epoch=1,
                current_max_start_epoch=1, expansion_end=100, max_start_epoch=3)
    store = TrajectoryStore(buffer)
    final = store.module(0, store.num_epochs - 1)
    hard = torch.arange(10).repeat_interleave(3)
    with torch.no_grad():
        assert torch.equal(final(m.images.detach()).argmax(1), hard)  # only correctly classified reals
        logits = [store.module(e, store.num_epochs - 1)(m.images.detach()) for e in range(store.num_experts)]
    right = [(lg.argmax(1) == hard) for lg in logits]
    expect = sum(lg * r[:, None] for lg, r in zip(logits, right)) / sum(r.float() for r in right)[:, None]
    assert torch.allclose(m.labels.detach(), expect, atol=1e-5)
    assert all(m.draw_segment(0)[1] == 1 for _ in range(5))  # window [1, 2) at iteration 0
    y0 = m.labels.detach().clone()
    out = m.step(0)
    assert out["skipped"] == 0.0 and not torch.equal(m.labels.detach(), y0)  # soft labels are learned
    s = m.current_set()
    assert s.soft and torch.allclose(s.labels.sum(1), torch.ones(30)) and "label_logits" in s.extra
    m.hp["threshold"] = 0.0  # every loss exceeds it: the update is skipped
    x1 = m.images.detach().clone()
    assert m.step(1)["skipped"] == 1.0 and torch.equal(m.images.detach(), x1)


def test_weight_perturbation_scales_conv_weights_elementwise():
    from dd.models import build_model

    model = build_model("convnet", 1, 3, (8, 8), width=4, depth=1)
    layout = ParamLayout.of(model)
    flat = layout.flatten(dict(model.named_parameters())).detach()
    out = perturb_conv_weights(flat, layout, torch.Generator().manual_seed(0))
    d = torch.randn(layout.shapes[0], generator=torch.Generator().manual_seed(0))
    w = layout.unflatten(flat)[layout.names[0]]
    assert torch.allclose(layout.unflatten(out)[layout.names[0]], w + d / d.norm() * w)
    for n in layout.names[1:]:  # biases, norm and linear weights untouched
        assert torch.equal(layout.unflatten(out)[n], layout.unflatten(flat)[n])


def test_kmeans_nearest_picks_cluster_representatives():
    from dd.methods.mtt import kmeans_nearest

    pts = torch.tensor([[0.0, 0], [0.1, 0], [0.2, 0], [10, 10], [10.1, 10], [10.2, 10]])
    idx = kmeans_nearest(pts, 2, torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == [1, 4]  # the points nearest each cluster's mean
    line = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # mean 3.25
    assert kmeans_nearest(line, 1, torch.Generator().manual_seed(0)).tolist() == [2]  # IPC 1: the image nearest the mean


def test_representative_init_and_balanced_loss_run(digits, buffer):
    m = _method("mtt", digits, buffer, init="kmeans", balanced=True, intermediate="linear", expert_epochs=2,
                inner_momentum=0.9, weight_perturb=True)
    real = digits.real()
    s = m.current_set()
    for img, y in zip(s.images, s.labels):  # every image is a real image of its class
        assert (real.all_of(int(y)) - img).flatten(1).abs().sum(1).min() == 0
    assert math.isfinite(m.step(0)["loss"])


def test_auto_memory_mode_switches_to_constant_when_the_graph_would_not_fit(digits, buffer):
    roomy = _method("mtt", digits, buffer, memory="auto")
    roomy.step(0)
    tight = _method("mtt", digits, buffer, memory="auto", memory_fraction=1e-12)  # no room for any unrolled graph
    tight.step(0)
    assert roomy.mode == "unrolled" and tight.mode == "constant"
    assert tight.current_set().meta["gradient_mode"] == "constant"
    assert torch.allclose(roomy.images, tight.images, rtol=1e-4, atol=1e-5)  # same draws, same exact gradient
