"""Shared fixtures for the unit tests of jkt: a tiny synthetic dataset, small double-precision models.

Every file a test writes goes under pytest's ``tmp_path``; progress bars are off for the session.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain ``pytest`` as well as ``python -m pytest``
    sys.path.insert(0, str(REPO))

from jkt import models
from jkt.data import Dataset, Split

os.environ["JKT_PROGRESS"] = "0"  # set at import, before any test module runs
# One intra-op thread: the nets here are tiny, and two OpenMP threads on a shared 2-core machine make
# every small op ~100x slower (measured: a 3->4 channel conv on 2x3x32x32 takes 15 ms vs 0.1 ms).
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def no_progress_bars():
    """``JKT_PROGRESS=0`` for the whole session (restored at the end)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("JKT_PROGRESS", "0")
    yield
    mp.undo()


def make_dataset(n_train: int = 48, n_test: int = 24, size: int = 8, channels: int = 1, classes: int = 4,
                 seed: int = 0, name: str = "synthetic") -> Dataset:
    """Random uint8 images with a class-dependent bright patch (so a tiny net can learn something),
    labels cycling through the classes so every class is present in both splits."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % classes
        y = y[torch.randperm(n, generator=g)]
        x = torch.randint(0, 160, (n, channels, size, size), generator=g, dtype=torch.int64)
        cell = max(1, size // classes)
        for i, c in enumerate(y.tolist()):
            x[i, :, c * cell:(c + 1) * cell, :] += 95
        return Split(x.clamp(0, 255).to(torch.uint8), y.to(torch.int64))

    return Dataset(name, split(n_train), split(n_test), [f"c{c}" for c in range(classes)],
                   tuple([0.45] * channels), tuple([0.3] * channels))


@pytest.fixture
def tiny_data() -> Dataset:
    """48 train / 24 test images, 1 channel, 8x8, 4 classes."""
    return make_dataset()


@pytest.fixture
def tiny_data_12() -> Dataset:
    """36 train / 18 test images, 1 channel, 12x12, 3 classes."""
    return make_dataset(n_train=36, n_test=18, size=12, classes=3, seed=1)


def warmed_vgg(seed: int = 0, in_channels: int = 1, num_classes: int = 4, size: int = 8,
               width: float = 0.0625, name: str = "vgg4") -> torch.nn.Module:
    """A float64 VGG whose BatchNorm running statistics are non-trivial: a couple of train-mode forward
    passes on random data, then eval mode."""
    torch.manual_seed(seed)
    model = models.build(name, in_channels, num_classes, width=width).double()
    g = torch.Generator().manual_seed(seed + 1000)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(1.5 * torch.randn(16, in_channels, size, size, generator=g, dtype=torch.float64) + 0.3)
    return model.eval()


def smooth_mlp(seed: int = 0, in_channels: int = 1, num_classes: int = 4, size: int = 8,
               hidden=(16, 16)) -> torch.nn.Module:
    """A float64 tanh MLP (smooth, no BatchNorm: per-sample in any mode)."""
    torch.manual_seed(seed)
    return models.build("mlp", in_channels, num_classes, activation="tanh", image_size=(size, size),
                        hidden=hidden).double()


@pytest.fixture
def vgg64():
    return warmed_vgg()


@pytest.fixture
def mlp64():
    return smooth_mlp()


@pytest.fixture
def make_data():
    """The factory :func:`make_dataset`, for tests that need other sizes."""
    return make_dataset


@pytest.fixture
def make_vgg():
    """The factory :func:`warmed_vgg`."""
    return warmed_vgg


@pytest.fixture
def make_mlp():
    """The factory :func:`smooth_mlp`."""
    return smooth_mlp
