"""Tests for jkt.jacobian_checks against independent computations: central finite differences in float64,
train-mode per-sample gradients by finite differences, closed forms on linear networks."""
import copy
import math

import pytest
import torch
from torch import nn

from jkt import jacobian_checks, models


def linear_net(seed, dim=6, outputs=4):
    """A float64 network without hidden layers: its Jacobian is its weight matrix."""
    torch.manual_seed(seed)
    return models.build("mlp", 1, outputs, image_size=(1, dim), hidden=(), activation="relu").double().eval()


# ---------------------------------------------------------------------------------------------------- finite differences
def test_finite_difference_check_and_directional_fd(make_mlp):
    net = make_mlp()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    df = jacobian_checks.finite_difference_check(net, x, torch.tensor([1, 3]), directions=2,
                                        generator=torch.Generator().manual_seed(0))
    assert set(df.method) == {"one output (label)", "one output (top-1)", "random projection", "full Jacobian"}
    assert df["relative error"].max() < 1e-6


def test_maxpool_ties_appear_on_flat_images_only():
    torch.manual_seed(0)
    net = models.build("vgg4", 1, 4, width=0.25, batch_norm=False, bias=True).double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.fill_(0.5)  # positive maps, so that flat regions tie at a positive value
    flat = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    assert jacobian_checks.maxpool_ties(net, flat) > 0.1
    assert jacobian_checks.maxpool_ties(net, torch.randn(2, 1, 16, 16, dtype=torch.float64)) == 0


# ---------------------------------------------------------------------------------------------------- BatchNorm
def test_batchnorm_gap_zero_without_batchnorm_and_per_sample_gradient_is_exact(make_mlp, make_vgg):
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    assert jacobian_checks.batchnorm_gap(make_mlp(), x, y).max() < 1e-12
    vgg = make_vgg()
    state = copy.deepcopy(vgg.state_dict())
    exact = jacobian_checks.per_sample_gradients_train_mode(vgg, x, y, rows=2)
    # central differences of f_b[y_b] in train mode, moving x_b only
    net, eps, u = copy.deepcopy(vgg).train(), 1e-6, torch.randn(8, 8, dtype=torch.float64)
    for b in range(2):
        xp, xm = x.clone(), x.clone()
        xp[b, 0] += eps * u
        xm[b, 0] -= eps * u
        with torch.no_grad():
            fd = (net(xp)[b, y[b]] - net(xm)[b, y[b]]) / (2 * eps)
        assert float(fd) == pytest.approx(float((exact[b, 0] * u).sum()), rel=1e-5, abs=1e-8)
    for k, v in vgg.state_dict().items():   # the model's running statistics were not touched
        assert torch.equal(v, state[k]), k
    assert jacobian_checks.batchnorm_gap(vgg, x, y, rows=3).min() > 1e-3


# ---------------------------------------------------------------------------------------------------- cost
def test_relative_times_table():
    """The table's rows and its unit (times are not asserted: they are the benchmark's job)."""
    calls = {"double": lambda: sum(range(2000)) * 2, "triple": lambda: sum(range(3000)) * 3}
    table = jacobian_checks.relative_times(calls, lambda: sum(range(1000)), repeats=1, warmup=0, min_seconds=0.001)
    assert list(table.index) == ["forward+backward step", "double", "triple"]
    assert list(table.columns) == ["seconds", "x step"]
    assert table.loc["forward+backward step", "x step"] == 1.0


# ---------------------------------------------------------------------------------------------------- estimators, gradients
def test_three_estimators_on_linear_networks():
    teacher, student = linear_net(0), linear_net(1)
    x = torch.randn(3, 1, 1, 6, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    exact = jacobian_checks.exact_jacobian_distance(teacher, student, x)
    gap = (teacher.classifier.weight - student.classifier.weight).detach().pow(2).sum()
    torch.testing.assert_close(exact, gap.expand(3), rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    proj = jacobian_checks.projection_draws(teacher, student, x, 2000, g)
    assert ((proj.mean(0) - exact).abs() < 4 * proj.std(0) / math.sqrt(2000)).all()
    # for linear networks the antithetic noise estimate does not depend on sigma at all
    a = jacobian_checks.noise_draws(teacher, student, x, 1e-2, 50, torch.Generator().manual_seed(1))
    b = jacobian_checks.noise_draws(teacher, student, x, 10.0, 50, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    table, errors, ex = jacobian_checks.estimator_comparison(teacher, student, x, [0.1], repeats=4, timing_repeats=1)
    assert list(table.index) == ["exact sum", "projection", "noise, sigma=0.1"]
    assert (table["draws"] >= 1).all() and len(errors) == 4 * 3 * 2


def test_gradient_cosine():
    a = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(jacobian_checks.gradient_cosine(a, 2 * a), torch.ones(3))
    torch.testing.assert_close(jacobian_checks.gradient_cosine(a, -a), -torch.ones(3))
