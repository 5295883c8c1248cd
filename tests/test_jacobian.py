"""Tests for jkt.jacobian: input gradients and full Jacobians against central finite differences and
torch.func in float64, double backpropagation, the BatchNorm caveat, the random-projection estimators."""
import copy

import pytest
import torch
from torch import nn
from torch.func import grad as func_grad
from torch.func import jacrev, vmap

from jkt import jacobian, models
from jkt.jacobian import (frobenius_sq_estimate, full_jacobian, input_gradient, jacobian_distance_sq_estimate,
                          output_and_input_gradient, projected_gradient, select_index)

EPS = 1e-6  # central differences in float64: truncation ~EPS^2, round-off ~1e-16/EPS


def inputs(batch=3, size=8, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g, dtype=torch.float64)


def coordinates(x, n=5, seed=0):
    g = torch.Generator().manual_seed(seed + 7)
    return torch.randperm(x[0].numel(), generator=g)[:n].tolist()


@torch.no_grad()
def fd_output_derivative(model, x, b, coord, eps=EPS):
    """d model(x)[b, :] / d x[b].flatten()[coord], by central differences, perturbing sample b only."""
    xp, xm = x.clone(), x.clone()
    xp[b].view(-1)[coord] += eps
    xm[b].view(-1)[coord] -= eps
    return (model(xp)[b] - model(xm)[b]) / (2 * eps)


def per_sample_jacrev_gradient(model, x, index):
    """grad of model(x_b)[index_b] wrt x_b by torch.func.jacrev, one sample at a time."""
    return torch.stack([jacrev(lambda xi, k=int(k): model(xi.unsqueeze(0))[0, k])(xi)
                        for xi, k in zip(x, index)])


def vmap_gradient(model, x, index, num_classes):
    """The same by torch.func.grad under vmap, the output picked by a one-hot weight."""
    onehot = nn.functional.one_hot(index, num_classes).to(x.dtype)
    return vmap(func_grad(lambda xi, oi: (model(xi.unsqueeze(0))[0] * oi).sum()))(x, onehot)


def autograd_functional_jacobian(model, x):
    """Per-sample Jacobians by torch.autograd.functional.jacobian (not torch.func): shape (B, K, *x.shape[1:])."""
    return torch.stack([torch.autograd.functional.jacobian(lambda xi: model(xi.unsqueeze(0))[0], xi) for xi in x])


@pytest.fixture(params=["vgg", "mlp"])
def model64(request, make_vgg, make_mlp):
    """A float64 VGG-4 (eval mode, non-trivial running stats) or a smooth tanh MLP; 8x8 inputs, 4 classes."""
    return make_vgg() if request.param == "vgg" else make_mlp()


# ---------------------------------------------------------------- input_gradient and full_jacobian
@pytest.mark.parametrize("which", ["labels", "top1", "int"])
def test_input_gradient_against_finite_differences_and_torch_func(model64, which):
    x = inputs()
    with torch.no_grad():
        logits = model64(x)
    if which == "labels":
        index, expected_index = torch.tensor([2, 0, 3]), torch.tensor([2, 0, 3])
    elif which == "top1":
        index, expected_index = "top1", logits.argmax(1)
    else:
        index, expected_index = 1, torch.tensor([1, 1, 1])
    out_logits, g, used = output_and_input_gradient(model64, x, index)
    assert torch.equal(used, expected_index)
    torch.testing.assert_close(out_logits, logits, rtol=0, atol=1e-12)
    assert g.shape == x.shape and g.dtype == torch.float64 and not g.requires_grad
    torch.testing.assert_close(input_gradient(model64, x, index), g, rtol=0, atol=0)
    # central finite differences on a handful of coordinates of every sample
    for b in range(len(x)):
        for c in coordinates(x, seed=b):
            fd = fd_output_derivative(model64, x, b, c)[expected_index[b]]
            assert abs(float(fd) - float(g[b].view(-1)[c])) < 1e-7 + 1e-6 * abs(float(fd)), (b, c)
    # torch.func: jacrev per sample, and grad under vmap
    torch.testing.assert_close(g, per_sample_jacrev_gradient(model64, x, expected_index), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, vmap_gradient(model64, x, expected_index, 4), rtol=1e-10, atol=1e-12)
    assert g.abs().sum() > 0


def test_full_jacobian_against_finite_differences_and_autograd(model64):
    x = inputs(batch=2)
    was_training = model64.training
    J = full_jacobian(model64, x)
    assert model64.training == was_training
    assert J.shape == (2, 4, 1, 8, 8) and J.dtype == torch.float64
    torch.testing.assert_close(J, autograd_functional_jacobian(model64, x), rtol=1e-10, atol=1e-12)
    for b in range(2):
        for c in coordinates(x, n=4, seed=b):
            fd = fd_output_derivative(model64, x, b, c)
            torch.testing.assert_close(J[b].flatten(1)[:, c], fd, rtol=1e-6, atol=1e-7)
    # every row agrees with input_gradient of that output
    for k in range(4):
        torch.testing.assert_close(J[:, k], input_gradient(model64, x, k), rtol=1e-10, atol=1e-12)


def test_full_jacobian_is_in_eval_mode_and_restores_mode(make_vgg):
    model = make_vgg()
    model.train()
    x = inputs(batch=3)
    before = copy.deepcopy(model.state_dict())
    J = full_jacobian(model, x)
    assert model.training  # restored
    for k, v in model.state_dict().items():  # running stats untouched
        assert torch.equal(v, before[k]), k
    reference = copy.deepcopy(model).eval()
    torch.testing.assert_close(J, autograd_functional_jacobian(reference, x), rtol=1e-10, atol=1e-12)


def test_input_gradient_on_12x12_and_3_channels(make_vgg, make_mlp):
    vgg = make_vgg(in_channels=3, num_classes=3, size=12)
    mlp = make_mlp(in_channels=3, num_classes=3, size=12)
    x = inputs(batch=2, size=12, channels=3)
    y = torch.tensor([0, 2])
    for model in (vgg, mlp):
        g = input_gradient(model, x, y)
        torch.testing.assert_close(g, per_sample_jacrev_gradient(model, x, y), rtol=1e-10, atol=1e-12)
        c = coordinates(x, n=1)[0]
        fd = fd_output_derivative(model, x, 1, c)[2]
        assert abs(float(fd) - float(g[1].view(-1)[c])) < 1e-7 + 1e-6 * abs(float(fd))


def test_input_gradient_leaves_model_and_input_alone(make_vgg):
    model = make_vgg()
    x = inputs()
    x0 = x.clone()
    input_gradient(model, x, "top1")
    assert torch.equal(x, x0) and x.grad is None and not x.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


@pytest.mark.parametrize("bad", [4, -1, 10, True, "top2", "label", 1.0,
                                 torch.tensor([0, 1, 2, 3]), torch.tensor([[0], [1], [2]]),
                                 torch.tensor([0, 1]), torch.tensor([0.0, 1.0, 2.0]),
                                 torch.tensor([0, 1, 2], dtype=torch.int32), [0, 1, 2], None])
def test_bad_index_raises_value_error(make_mlp, bad):
    model = make_mlp()
    with pytest.raises(ValueError, match="index"):
        input_gradient(model, inputs(batch=3), bad)


def test_select_index():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, -1.0, 2.0]])
    assert select_index(logits, "top1").tolist() == [1, 0]
    assert select_index(logits, 2).tolist() == [2, 2]
    assert select_index(logits, torch.tensor([2, 1])).tolist() == [2, 1]


def test_create_graph_gives_double_backprop_gradient(make_mlp):
    """d/dW ||input_gradient||^2 by double backpropagation against central differences in W (float64)."""
    model = make_mlp()
    x, y = inputs(batch=3), torch.tensor([0, 3, 1])
    weight = model.body[0].weight

    def loss(create_graph):
        return input_gradient(model, x, y, create_graph=create_graph).pow(2).sum()

    value = loss(True)
    assert value.requires_grad
    (analytic,) = torch.autograd.grad(value, weight)
    assert analytic.abs().sum() > 0
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, weight.shape[0], (5,), generator=g).tolist()
    cols = torch.randint(0, weight.shape[1], (5,), generator=g).tolist()
    eps = 1e-5
    for i, j in zip(rows, cols):
        with torch.no_grad():
            weight[i, j] += eps
        plus = float(loss(False))
        with torch.no_grad():
            weight[i, j] -= 2 * eps
        minus = float(loss(False))
        with torch.no_grad():
            weight[i, j] += eps
        fd = (plus - minus) / (2 * eps)
        assert abs(fd - float(analytic[i, j])) < 1e-8 + 1e-6 * abs(fd), (i, j, fd, float(analytic[i, j]))
    # without create_graph nothing is kept
    assert not input_gradient(model, x, y).requires_grad
    logits, _, _ = output_and_input_gradient(model, x, y, create_graph=False)
    assert not logits.requires_grad
    logits, _, _ = output_and_input_gradient(model, x, y, create_graph=True)
    assert logits.requires_grad


# ---------------------------------------------------------------- the BatchNorm caveat
def batchnorm_decomposition(model, x, y):
    """For a model in its current mode: the batched gradient ``input_gradient(model, x, y)``, the rows
    ``R[b] = d logits[b, y_b] / d x`` (whole batch, by autograd, one backward pass per b), and the gradient
    with the batch statistics frozen (BatchNorm running stats replaced by the batch's own, eval mode)."""
    model = copy.deepcopy(model)
    stats = {}
    hooks = [m.register_forward_hook(
        lambda m, inp, out, name=name: stats.__setitem__(
            name, (inp[0].detach().mean((0, 2, 3)), inp[0].detach().var((0, 2, 3), unbiased=False))))
        for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    xr = x.clone().requires_grad_(True)
    training = model.training
    out = model(xr)
    for h in hooks:
        h.remove()
    selected = out.gather(1, y[:, None])[:, 0]
    rows = torch.stack([torch.autograd.grad(selected[b], xr, retain_graph=True)[0] for b in range(len(x))])
    frozen_model = copy.deepcopy(model)
    if training:
        for name, m in frozen_model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(stats[name][0])
                m.running_var.copy_(stats[name][1])
    frozen_model.eval()
    xf = x.clone().requires_grad_(True)
    out_f = frozen_model(xf)
    torch.testing.assert_close(out_f, out.detach(), rtol=1e-9, atol=1e-10)  # same function value
    frozen = torch.autograd.grad(out_f.gather(1, y[:, None]).sum(), xf)[0]
    batched = input_gradient(copy.deepcopy(model).train(training), x, y)
    return batched, rows, frozen


def caveat_sizes(model, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (batch,), generator=g)
    batched, rows, frozen = batchnorm_decomposition(model, x, y)
    torch.testing.assert_close(batched, rows.sum(0), rtol=1e-9, atol=1e-12)
    idx = torch.arange(batch)
    diagonal = rows[idx, idx]                      # d f_b / d x_b, the exact per-sample gradient
    off = batched - diagonal                       # sum over b != b' of d f_b / d x_b'
    mask = ~torch.eye(batch, dtype=torch.bool)
    pair = rows.flatten(2).norm(dim=2)[mask].mean() / diagonal.flatten(1).norm(dim=1).mean()
    return dict(off=float(off.norm() / diagonal.norm()),
                pair=float(pair),
                self_stats=float((diagonal - frozen).norm() / frozen.norm()),
                batched_vs_frozen=float((batched - frozen).norm() / frozen.norm()))


def test_batchnorm_cross_sample_terms(make_vgg):
    """In train mode BatchNorm couples the samples of a batch; in eval mode the batched gradient is per sample.

    Measured here (VGG-4 width 1/16, 8x8 float64 inputs, label outputs, seed 0), as fractions of the
    per-sample gradient's norm (``off`` = batched - block diagonal; ``pair`` = mean size of one
    cross-sample block d f_b/d x_b'; ``self_stats`` = the diagonal's part through the batch statistics):

        batch  4: off 0.48  pair 0.24   self_stats 0.26   batched vs frozen stats 0.46
        batch 64: off 0.27  pair 0.013  self_stats 0.017  batched vs frozen stats 0.27

    (In a wider sweep, seeds 0-2 and batches 4, 16, 64, 256: off stays at 0.3-0.55 from batch 16 to 256,
    and at 0.6-0.85 when every sample differentiates the same output; pair and self_stats fall x4 per x4.)
    Each cross-sample block shrinks like 1/batch (x16 here), but there are batch-1 of them per sample:
    their sum, the cross-sample part of the batched gradient, tends to a non-zero mean-field limit
    (BatchNorm's backward subtracts the batch mean of the upstream gradient and its projection on the
    normalised input): it does NOT vanish as the batch grows, so a student differentiated in train mode
    is matched with a gradient that is a third or more away from its per-sample one.
    """
    model = make_vgg()
    model.train()
    small, large = caveat_sizes(model, 4, seed=0), caveat_sizes(model, 64, seed=0)
    # non-zero in train mode, and sizeable
    assert small["off"] > 0.05 and large["off"] > 0.05
    # every single cross-sample block and the self-statistics part shrink (like 1/batch: x16 expected)
    assert large["pair"] < small["pair"] / 2
    assert large["self_stats"] < small["self_stats"] / 2
    # ... but their sum does not vanish like 1/batch (that would be a factor 16)
    assert large["off"] > small["off"] / 4
    # eval mode: exactly per sample
    model.eval()
    for batch in (4, 64):
        sizes = caveat_sizes(model, batch, seed=0)
        assert sizes["off"] < 1e-12 and sizes["pair"] < 1e-12
        assert sizes["self_stats"] < 1e-12 and sizes["batched_vs_frozen"] < 1e-12


# ---------------------------------------------------------------- random projections
def test_projected_gradient_is_v_transpose_J(model64):
    x = inputs(batch=3)
    v = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    logits, vj = projected_gradient(model64, x, v)
    J = autograd_functional_jacobian(model64, x)
    torch.testing.assert_close(vj, torch.einsum("bk,bk...->b...", v, J), rtol=1e-10, atol=1e-12)
    assert not logits.requires_grad and not vj.requires_grad


def test_projection_vectors_shape_and_checks():
    g = torch.Generator().manual_seed(0)
    v = jacobian.projection_vectors(3, 4, 5, g, dtype=torch.float64)
    assert v.shape == (5, 3, 4) and v.dtype == torch.float64
    with pytest.raises(ValueError, match="projections"):
        jacobian.projection_vectors(3, 4, 0)


def draws(estimate, n):
    return torch.stack([estimate() for _ in range(n)])


def assert_unbiased(samples, exact, k=4.0):
    """Mean of the per-projection samples within k standard errors of the exact value, per sample of the batch;
    the standard error must be small enough (< 15% of exact) for a biased estimator to be caught."""
    mean = samples.mean(0)
    se = samples.std(0, unbiased=True) / len(samples) ** 0.5
    assert (se < 0.15 * exact).all(), (se, exact)
    assert ((mean - exact).abs() < k * se).all(), (mean, exact, se)


def test_frobenius_sq_estimate_is_unbiased(model64):
    x = inputs(batch=3)
    exact = full_jacobian(model64, x).flatten(2).pow(2).sum((1, 2))
    torch.testing.assert_close(exact, autograd_functional_jacobian(model64, x).flatten(1).pow(2).sum(1))
    g = torch.Generator().manual_seed(0)
    samples = draws(lambda: frobenius_sq_estimate(model64, x, 1, generator=g), 300)
    assert samples.shape == (300, 3) and (samples >= 0).all()
    assert_unbiased(samples, exact)
    # many projections in one call: within the standard error of their mean
    many = frobenius_sq_estimate(model64, x, 300, generator=g)
    se = samples.std(0) / 300 ** 0.5
    assert ((many - exact).abs() < 4 * se).all()


def test_jacobian_distance_sq_estimate_is_unbiased(make_vgg, make_mlp):
    teacher, student = make_vgg(), make_mlp()
    x = inputs(batch=3)
    exact = (autograd_functional_jacobian(teacher, x) - autograd_functional_jacobian(student, x)).flatten(1).pow(2).sum(1)
    g = torch.Generator().manual_seed(1)
    samples = draws(lambda: jacobian_distance_sq_estimate(student, teacher, x, 1, generator=g), 300)
    assert_unbiased(samples, exact)
    # zero for identical networks
    same = jacobian_distance_sq_estimate(student, copy.deepcopy(student), x, 3, generator=g)
    assert torch.equal(same, torch.zeros(3, dtype=torch.float64))


def test_estimates_are_differentiable_with_create_graph(make_mlp):
    model, teacher = make_mlp(), make_mlp(seed=1)
    x = inputs(batch=2)
    g = torch.Generator().manual_seed(0)
    est = frobenius_sq_estimate(model, x, 2, generator=g, create_graph=True)
    assert est.requires_grad and not frobenius_sq_estimate(model, x, 2, generator=g).requires_grad
    (gw,) = torch.autograd.grad(est.sum(), model.body[0].weight)
    assert torch.isfinite(gw).all() and gw.abs().sum() > 0
    dist = jacobian_distance_sq_estimate(model, teacher, x, 2, generator=g, create_graph=True)
    (gw,) = torch.autograd.grad(dist.sum(), model.body[0].weight)
    assert torch.isfinite(gw).all() and gw.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_estimators_in_train_mode_do_not_probe_with_one_sample():
    """A student in training (the Jacobian-norm penalty with projections): VGG-9 on 8x8 images has 1x1 maps,
    where a one-sample train-mode BatchNorm fails; and the BatchNorm running stats must see exactly the
    projection passes on the whole batch (as many plain forward passes would), nothing else."""
    torch.manual_seed(0)
    model = models.build("vgg9", 1, 3, width=0.0625).train()
    reference = copy.deepcopy(model)
    x = torch.randn(4, 1, 8, 8)
    est = frobenius_sq_estimate(model, x, 2, generator=torch.Generator().manual_seed(0))
    assert est.shape == (4,) and torch.isfinite(est).all()
    with torch.no_grad():
        for _ in range(2):
            reference(x)
    for (name, a), b in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, msg=name)
    teacher = models.build("vgg9", 1, 3, width=0.0625).train()
    dist = jacobian_distance_sq_estimate(model, teacher, x, 1, generator=torch.Generator().manual_seed(0))
    assert dist.shape == (4,) and torch.isfinite(dist).all()
