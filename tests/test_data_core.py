"""The embedded datasets' fixed splits, class-indexed sampling, validation carving and ZCA whitening."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dd.data import load_dataset, stratified_split
from dd.data.zca import ZCA
from dd.utils import sha256_file

SHARED_NPZ = Path("/work/shared/data/mnist10k.npz")
MNIST10K_SHA = "a9c444adb7dac046fe419c1988c0811da067438961b66d8322526e6e844cae2d"
MNIST10K_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]  # /work/shared/data/README.md
# 20% of each count is 200.2, 225.4, 198.2, 206.4, 196.0, 172.6, 202.8, 214.0, 188.8, 195.6: the floors sum
# to 1996, and the 4 left over go to the largest fractional parts (.8: classes 6, 8; .6: classes 5, 9).
MNIST10K_TEST = [200, 225, 198, 206, 196, 173, 203, 214, 189, 196]
# digits per class 178, 182, 177, 183, 181, 182, 181, 179, 174, 180 -> 20% floors sum to 355 of round(359.4) = 359;
# the 4 left over go to .8 (classes 7, 8) then .6 (classes 0, 3).
DIGITS_TEST = [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


@pytest.fixture(scope="module")
def mnist10k():
    return load_dataset("mnist10k")


def _raw_mnist10k():
    if SHARED_NPZ.exists():
        assert sha256_file(SHARED_NPZ) == MNIST10K_SHA
        z = np.load(SHARED_NPZ)
    else:  # pragma: no cover - outside the development machine, read the packaged copy
        from importlib import resources

        z = np.load(resources.files("dd.data").joinpath("assets/mnist10k.npz").open("rb"))
    return z["images"], z["labels"].astype(np.int64)


def test_mnist10k_split_is_exact_stratified_and_matches_the_raw_file(mnist10k):
    images, labels = _raw_mnist10k()
    assert np.bincount(labels).tolist() == MNIST10K_COUNTS
    assert len(mnist10k.train_labels) == 8000 and len(mnist10k.test_labels) == 2000
    assert torch.bincount(mnist10k.test_labels, minlength=10).tolist() == MNIST10K_TEST
    assert torch.bincount(mnist10k.train_labels, minlength=10).tolist() == [a - b for a, b in zip(MNIST10K_COUNTS, MNIST10K_TEST)]
    train_idx, test_idx = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train_idx, test_idx)) == 0 and len(np.union1d(train_idx, test_idx)) == 10000
    # the loaded tensors are exactly the raw pixels at those indices, normalized with MNIST's 0.1307/0.3081
    expected = (torch.from_numpy(images[test_idx]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(mnist10k.test_images[:, 0], expected, atol=1e-6)
    assert torch.equal(mnist10k.train_labels, torch.from_numpy(labels[train_idx]))
    assert not mnist10k.flip_ok


def test_mnist10k_is_reproducible(mnist10k):
    again = load_dataset("mnist10k")
    for attr in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(again, attr), getattr(mnist10k, attr))
    _, labels = _raw_mnist10k()
    a, b = stratified_split(labels, 0.2, seed=0), stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(a[1], b[1])
    other = stratified_split(labels, 0.2, seed=1)[1]
    assert not np.array_equal(a[1], other)
    assert np.bincount(labels[other]).tolist() == MNIST10K_TEST  # same counts, different images


def test_digits_split():
    ds = load_dataset("digits")
    assert ds.image_size == (8, 8) and ds.train_images.shape[1:] == (1, 8, 8)
    assert torch.bincount(ds.test_labels, minlength=10).tolist() == DIGITS_TEST
    assert len(ds.train_labels) == 1797 - 359
    from sklearn.datasets import load_digits

    d = load_digits()
    _, test_idx = stratified_split(d.target, 0.2, seed=0)
    # images are d.images / 16 quantized to uint8, normalized with the dataset's own mean/std
    raw = np.round(d.images[test_idx] / 16 * 255) / 255
    expected = (torch.from_numpy(raw).float() - ds.mean[0]) / ds.std[0]
    assert torch.allclose(ds.test_images[:, 0], expected, atol=1e-5)


def test_real_images_sample_returns_only_the_asked_class(mnist10k):
    real = mnist10k.real("cpu")
    g = torch.Generator().manual_seed(0)
    for c in (0, 5, 9):
        idx = real.sample_indices(c, 17, generator=g)
        assert len(idx) == 17 and len(set(idx.tolist())) == 17  # without replacement
        assert (mnist10k.train_labels[idx] == c).all()
        x = real.sample(c, 17, generator=torch.Generator().manual_seed(3))
        idx3 = real.sample_indices(c, 17, generator=torch.Generator().manual_seed(3))
        assert x.shape == (17, 1, 28, 28) and torch.equal(x, mnist10k.train_images[idx3])
    assert real.count(5) == MNIST10K_COUNTS[5] - MNIST10K_TEST[5]
    big = real.sample_indices(5, 1000, generator=g)  # more than the class holds: drawn with replacement
    assert len(big) == 1000 and (mnist10k.train_labels[big] == 5).all()
    assert torch.equal(real.all_of(2), mnist10k.train_images[mnist10k.train_labels == 2])


def test_split_validation_never_touches_the_test_split(mnist10k):
    test_before = mnist10k.test_images.clone()
    train, val = mnist10k.split_validation(0.1, seed=0)
    tr_idx, va_idx = stratified_split(mnist10k.train_labels.numpy(), 0.1, seed=0)
    assert len(val.test_labels) == 800 and len(train.train_labels) == 7200
    assert torch.equal(val.test_images, mnist10k.train_images[va_idx])  # held-out *training* images
    assert torch.equal(train.train_images, mnist10k.train_images[tr_idx])
    assert torch.equal(val.train_images, train.train_images)
    assert len(np.intersect1d(tr_idx, va_idx)) == 0
    assert torch.equal(train.test_images, test_before) and torch.equal(mnist10k.test_images, test_before)
    # train counts 801, 902, 793, 826, 784, 690, 811, 856, 755, 782 -> 10% floors sum to 797; the 3 left over
    # go to the largest fractional parts: .6 (classes 3, 7), then .5 (class 8)
    assert torch.bincount(val.test_labels, minlength=10).tolist() == [80, 90, 79, 83, 78, 69, 81, 86, 76, 78]


# ---------------------------------------------------------------- ZCA

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_zca_round_trip(digits):
    zca = ZCA.fit(digits.train_images, eps=0.1)
    for x in (digits.train_images, digits.test_images):
        assert torch.allclose(zca.inverse(zca.apply(x)), x, atol=1e-4)
    again = ZCA.from_tensors(zca.tensors())
    assert torch.equal(again.apply(digits.test_images), zca.apply(digits.test_images))


def test_zca_whitened_covariance(digits):
    x = digits.train_images.reshape(len(digits.train_images), -1).double().numpy()
    zca = ZCA.fit(digits.train_images, eps=0.1)
    w = zca.apply(digits.train_images).reshape(len(x), -1).double().numpy()
    cov_before = np.cov(x, rowvar=False)
    cov_after = np.cov(w, rowvar=False)
    # with eps-regularized ZCA, cov_after = U diag(l / (l + eps)) U^T for the eigenpairs (l, U) of cov_before
    lam, u = np.linalg.eigh(cov_before)
    lam = np.clip(lam, 0, None)
    expected = (u * (lam / (lam + 0.1))) @ u.T
    assert np.abs(cov_after - expected).max() < 1e-4
    # correlations between pixels shrink strongly (pixels that vary at all)
    keep = np.diag(cov_before) > 1e-8

    def mean_abs_offdiag_corr(c):
        d = np.sqrt(np.diag(c))
        r = c / np.outer(d, d)
        return np.abs(r[~np.eye(len(r), dtype=bool)]).mean()

    before = mean_abs_offdiag_corr(cov_before[np.ix_(keep, keep)])
    after = mean_abs_offdiag_corr(cov_after[np.ix_(keep, keep)])
    assert before > 0.1 and after < 0.3 * before  # measured 0.124 -> 0.025


def test_load_dataset_zca_fits_on_train_and_whitens_test_with_it():
    plain = load_dataset("digits")
    white = load_dataset("digits", zca=True)
    assert white.zca is not None and white.describe["zca"]
    ref = ZCA.fit(plain.train_images, eps=0.1)
    assert torch.allclose(white.test_images, ref.apply(plain.test_images), atol=1e-4)
    assert torch.allclose(white.zca.inverse(white.test_images), plain.test_images, atol=1e-4)
