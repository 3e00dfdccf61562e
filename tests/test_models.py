"""The model zoo: every registered model builds, classifies, exposes its embedding and trains by gradient."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dd.models import MODELS, build_model

TV = ("resnet18-tv", "resnet50-tv")
SMALL = [n for n in MODELS.names() if n not in TV]
SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]
# (model, shape) pairs whose maps pool to nothing: construction must raise ValueError, not fail later.
UNSUPPORTED = {("convnet-d5", (1, 28, 28)), ("convnet-d6", (1, 28, 28)), ("convnet-d6", (3, 32, 32))}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_zoo_is_registered_with_help():
    expected = {"mlp", "lenet", "alexnet", "vgg11", "vgg11-bn", "resnet18", "resnet18-bn", "resnet18-ap", "vit",
                "resnet18-tv", "resnet50-tv", "convnet", "convnet-w32", "convnet-bn"}
    assert expected <= set(MODELS.names())
    assert all(MODELS.help(n) for n in expected)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", SMALL)
def test_forward_features_and_input_gradient(name, shape):
    if (name, shape) in UNSUPPORTED:
        with pytest.raises(ValueError, match="nothing"):
            build_model(name, shape[0], 10, shape[1:])
        return
    torch.manual_seed(0)
    model = build_model(name, shape[0], 7, shape[1:])
    x = torch.randn(2, *shape, requires_grad=shape[1] == 28)  # gradients at MNIST size; 32/64px forward only (time)
    with torch.set_grad_enabled(x.requires_grad):
        feats = model.features(x)
        out = model.classifier(feats)
    assert out.shape == (2, 7)
    assert feats.shape == (2, model.classifier.in_features) and feats.shape[1] == model.feature_dim
    if x.requires_grad:
        out[:, 3].sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        # forward is exactly classifier(features): the embedding DM matches is the one the classifier reads
        with torch.no_grad():
            torch.testing.assert_close(model(x), out.detach())
            maps = model.block_outputs(x) if not name.startswith("mlp") else [x]
        assert len(maps) >= 2 or name in ("convnet-d1", "mlp", "mlp-bn")
        assert all(m.ndim == 4 and m.shape[0] == 2 for m in maps)


@pytest.mark.parametrize("name", ["vgg11", "resnet18", "resnet18-ap", "convnet"])
def test_instance_norm_variants_have_no_batchnorm(name):
    model = build_model(name, 3, 10, 32)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(m.num_groups == m.num_channels and m.affine for m in gns)  # one group per channel


@pytest.mark.parametrize("name", ["vgg11-bn", "resnet18-bn", "convnet-bn"])
def test_batchnorm_variants_have_batchnorm(name):
    model = build_model(name, 3, 10, 32)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    # in train mode the output depends on the batch: sample 0's logits change when sample 1 changes
    x = torch.randn(2, 3, 32, 32)
    y = torch.cat([x[:1], torch.randn(1, 3, 32, 32)])
    assert not torch.allclose(model(x)[0], model(y)[0])


def test_parameter_counts_against_hand_computation():
    # convnet-w32 on 1x28x28, 10 classes: conv 1*32*9+32 = 320, conv 32*32*9+32 = 9248 (x2), GroupNorm 2*32 = 64
    # (x3); 28 -> 14 -> 7 -> 3, classifier 32*3*3*10 + 10 = 2890. 320 + 2*9248 + 3*64 + 2890 = 21898.
    assert n_params(build_model("convnet-w32", 1, 10, 28)) == 21898
    # mlp on 1x28x28: 784*128+128 + 128*128+128 + 128*10+10 = 100480 + 16512 + 1290 = 118282
    assert n_params(build_model("mlp", 1, 10, 28)) == 118282
    # lenet on 1x28x28 (padding 2 -> 28, pool 14, conv 10, pool 5): 1*6*25+6 = 156, 6*16*25+16 = 2416,
    # 400*120+120 = 48120, 120*84+84 = 10164, 84*10+10 = 850; total 61706
    assert n_params(build_model("lenet", 1, 10, 28)) == 61706
    # alexnet on 3x32x32: 3*128*25+128 = 9728, 128*192*25+192 = 614592, 192*256*9+256 = 442624,
    # 256*192*9+192 = 442560, 192*192*9+192 = 331968, 192*4*4*10+10 = 30730; total 1872202
    assert n_params(build_model("alexnet", 3, 10, 32)) == 1872202
    # vit on 3x32x32: patch conv 3*16*256+256 = 12544, cls 256, positions 65*256 = 16640; per block: 2 LayerNorms
    # 1024, qkv 256*768+768 = 197376, proj 65792, MLP 131584 + 131328 -> 527104 (x6 = 3162624);
    # final LayerNorm 512, classifier 2570; total 3195146
    assert n_params(build_model("vit", 3, 10, 32)) == 3195146
    # CIFAR ResNet-18 (3x3 stem, 10 classes) is the widely reported 11,173,962; GroupNorm(C, C) has the same
    # affine parameter count as BatchNorm
    assert n_params(build_model("resnet18", 3, 10, 32)) == n_params(build_model("resnet18-bn", 3, 10, 32)) == 11173962


@pytest.mark.parametrize("name,classes,count", [("resnet18-tv", 1000, 11689512), ("resnet50-tv", 1000, 25557032)])
def test_torchvision_resnets(name, classes, count):
    # the published parameter counts of torchvision's ImageNet ResNets
    assert n_params(build_model(name, 3, classes, 224)) == count
    model = build_model(name, 1, 5, 224).eval()  # 1-channel stem rebuilt
    assert model.stem[0].in_channels == 1
    x = torch.randn(1, 1, 224, 224)
    with torch.no_grad():
        maps = model.block_outputs(x)
        feats = maps[-1].mean(dim=(2, 3))
        out = model.classifier(feats)
    assert out.shape == (1, 5) and feats.shape == (1, model.feature_dim)
    assert [m.shape[-1] for m in maps] == [56, 28, 14, 7]


@pytest.mark.parametrize("name", ["mlp", "lenet", "alexnet", "vgg11-bn", "resnet18-ap", "vit", "convnet-w32",
                                  "resnet18-tv"])
def test_functional_call_uses_the_given_parameters(name):
    torch.manual_seed(0)
    a = build_model(name, 3, 10, 32)
    torch.manual_seed(1)
    b = build_model(name, 3, 10, 32)
    a.eval(), b.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = functional_call(a, {**dict(b.named_parameters()), **dict(b.named_buffers())}, (x,))
        torch.testing.assert_close(out, b(x))
        assert not torch.allclose(out, a(x))


@pytest.mark.parametrize("name,options", [("lenet", {}), ("vit", {"dim": 32, "depth": 2, "heads": 4, "mlp_dim": 64})])
def test_second_order_gradients_through_an_unrolled_step(name, options):
    # trajectory matching differentiates through SGD steps taken with functional_call
    torch.manual_seed(0)
    model = build_model(name, 1, 10, 28, **options)
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    x, y = torch.randn(4, 1, 28, 28, requires_grad=True), torch.arange(4)
    loss = F.cross_entropy(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    stepped = {k: p - 0.1 * g for (k, p), g in zip(params.items(), grads)}
    (gx,) = torch.autograd.grad(F.cross_entropy(functional_call(model, stepped, (x,)), y), [x])
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


@pytest.mark.parametrize("name,size,match", [("vgg11", 16, "vgg11"), ("lenet", 8, "lenet"), ("alexnet", 2, "alexnet"),
                                             ("resnet18-ap", 4, "resnet18-ap"), ("vit", 30, "patch size")])
def test_too_small_or_misfit_images_raise_a_clear_error(name, size, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, 3, 10, size)


def test_bad_options_raise_value_errors():
    with pytest.raises(ValueError, match="norm"):
        build_model("vgg11", 3, 10, 32, norm="layer")
    with pytest.raises(ValueError, match="downsample"):
        build_model("resnet18", 3, 10, 32, downsample="maxpool")
    with pytest.raises(ValueError, match="heads"):
        build_model("vit", 3, 10, 32, dim=30, heads=8)


def test_options_override_variant_defaults():
    model = build_model("vit", 3, 10, 32, dim=64, depth=2, heads=4)
    assert model.feature_dim == 64 and len(model.blocks) == 2
    assert build_model("mlp", 1, 10, 28, hidden=32).feature_dim == 32


def test_user_model_loads_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "dd_zoo_user_model.py").write_text(textwrap.dedent("""
        from torch import nn

        def build(channels, num_classes, image_size, hidden=16):
            h, w = image_size
            return nn.Sequential(nn.Flatten(), nn.Linear(channels * h * w, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "dd_zoo_user_model", raising=False)
    model = build_model("dd_zoo_user_model:build", 1, 3, 28, hidden=5)
    assert model[1].in_features == 784 and model[1].out_features == 5  # int size became (28, 28); option passed
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    with pytest.raises(KeyError, match="package.module:callable"):
        build_model("dd_zoo_user_model:missing", 1, 3, 28)
    sys.modules.pop("dd_zoo_user_model", None)


def test_unknown_name_lists_known_models():
    with pytest.raises(KeyError) as err:
        build_model("resnet19", 3, 10, 32)
    msg = str(err.value)
    assert "resnet19" in msg and "resnet18" in msg and "vit" in msg and "convnet-w32" in msg
