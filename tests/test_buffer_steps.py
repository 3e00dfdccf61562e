"""Expert optimizer steps (MTT SGD, FTD's GSAM, AST's smooth experts) against updates computed by hand."""
import math

import pytest
import torch
from torch import nn

from dd.buffers import BufferConfig, expert_step, preset, sgd_step

D = torch.float64


def _tiny():
    """logits = W x + b on 2-channel 1x1 'images' (a 2x2 linear layer)."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Flatten(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([[0.7, -1.2], [0.4, 0.9]], dtype=D))
        m[1].bias.copy_(torch.tensor([0.1, -0.3], dtype=D))
    x = torch.tensor([[1.0, 2.0], [-0.5, 1.5], [2.0, -1.0]], dtype=D).view(3, 2, 1, 1)
    y = torch.tensor([0, 1, 1])
    return m, x, y


def _ce_grad(W, b, x, y):
    """d mean CE / d(W, b) for a linear softmax classifier, by the closed form (p - onehot) x^T / N."""
    x = x.view(len(x), -1)
    z = x @ W.T + b
    p = torch.exp(z - z.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    dz = (p - torch.eye(2, dtype=D)[y]) / len(x)
    return dz.T @ x, dz.sum(0)


def _params(m):
    return [p for _, p in m.named_parameters()]


def test_sgd_step_matches_torch_sgd_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    a = [torch.randn(3, 2, dtype=D), torch.randn(4, dtype=D)]
    b = [t.clone().requires_grad_(True) for t in a]
    opt = torch.optim.SGD(b, lr=0.05, momentum=0.9, weight_decay=1e-3)
    bufs: list = []
    for step in range(3):
        grads = [torch.randn_like(t) for t in a]
        sgd_step(a, grads, bufs, lr=0.05, momentum=0.9, weight_decay=1e-3)
        for t, gr in zip(b, grads):
            t.grad = gr.clone()
        opt.step()
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v.detach(), rtol=0, atol=1e-12)


def test_mtt_step_is_plain_sgd_on_cross_entropy():
    m, x, y = _tiny()
    W, b = m[1].weight.detach().clone(), m[1].bias.detach().clone()
    cfg = BufferConfig(lr=0.1)
    expert_step(m, _params(m), x, y, x, cfg, epoch=0, momentum_bufs=[])
    gW, gb = _ce_grad(W, b, x, y)
    torch.testing.assert_close(m[1].weight.detach(), W - 0.1 * gW)
    torch.testing.assert_close(m[1].bias.detach(), b - 0.1 * gb)


def test_ftd_gsam_step_matches_hand_computed_update():
    m, x, y = _tiny()
    W, b = m[1].weight.detach().clone(), m[1].bias.detach().clone()
    cfg = preset("ftd", lr=0.5, rho=0.05, alpha=0.3)
    assert (cfg.momentum, cfg.weight_decay, preset("ftd").rho, preset("ftd").alpha) == (0.0, 0.0, 0.01, 0.3)
    loss = expert_step(m, _params(m), x, y, x, cfg, epoch=0, momentum_bufs=[])

    gW, gb = _ce_grad(W, b, x, y)
    norm = math.sqrt(((W.abs() * gW) ** 2).sum() + ((b.abs() * gb) ** 2).sum())
    eW, eb = 0.05 * gW * W ** 2 / norm, 0.05 * gb * b ** 2 / norm
    pW, pb = _ce_grad(W + eW, b + eb, x, y)
    inner = (gW * pW).sum() + (gb * pb).sum()
    coef = inner / ((pW ** 2).sum() + (pb ** 2).sum())
    dW = pW - 0.3 * (gW - coef * pW)
    db = pb - 0.3 * (gb - coef * pb)
    torch.testing.assert_close(m[1].weight.detach(), W - 0.5 * dW)
    torch.testing.assert_close(m[1].bias.detach(), b - 0.5 * db)
    # the perturbation really changes the step (the test would not notice a plain SGD step otherwise)
    assert (W - 0.5 * gW - m[1].weight.detach()).abs().max() > 1e-4
    # and the reported loss is the clean one
    z = x.view(3, 2) @ W.T + b
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(z, y))


def test_smooth_expert_schedule_and_step_match_hand_computed_update():
    cfg = preset("smooth")
    assert [round(cfg.loss_scale(e), 4) for e in range(12)] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.0]
    assert (cfg.lr_at(25), cfg.lr_at(26), cfg.lr_at(49)) == (0.003, pytest.approx(0.0018), pytest.approx(0.0018))
    assert (cfg.momentum, cfg.weight_decay, cfg.gp_lambda, cfg.epochs) == (0.9, 1e-3, 2.0, 50)

    m, x, y = _tiny()
    x_aug = x * 0.5 + 0.25  # the CE sees the augmented batch, the penalty the raw one
    W, b = m[1].weight.detach().clone(), m[1].bias.detach().clone()
    bufs: list = []
    buf_W = buf_b = None
    for epoch in (3, 4):  # two steps: exercises momentum and the per-epoch clipping scale
        scale = 0.5 + 0.05 * epoch
        gW, gb = _ce_grad(W, b, x_aug, y)
        gW, gb = scale * gW, scale * gb
        # penalty: d sum(logits)/dx = column sums s of W for every sample; P = 2 (||s|| - 1)^2
        s = W.sum(0)
        ns = s.norm()
        gW = gW + (2 * 2 * (ns - 1) * s / ns).expand(2, 2)
        dW, db = gW + 1e-3 * W, gb + 1e-3 * b
        buf_W = dW if buf_W is None else 0.9 * buf_W + dW
        buf_b = db if buf_b is None else 0.9 * buf_b + db
        W, b = W - 0.003 * buf_W, b - 0.003 * buf_b
        expert_step(m, _params(m), x_aug, y, x, cfg, epoch=epoch, momentum_bufs=bufs)
        torch.testing.assert_close(m[1].weight.detach(), W, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(m[1].bias.detach(), b, rtol=1e-9, atol=1e-9)


def test_gradient_penalty_uses_channel_norm_per_pixel():
    """On a 1x1 conv the input gradient at every pixel is the kernel's column sums; check the value directly."""
    from dd.buffers import gradient_penalty

    conv = nn.Conv2d(3, 2, 1, bias=True).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.2, -0.1, 0.4], [0.3, 0.5, -0.2]], dtype=D).view(2, 3, 1, 1))
    x = torch.randn(4, 3, 5, 5, dtype=D)
    s = conv.weight.view(2, 3).sum(0)
    expected = 2.0 * (s.norm() - 1) ** 2
    torch.testing.assert_close(gradient_penalty(conv, x, 2.0), expected, rtol=1e-9, atol=1e-9)
