"""DataDAM: the attention and MMD losses against hand-computed values, gradients, and a short run on digits."""
import math

import pytest
import torch

from dd.data import load_dataset
from dd.methods import METHODS
from dd.methods.base import config_from_dict
from dd.methods.datadam import attention_loss, datadam_loss, embedding_mmd, spatial_attention
from dd.methods.fyi import mirror_augmented
from dd.models import ConvNet


def _map(*channels):
    """(1, C, 1, W) feature map of one sample from per-channel rows."""
    return torch.tensor([[list(c)] for c in channels], dtype=torch.float64).unsqueeze(0)


def test_spatial_attention_by_hand():
    # p = 1: |1| + |2| = 3 and |-3| + |1| = 4 -> (3, 4) / 5
    a = spatial_attention(_map([1.0, -3.0], [2.0, 1.0]), p=1)
    assert torch.allclose(a, torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    # p = 2: 1 + 2 = 3 and 4 + 0 = 4 -> (0.6, 0.8)
    a = spatial_attention(_map([1.0, 2.0], [math.sqrt(2.0), 0.0]), p=2)
    assert torch.allclose(a, torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    # p = 4 on a 2x2 map with one channel: (1, 16, 0, 81) / sqrt(1 + 256 + 6561)
    x = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]]], dtype=torch.float64)
    expect = torch.tensor([[1.0, 16.0, 0.0, 81.0]], dtype=torch.float64) / math.sqrt(1 + 256 + 6561)
    assert torch.allclose(spatial_attention(x, p=4), expect)


def test_attention_and_mmd_losses_by_hand():
    real = torch.cat([_map([1.0, -3.0], [2.0, 1.0]), _map([4.0, 0.0], [0.0, 3.0])])  # attentions (.6,.8), (.8,.6)
    syn = _map([5.0, 0.0], [0.0, 0.0])  # attention (1, 0)
    # mean real attention (0.7, 0.7) vs (1, 0): 0.3^2 + 0.7^2 = 0.58 per layer
    assert attention_loss([real], [syn], p=1).item() == pytest.approx(0.58)
    assert attention_loss([real, real], [syn, syn], p=1).item() == pytest.approx(1.16)
    # embeddings: real mean (2, 3), synthetic mean (0.5, 0) -> 1.5^2 + 3^2 = 11.25
    real_emb = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    syn_emb = torch.tensor([[1.0, -1.0], [0.0, 1.0]])
    assert embedding_mmd(real_emb, syn_emb).item() == pytest.approx(11.25)
    # datadam_loss: attention over all blocks but the last, lambda * MMD of the last block flattened
    last_real, last_syn = real_emb.view(2, 2, 1, 1), syn_emb.view(2, 2, 1, 1)
    att, mmd = datadam_loss([real, real, last_real], [syn, syn, last_syn], p=1, task_balance=0.01)
    assert att.item() == pytest.approx(1.16) and mmd.item() == pytest.approx(0.1125)


def test_total_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    net = ConvNet(1, 3, (8, 8), width=4, depth=3).double()
    real = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    syn = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)

    def total(s):
        att, mmd = datadam_loss(net.block_outputs(real), net.block_outputs(s), p=4.0, task_balance=0.01)
        return att + mmd

    assert torch.autograd.gradcheck(total, (syn,), eps=1e-6, atol=1e-5)
    total(syn).backward()
    assert syn.grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every synthetic image receives gradient


def _method(name="datadam", ipc=1, **cfg):
    cls = METHODS.get(name)
    config = config_from_dict(cls.Config, {"model": "convnet-w32", **cfg})
    m = cls(config, load_dataset("digits"), ipc, torch.device("cpu"), torch.Generator().manual_seed(0))
    m.init_synset()
    return m


def test_method_loss_is_the_sum_of_per_class_losses():
    m = _method(ipc=2, dsa=False, task_balance=0.5, loss_scale=3.0, power=2.0)
    reals, syns = m.class_batches()
    net = m.random_network()
    terms = m.matching_loss(net, reals, syns)
    expect = 0.0
    for r, s in zip(reals, syns):
        rb, sb = net.block_outputs(r), net.block_outputs(s)
        expect += attention_loss(rb[:-1], sb[:-1], 2.0) + 0.5 * embedding_mmd(net.features(r), net.features(s))
    assert terms["loss"].item() == pytest.approx(3.0 * expect.item(), rel=1e-4)
    assert terms["loss"].item() == pytest.approx((terms["loss_attention"] + terms["loss_mmd"]).item(), rel=1e-6)


def test_paper_defaults_and_options():
    m = _method(ipc=1)
    assert (m.config.power, m.config.batch_real, m.config.momentum, m.config.init) == (4.0, 64, 0.5, "real")
    assert m.opt.param_groups[0]["lr"] == 1.0 and m.task_balance() == 0.01
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.random_network().modules())
    bn = _method(ipc=1, norm="batch", power=1)
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in bn.random_network().modules())
    assert _method(ipc=60).opt.param_groups[0]["lr"] == 10.0  # lr_img 10 above IPC 50
    with pytest.raises(ValueError, match="power"):
        _method(power=0)


def test_flip_matches_the_synthetic_batch_with_its_mirror():
    with pytest.warns(UserWarning, match="mirrored"):
        m = _method(ipc=2, dsa=False, flip=True)
    _, syns = m.class_batches()
    own = m.images[m.class_index[3]]
    assert torch.equal(syns[3], torch.cat([own, own.flip(3)])) and torch.equal(mirror_augmented(own), syns[3])


def _fixed_loss(m, seeds=range(4)):
    """Mean matching loss over fixed networks and every real image of each class (no augmentation)."""
    reals = [m.real.all_of(c) for c in range(m.dataset.num_classes)]
    syns = [m.images[idx].detach() for idx in m.class_index]
    out = []
    for s in seeds:
        torch.manual_seed(1000 + s)
        net = m.build_network().train()
        with torch.no_grad():
            out.append(float(m.matching_loss(net, reals, syns)["loss"]))
    return sum(out) / len(out)


def test_a_few_iterations_on_digits_lower_the_loss():
    m = _method(ipc=1, init="noise", batch_real=32)
    before = _fixed_loss(m)
    losses = [m.step(it)["loss"] for it in range(40)]
    after = _fixed_loss(m)
    assert all(math.isfinite(x) for x in losses)
    assert after < 0.75 * before, (before, after)  # observed ~0.6 after 30 iterations from noise
