"""Trajectory matching core: gradients against finite differences, constant-memory == unrolled."""
import pytest
import torch

from dd.augment.dsa import DSA, DSAParams
from dd.methods.trajectory import (ParamLayout, ZeroTrajectoryDistance, constant_memory_grad, draw_plans,
                                   matching_loss, student_step, unrolled_grad)
from dd.models import build_model


def _tiny(dtype=torch.float64, seed=0):
    """A tiny ConvNet, 6 synthetic 8x8 images of 3 classes, and a 2-point 'expert' trajectory trained by hand."""
    torch.manual_seed(seed)
    model = build_model("convnet", 1, 3, (8, 8), width=4, depth=1).to(dtype)
    layout = ParamLayout.of(model)
    start = layout.flatten(dict(model.named_parameters())).detach()
    real = torch.randn(30, 1, 8, 8, dtype=dtype)
    real_y = torch.arange(3).repeat(10)
    theta = start.clone()
    for _ in range(5):  # the expert: a few full-batch SGD steps on 'real' data
        th = theta.requires_grad_(True)
        theta, _ = student_step(model, layout, th, None, real, real_y, torch.tensor(0.1, dtype=dtype),
                                draw_plans(30, 1, None, None, (8, 8), torch.Generator())[0], 0.0, False)
        theta = theta.detach()
    images = torch.randn(6, 1, 8, 8, dtype=dtype)
    labels = torch.arange(3).repeat(2)
    return model, layout, start, theta, images, labels


def _loss_at(model, layout, start, target, images, labels, lr, plans, **kw):
    theta, vel = start.clone().requires_grad_(True), None
    for p in plans:
        theta, vel = student_step(model, layout, theta, vel, images, labels, lr, p, kw.get("momentum", 0.0), True)
    return float(matching_loss(theta, start, target).detach())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gradients_match_finite_differences(momentum):
    model, layout, start, target, images, labels = _tiny()
    g = torch.Generator().manual_seed(1)
    dsa = DSA(DSAParams(strategy="scale_rotate"), allow_flip=False)  # smooth ops, so finite differences apply
    plans = draw_plans(6, 4, 3, dsa, (8, 8), g)
    lr = torch.tensor(0.05, dtype=torch.float64)
    res = unrolled_grad(model, layout, start, target, images, labels, lr, plans, momentum=momentum)
    assert res.loss == pytest.approx(_loss_at(model, layout, start, target, images, labels, lr, plans, momentum=momentum))
    eps = 1e-6
    d = torch.randn_like(images)
    fd = (_loss_at(model, layout, start, target, images + eps * d, labels, lr, plans, momentum=momentum)
          - _loss_at(model, layout, start, target, images - eps * d, labels, lr, plans, momentum=momentum)) / (2 * eps)
    assert float((res.images_grad * d).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    fd_lr = (_loss_at(model, layout, start, target, images, labels, lr + eps, plans, momentum=momentum)
             - _loss_at(model, layout, start, target, images, labels, lr - eps, plans, momentum=momentum)) / (2 * eps)
    assert float(res.lr_grad) == pytest.approx(fd_lr, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("dtype,momentum,soft", [(torch.float64, 0.0, False), (torch.float32, 0.0, False),
                                                 (torch.float64, 0.9, True)])
def test_constant_memory_gradient_equals_unrolled(dtype, momentum, soft):
    model, layout, start, target, images, labels = _tiny(dtype)
    if soft:
        labels = torch.randn(6, 3, dtype=dtype)
    dsa = DSA(DSAParams(), allow_flip=False)
    plans = draw_plans(6, 12, 4, dsa, (8, 8), torch.Generator().manual_seed(3))
    lr = torch.tensor(0.05, dtype=dtype)
    mids = [(6, (start + target) / 2, 0.5)]
    a = unrolled_grad(model, layout, start, target, images, labels, lr, plans, momentum=momentum, learn_labels=soft,
                      intermediate=mids)
    b = constant_memory_grad(model, layout, start, target, images, labels, lr, plans, momentum=momentum,
                             learn_labels=soft, intermediate=mids)
    assert b.loss == pytest.approx(a.loss, rel=1e-6)

    def rel(x, y):
        return float((x - y).norm() / y.norm())

    assert rel(b.images_grad, a.images_grad) < 1e-5
    assert rel(b.lr_grad, a.lr_grad) < 1e-5
    if soft:
        assert rel(b.labels_grad, a.labels_grad) < 1e-5
    assert float(a.images_grad.norm()) > 0


def test_zero_trajectory_distance_is_refused():
    model, layout, start, _, images, labels = _tiny()
    plans = draw_plans(6, 2, None, None, (8, 8), torch.Generator())
    with pytest.raises(ZeroTrajectoryDistance, match="identical"):
        unrolled_grad(model, layout, start, start.clone(), images, labels, torch.tensor(0.1, dtype=torch.float64), plans)


def test_layout_unflatten_views_follow_named_parameters_order():
    model = build_model("convnet", 1, 3, (8, 8), width=4, depth=1)
    layout = ParamLayout.of(model)
    flat = layout.flatten(dict(model.named_parameters()))
    views = layout.unflatten(flat)
    for n, p in model.named_parameters():
        assert torch.equal(views[n], p)
    assert views[layout.names[0]].data_ptr() == flat.data_ptr()  # views, not copies
    with pytest.raises(ValueError, match="needs"):
        layout.unflatten(flat[:-1])


@pytest.mark.parametrize("name", ["convnet", "convnet-maxpool", "convnet-gn"])
def test_functional_convnet_forward_equals_the_module(name):
    from dd.methods.trajectory import ConvNetForward

    model = build_model(name, 1, 3, (8, 8), width=4, depth=2)
    fwd = ConvNetForward.of(model)
    assert not isinstance(fwd, torch.nn.Module)
    x = torch.randn(5, 1, 8, 8)
    params = dict(model.named_parameters())
    assert torch.allclose(fwd(params, x), model(x), atol=1e-6)
    assert ConvNetForward.of(build_model("convnet-bn", 1, 3, (8, 8), width=4, depth=1)).__class__.__name__ != "ConvNetForward"


def test_functional_convnet_second_derivatives_equal_the_module():
    """The plain functional forward agrees with the module through the double backward MTT uses, odd sizes too."""
    from torch.func import functional_call

    from dd.methods.trajectory import ConvNetForward

    torch.manual_seed(0)
    model = build_model("convnet", 1, 3, (14, 14), width=4, depth=2)  # 14 -> 7 -> 3: the odd row is dropped
    fwd = ConvNetForward.of(model)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    x = torch.randn(4, 1, 14, 14, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1])
    v = {k: torch.randn_like(p) for k, p in params.items()}
    out = []
    for f in (lambda p: fwd(p, x), lambda p: functional_call(model, p, (x,))):
        g = torch.autograd.grad(torch.nn.functional.cross_entropy(f(params), y), list(params.values()), create_graph=True)
        hv = torch.autograd.grad(sum((gi * v[k]).sum() for gi, k in zip(g, params)), [x] + list(params.values()))
        out.append(hv)
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_balanced_inner_loss_averages_per_class_means():
    import torch.nn.functional as F

    from dd.methods.trajectory import StepPlan, inner_loss

    model, layout, start, _, images, _ = _tiny()
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    plan = StepPlan(torch.arange(6))
    per = F.cross_entropy(model(images), labels, reduction="none")
    expect = (per[:3].mean() + per[3] + per[4:].mean()) / 3
    with torch.no_grad():
        balanced, plain = (inner_loss(model, layout, start, images, labels, plan, balanced=b) for b in (True, False))
    assert float(balanced) == pytest.approx(float(expect.detach()))
    assert float(plain) == pytest.approx(float(per.mean().detach()))
