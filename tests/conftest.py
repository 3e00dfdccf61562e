"""Fixtures shared by the test modules: one intra-op thread for small trainings, the digits dataset."""
import pytest
import torch

from dd.data import load_dataset


@pytest.fixture
def one_thread():
    """One intra-op thread for small trainings: on a shared 2-core machine two OpenMP threads stall each other
    (up to 10x slower); restored afterwards. Modules opt in with pytestmark = pytest.mark.usefixtures("one_thread")."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits (8x8, 1,797 images), split stratified 80/20 with seed 0."""
    return load_dataset("digits")
