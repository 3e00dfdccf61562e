"""NCFM: the characteristic-function distance against direct complex computations, psi's ascent, decoding, a distil."""
import math

import pytest
import torch

from dd.methods import build_method, distill
from dd.methods.ncfm import NCFM, SamplingNet, cf_terms, decode_patches, encode_patches, minmax_step, ncfm_distance
from dd.synset import SyntheticSet
from helpers import digits_buffer

TINY = {"model": "convnet", "batch_real": 16, "num_freqs": 64, "psi_freqs": 8, "psi_repeat": 4}
RUN = {"iterations": 4, "eval_every": 0, "eval_runs": 0, "progress": False}


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
    path = tmp_path_factory.mktemp("buf") / "digits"
    return digits_buffer(path, epochs=2)


def _phi(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The empirical characteristic function as complex numbers: mean_j exp(i t.x_j) per row of t."""
    return torch.exp(1j * (t @ x.t()).to(torch.complex128)).mean(1)


def test_equal_samples_give_zero_distance():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(50, 6, generator=g, dtype=torch.float64), torch.randn(100, 6, generator=g, dtype=torch.float64)
    amp, phase = cf_terms(x, x[torch.randperm(50, generator=g)], t)  # the same sample, in another order
    assert amp.abs().max() < 1e-12 and phase.abs().max() < 1e-12
    # only the 1e-12 clamp of the phase term remains: 300 * sqrt(0.5 * 1e-12)
    assert ncfm_distance(x, x, t).item() == pytest.approx(300 * math.sqrt(0.5e-12), rel=1e-6)


def test_mean_shift_gives_the_closed_form_per_frequency():
    """Features x and x + delta: Phi_s(t) = exp(i t.delta) Phi_r(t), so the amplitude term is 0 and the phase term
    2 |Phi_r(t)|^2 (1 - cos(t.delta))."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    delta = torch.tensor([0.3, -0.2, 0.5, 0.0, 0.1], dtype=torch.float64)
    t = torch.randn(200, 5, generator=g, dtype=torch.float64)
    amp, phase = cf_terms(x, x + delta, t)
    expected = 2 * _phi(x, t).abs() ** 2 * (1 - torch.cos(t @ delta))
    assert amp.abs().max() < 1e-12
    torch.testing.assert_close(phase, expected, rtol=1e-9, atol=1e-12)
    assert phase.max() > 0.05  # the shift is visible, not a degenerate zero
    total = 300 * torch.sqrt(0.5 * expected.clamp(min=1e-12)).mean()
    torch.testing.assert_close(ncfm_distance(x, x + delta, t), total)


def test_distance_matches_a_direct_complex_computation():
    g = torch.Generator().manual_seed(2)
    xr, xs = torch.randn(30, 4, generator=g, dtype=torch.float64), 0.5 * torch.randn(20, 4, generator=g, dtype=torch.float64)
    t = torch.randn(64, 4, generator=g, dtype=torch.float64)
    pr, ps = _phi(xr, t), _phi(xs, t)
    amp = (pr.abs() - ps.abs()) ** 2
    phase = 2 * (pr.abs() * ps.abs() - (pr * ps.conj()).real)
    want = 2.0 * torch.sqrt(0.3 * amp + 0.7 * phase.clamp(min=1e-12)).mean()
    torch.testing.assert_close(ncfm_distance(xr, xs, t, alpha=0.3, beta=0.7, scale=2.0), want)


def test_sampling_net_step_increases_the_distance_on_a_fixed_batch():
    g = torch.Generator().manual_seed(3)
    fr = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=1)
    fs = torch.nn.functional.normalize(torch.randn(10, 16, generator=g) + 0.5, dim=1)
    torch.manual_seed(0)
    psi = SamplingNet(16, num_freqs=32, repeat=8)
    noise = torch.randn(psi.unique, 16, generator=g)
    images = fs.clone().requires_grad_(True)  # the 'images' the distance is differentiated through, frozen (lr 0)
    opt_img = torch.optim.SGD([images], lr=0.0)
    opt_psi = torch.optim.SGD(psi.parameters(), lr=1e-4)  # small: sqrt near 0 makes the gradient steep
    before = ncfm_distance(fr, images, psi(noise))
    minmax_step(before, images, opt_img, psi, opt_psi)
    after = ncfm_distance(fr, images, psi(noise))
    assert torch.equal(images.detach(), fs)
    assert after.item() > 1.2 * before.item()  # (the same step down the gradient lowers it: 37.5 -> 18.3)


def test_decoding_and_encoding_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # one 2x2 image: factor 2 makes four one-pixel patches
    dec = decode_patches(x, 2)
    assert dec.shape == (4, 1, 2, 2)
    assert [float(d.unique()) for d in dec] == [1.0, 2.0, 3.0, 4.0]  # patch-major, each upsampled to a constant
    flat = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 4, 4)  # four constant 4x4 images, values 0..3
    enc = encode_patches(flat, 2)
    assert enc.shape == (1, 1, 4, 4)
    assert torch.equal(enc[0, 0], torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]))
    assert torch.equal(decode_patches(enc, 2), flat)  # constant patches survive the round trip exactly


def test_images_get_gradient_and_stay_in_range(digits, buffer):
    m = build_method("ncfm", digits, 2, {**TINY, "lr_img": 0.5, "calib_weight": 0.0}, buffers=[buffer])
    x0 = m.images.detach().clone()
    out = m.step(0)
    assert out["loss"] > 0 and "loss_calib" not in out
    moved = (m.images.detach() - x0).flatten(1).abs().sum(1)
    assert (moved > 0).all()  # every image of every class was updated by the matching loss
    lo, hi = m.bounds
    assert (m.images >= lo - 1e-6).all() and (m.images <= hi + 1e-6).all()
    assert ((m.images - lo).abs() < 1e-6).any()  # the large lr pushed some pixels onto the bound


def test_extractor_interpolates_the_experts_first_and_last_epochs(digits, buffer):
    m = build_method("ncfm", digits, 1, TINY, buffers=[buffer])
    w = dict(m.extractor(1, 0.25).named_parameters())["classifier.weight"]
    first, last = m.buffer.params(1, 0)["classifier.weight"], m.buffer.params(1, -1)["classifier.weight"]
    torch.testing.assert_close(w, 0.25 * first + 0.75 * last)


def test_defaults_and_presets():
    cfg = NCFM.Config()
    assert cfg.sampling_net is False and cfg.num_freqs == 4096 and cfg.loss_scale == 300.0
    assert (cfg.alpha, cfg.beta, cfg.lr_img, cfg.weight_decay) == (0.5, 0.5, 1e-3, 5e-4)
    assert NCFM.preset("cifar10", 10)["factor"] == 2
    assert NCFM.preset("cifar100", 10)["optimizer"] == "sgd"
    assert NCFM.preset("mnist10k", 10) == {}


def test_multi_formation_hands_the_decoded_set_to_evaluation(digits, buffer):
    m = build_method("ncfm", digits, 1, {**TINY, "factor": 2}, buffers=[buffer])
    assert m.images.shape[0] == 10
    s = m.current_set()
    assert s.images.shape[0] == 40 and s.ipc == 4
    assert s.meta["multi_formation"]["stored_images_per_class"] == 1


@pytest.mark.parametrize("psi", [False, True], ids=["gaussian_t", "sampling_net"])
def test_distill_resumes_to_the_same_set(tmp_path, buffer, psi):
    kw = dict(dataset="digits", ipc=1, buffer=buffer, config={**TINY, "sampling_net": psi}, seed=5)
    straight = distill("ncfm", out=tmp_path / "a", run=RUN, **kw)
    distill("ncfm", out=tmp_path / "b", run={**RUN, "iterations": 2}, **kw)  # 'killed' after 2 iterations
    resumed = distill("ncfm", out=tmp_path / "b", run=RUN, **kw)
    assert torch.equal(straight.synset.images, resumed.synset.images)
    saved = SyntheticSet.load(tmp_path / "b" / "synset.safetensors")
    assert saved.meta["method"] == "ncfm" and saved.meta["config"]["sampling_net"] is psi
    final = SyntheticSet.load(tmp_path / "a" / "final.safetensors")
    assert final.images.shape == (10, 1, 8, 8)
