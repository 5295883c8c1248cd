"""Tests for jkt.taylor against independent computations: closed forms on quadratic and linear networks,
Gauss-Hermite quadrature for the expectations over the noise, finite differences, synthetic power laws."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jkt import jacobian, models, profiles, taylor
from jkt.losses import SoftmaxOutput


class Quadratic(nn.Module):
    """``f_k(x) = b_k + g_k . x + 1/2 x^T Q_k x`` on flattened inputs: Jacobian ``g + Q x``, Hessian ``Q_k``."""

    def __init__(self, dim, outputs, seed, scale=0.3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(outputs, dim, dim, generator=g, dtype=torch.float64) * scale
        self.Q = nn.Parameter(q + q.transpose(1, 2))
        self.g = nn.Parameter(torch.randn(outputs, dim, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(outputs, generator=g, dtype=torch.float64))

    def forward(self, x):
        x = x.flatten(1)
        return self.b + x @ self.g.T + 0.5 * torch.einsum("bi,kij,bj->bk", x, self.Q, x)


def tiny_mlp(activation="tanh", seed=0, dim=2, outputs=3, hidden=(6,), bias=True):
    torch.manual_seed(seed)
    return models.build("mlp", 1, outputs, image_size=(1, dim), hidden=hidden, activation=activation,
                        bias=bias).double().eval()


def points(n, dim=2, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed + 100)
    return scale * torch.randn(n, 1, 1, dim, generator=g, dtype=torch.float64)


def quadrature_excess(teacher, student, x, y, sigma, nodes=40):
    """``E[loss(x + sigma z)] - loss(x)`` for the four statements by tensor-product Gauss-Hermite quadrature
    over a 2-D input (exact to rounding for these smooth functions): shape (4, B)."""
    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    zz = torch.tensor(np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2))
    ww = torch.tensor(np.outer(w, w).reshape(-1))
    out = []
    with torch.no_grad():
        for b in range(len(x)):
            xs = (x[b].flatten() + sigma * zz).view(-1, *x.shape[1:])
            losses = taylor.pointwise_losses(teacher(xs), student(xs), y[b])
            clean = taylor.pointwise_losses(teacher(x[b:b + 1]), student(x[b:b + 1]), y[b:b + 1])[:, 0]
            out.append((losses * ww).sum(1) - clean)
    return torch.stack(out, 1)


# ---------------------------------------------------------------------------------------------------- sizes
def test_profile_sizes_share_keys_and_reject_unknown():
    """Notebooks 01 and 02 read their sizes from jkt.profiles: every profile has the same keys."""
    keys = set(profiles.get("cpu").sizes)
    assert keys and set(profiles.get("smoke").sizes) == keys == set(profiles.get("paper").sizes)
    assert profiles.get("smoke").sizes["draws"] < profiles.get("cpu").sizes["draws"]
    with pytest.raises(ValueError, match="profile"):
        profiles.get("laptop")


# ---------------------------------------------------------------------------------------------------- derivatives
def test_hessian_trace_and_expansion_on_a_quadratic():
    f = Quadratic(5, 3, seed=0)
    x = torch.randn(4, 5, dtype=torch.float64)
    e = taylor.expansion(f, x)
    expected_grad = f.g.detach() + torch.einsum("kij,bj->bki", f.Q.detach(), x)
    torch.testing.assert_close(e.grad, expected_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e.hess_trace, f.Q.detach().diagonal(dim1=1, dim2=2).sum(-1).expand(4, 3),
                               rtol=1e-12, atol=1e-12)


def test_hutchinson_trace_is_unbiased_with_a_sane_standard_error():
    f = Quadratic(6, 2, seed=1)
    x = torch.randn(3, 6, dtype=torch.float64)
    exact = taylor.hessian_trace(f, x)
    est, se = taylor.hutchinson_trace(f, x, probes=400, generator=torch.Generator().manual_seed(0))
    z = (est - exact) / se
    assert z.abs().max() < 4.5
    assert (se > 0).all()


# ---------------------------------------------------------------------------------------------------- losses, coefficients
def test_pointwise_losses_match_direct_formulas():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 3, 1, 2, 3])
    out = taylor.pointwise_losses(t, s, y)
    torch.testing.assert_close(out[0], ((t - s) ** 2).sum(1))
    torch.testing.assert_close(out[1], -(F.softmax(t, 1) * F.log_softmax(s, 1)).sum(1))
    torch.testing.assert_close(out[2], ((F.one_hot(y, 4).float() - s) ** 2).sum(1))
    torch.testing.assert_close(out[3], F.cross_entropy(s, y, reduction="none"))
    torch.testing.assert_close(taylor.pointwise_losses(t, s, torch.tensor(2))[3],
                               F.cross_entropy(s, torch.full((5,), 2), reduction="none"))


def test_prop1_and_prop2_coefficients_on_quadratic_networks_match_the_closed_form():
    """For quadratic d_i: E[d_i(x+xi)^2] - d_i^2 = sigma^2 (||grad d_i||^2 + d_i tr Q_i) + O(sigma^4)."""
    teacher, student = Quadratic(4, 3, seed=2), Quadratic(4, 3, seed=3)
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    c = taylor.second_order_coefficients(teacher, student, x, y)
    dQ = (teacher.Q - student.Q).detach()
    with torch.no_grad():
        d = teacher(x) - student(x)
        grad_d = (teacher.g - student.g) + torch.einsum("kij,bj->bki", dQ, x)
    expected = (grad_d ** 2).sum((1, 2)) + (d * dQ.diagonal(dim1=1, dim2=2).sum(-1)).sum(1)
    torch.testing.assert_close(c["prop1"]["full"], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c["prop1"]["paper"], (grad_d ** 2).sum((1, 2)), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        s = student(x)
        grad_s = student.g + torch.einsum("kij,bj->bki", student.Q, x)
    onehot = F.one_hot(y, 3).double()
    expected2 = (grad_s ** 2).sum((1, 2)) + ((s - onehot) * student.Q.diagonal(dim1=1, dim2=2).sum(-1)).sum(1)
    torch.testing.assert_close(c["prop2"]["full"], expected2.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_full_coefficients_are_the_small_sigma_limit_of_the_exact_expectation(activation):
    """Quadrature (no Taylor expansion, no Monte Carlo): (E loss(x+xi) - loss(x)) / sigma^2 -> c_full."""
    teacher, student = tiny_mlp(activation, 0, hidden=(8,)), tiny_mlp(activation, 1)
    x, y = points(4), torch.tensor([0, 1, 2, 1])
    c = taylor.second_order_coefficients(teacher, student, x, y)
    sigma = 1e-3
    measured = quadrature_excess(teacher, student, x, y, sigma) / sigma ** 2
    for i, name in enumerate(taylor.STATEMENTS):
        torch.testing.assert_close(measured[i], c[name]["full"], rtol=1e-4, atol=1e-6)
        # the paper's forms differ at these points by far more than the O(sigma^2) bias
        assert (measured[i] - c[name]["paper"]).abs().max() > 1e-3, name
    assert torch.allclose(c["eq3"]["full"], 0.5 * (c["eq3"]["jacobian"] - c["eq3"]["hessian"]))


def test_eq3_paper_form_is_twice_the_gradient_term_without_curvature():
    student = tiny_mlp("tanh", 1)
    x, y = points(3), torch.tensor([0, 2, 1])
    c = taylor.second_order_coefficients(student, student, x, y)
    probs = F.softmax(student(x), 1).detach()
    g = jacobian.input_gradient(SoftmaxOutput(student), x, y).flatten(1)
    expected = g.pow(2).sum(1) / probs.gather(1, y[:, None])[:, 0] ** 2
    torch.testing.assert_close(c["eq3"]["paper"], expected, rtol=1e-10, atol=1e-12)
    assert torch.all(c["prop1"]["full"] == 0)  # teacher == student: nothing to match


# ---------------------------------------------------------------------------------------------------- Monte Carlo
def test_orthogonal_blocks_are_standard_normal_and_orthogonal():
    z = taylor.orthogonal_gaussian_blocks(4000, 3, torch.Generator().manual_seed(0))
    rows = z.reshape(-1, 3)
    assert rows.mean(0).abs().max() < 0.05
    torch.testing.assert_close(torch.cov(rows.T), torch.eye(3, dtype=torch.float64), atol=0.06, rtol=0)
    dots = torch.einsum("bid,bjd->bij", z, z)
    off = dots - torch.diag_embed(dots.diagonal(dim1=1, dim2=2))
    assert off.abs().max() < 1e-10


@pytest.mark.parametrize("orthogonal", [True, False])
def test_noisy_excess_is_unbiased_with_calibrated_standard_errors(orthogonal):
    """Against quadrature, over independent seeds: z-scores have mean ~0 and spread ~1."""
    teacher, student = tiny_mlp("tanh", 0, hidden=(8,)), tiny_mlp("tanh", 1)
    x, y = points(2), torch.tensor([0, 2])
    sigmas = [0.3, 0.8]
    exact = torch.stack([quadrature_excess(teacher, student, x, y, s) for s in sigmas], -1)  # (4, B, S)
    z = torch.stack([(e.excess - exact) / e.se for e in
                     (taylor.noisy_excess(teacher, student, x, y, sigmas, 400, seed=k, orthogonal=orthogonal)
                      for k in range(12))])
    assert abs(float(z.mean())) < 0.3
    assert 0.7 < float(z.std()) < 1.35


def test_noisy_excess_on_linear_networks_is_exactly_the_jacobian_term():
    """d linear: (l(x+sz) + l(x-sz))/2 - l(x) = s^2 ||G z||^2 exactly; its mean is s^2 ||G||_F^2."""
    teacher = tiny_mlp("relu", 0, hidden=(), dim=5)
    student = tiny_mlp("relu", 1, hidden=(), dim=5)
    x, y = points(3, dim=5), torch.tensor([0, 1, 2])
    gap = (teacher.classifier.weight - student.classifier.weight).detach().pow(2).sum()
    est = taylor.noisy_excess(teacher, student, x, y, [0.01, 1.0], 5000, seed=0)
    prop1 = est.excess[0] / torch.tensor([0.01, 1.0]) ** 2
    assert ((prop1 - gap).abs() <= 4 * est.se[0] / torch.tensor([0.01, 1.0]) ** 2).all()
    assert est.crossed is None   # no ReLU module at all: nothing to count
    c = taylor.second_order_coefficients(teacher, student, x, y)
    torch.testing.assert_close(c["prop1"]["full"], gap.expand(3), rtol=1e-10, atol=1e-12)
    d = taylor.discrepancies(est, c)
    assert d["prop1"]["paper"].shape == (3, 2)


def test_relu_margin_and_crossing_count_on_a_one_layer_relu_net():
    net, other = tiny_mlp("relu", 3, hidden=(5,), dim=2), tiny_mlp("relu", 4, hidden=(5,), dim=2)
    x, y = points(3), torch.tensor([0, 1, 2])
    w, b = net.body[0].weight.detach(), net.body[0].bias.detach()
    expected = ((x.flatten(1) @ w.T + b).abs() / w.norm(dim=1)).min(1).values
    torch.testing.assert_close(taylor.relu_margin(net, x), expected, rtol=1e-10, atol=1e-12)
    inside = min(expected.min().item(), taylor.relu_margin(other, x).min().item()) / 50
    est = taylor.noisy_excess(net, other, x, y, [inside, 10.0], 256, seed=0)
    assert (est.crossed[:, 0] == 0).all() and est.crossed[:, 1].min() > 0.5


# ---------------------------------------------------------------------------------------------------- fits
def test_fit_power_law_recovers_synthetic_power_laws():
    s = np.geomspace(1e-3, 1, 9)
    fit = taylor.fit_power_law(s, 3 * s ** 4)
    assert fit.slope == pytest.approx(4, abs=1e-9) and fit.prefactor == pytest.approx(3, rel=1e-9)
    rng = np.random.default_rng(0)
    err = 1e-6 * np.ones_like(s)
    noisy = 2 * s ** 2 * (1 + 0.01 * rng.standard_normal(len(s))) + err * rng.standard_normal(len(s))
    fit = taylor.fit_power_law(s, noisy, err, min_snr=3)
    assert fit.slope == pytest.approx(2, abs=0.05) and fit.slope_se > 0
    buried = taylor.fit_power_law(s, s ** 4, 1e-2 * np.ones_like(s), min_snr=3)  # only the largest sigmas resolved
    assert buried.n == 2 and buried.slope == pytest.approx(4, abs=1e-9)
    assert math.isnan(taylor.fit_power_law(s, s ** 4, np.ones_like(s)).slope)  # nothing resolved


def test_fit_coefficients_recovers_known_weights():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(20), rng.standard_normal(20)
    w, se = taylor.fit_coefficients(0.5 * a - 0.5 * b, np.full(20, 1e-3), [a, b])
    np.testing.assert_allclose(w, [0.5, -0.5], atol=1e-9)
    assert (se > 0).all()


# ---------------------------------------------------------------------------------------------------- Section 3
def test_affine_residual_zero_without_biases_and_not_with_them(make_vgg):
    x = points(3, dim=64).view(3, 1, 8, 8)
    torch.manual_seed(0)
    free = models.build("vgg4", 1, 4, width=0.125, batch_norm=False, bias=False).double()
    assert taylor.affine_residual(free, x).max() < 1e-12
    torch.manual_seed(0)
    biased = models.build("vgg4", 1, 4, width=0.125, batch_norm=False, bias=True).double()
    assert taylor.affine_residual(biased, x).min() > 1e-6
    assert taylor.affine_residual(make_vgg(), x).min() > 1e-6   # BatchNorm with non-trivial running stats
