"""Tests for jkt.losses: every term against a direct computation (numpy or explicit loops), the presets,
the Objective's validation and its combination of terms."""
import math

import numpy as np
import pytest
import torch
from torch.func import jacrev

from jkt import losses
from jkt.losses import Objective, preset


def num(value) -> float:
    """A Python float of a tensor (detached: many terms carry a graph) or of a number."""
    return float(value.detach()) if torch.is_tensor(value) else float(value)


def rand(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def np_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def per_sample_jacobians(model, x):
    """(B, K, D): every sample's Jacobian by torch.autograd.functional.jacobian."""
    return torch.stack([torch.autograd.functional.jacobian(lambda xi: model(xi.unsqueeze(0))[0], xi).flatten(1)
                        for xi in x])


# ---------------------------------------------------------------- the terms
def test_cross_entropy():
    logits, y = rand(5, 4), torch.tensor([0, 3, 1, 1, 2])
    expected = -np.mean([np_log_softmax(logits.numpy())[b, y[b]] for b in range(5)])
    assert math.isclose(num(losses.cross_entropy(logits, y)), expected, rel_tol=1e-12)


def test_activation_matching_sums_classes_and_averages_batch():
    s, t = rand(5, 4, seed=1), rand(5, 4, seed=2)
    expected = sum(sum((num(s[b, k]) - num(t[b, k])) ** 2 for k in range(4)) for b in range(5)) / 5
    assert math.isclose(num(losses.activation_matching(s, t)), expected, rel_tol=1e-12)
    assert num(losses.activation_matching(s, s)) == 0.0


def test_jacobian_matching_plain():
    gs, gt = rand(3, 2, 4, 4, seed=1), rand(3, 2, 4, 4, seed=2)
    expected = np.mean([((gs[b].numpy() - gt[b].numpy()) ** 2).sum() for b in range(3)])
    assert math.isclose(num(losses.jacobian_matching(gs, gt)), expected, rel_tol=1e-12)


def test_jacobian_matching_normalized():
    gs, gt = rand(3, 2, 4, 4, seed=1, scale=5.0), rand(3, 2, 4, 4, seed=2, scale=0.1)
    expected = []
    for b in range(3):
        s, t = gs[b].numpy().ravel(), gt[b].numpy().ravel()
        expected.append(((s / np.linalg.norm(s) - t / np.linalg.norm(t)) ** 2).sum())
    value = num(losses.jacobian_matching(gs, gt, normalized=True))
    assert math.isclose(value, num(np.mean(expected)), rel_tol=1e-9)
    # scale-invariant, in [0, 4]
    assert math.isclose(num(losses.jacobian_matching(7 * gs, gt, normalized=True)), value, rel_tol=1e-9)
    assert 0 <= value <= 4


@pytest.mark.parametrize("zero", ["student", "teacher", "both"])
def test_jacobian_matching_normalized_is_finite_at_zero_gradients(zero):
    gs = rand(3, 1, 4, 4, seed=1).requires_grad_(True)
    gt = rand(3, 1, 4, 4, seed=2).requires_grad_(True)
    zs = torch.zeros_like(gs, requires_grad=True)
    zt = torch.zeros_like(gt, requires_grad=True)
    s = zs if zero in ("student", "both") else gs
    t = zt if zero in ("teacher", "both") else gt
    value = losses.jacobian_matching(s, t, normalized=True)
    assert torch.isfinite(value)
    expected = {"student": 1.0, "teacher": 1.0, "both": 0.0}[zero]  # ||0 - unit||^2 = 1
    assert math.isclose(num(value), expected, abs_tol=1e-6)
    ds, dt = torch.autograd.grad(value, (s, t))
    assert torch.isfinite(ds).all() and torch.isfinite(dt).all()


def test_jacobian_norm_penalty():
    g = rand(4, 3, 2, 2, seed=3)
    expected = np.mean([(g[b].numpy() ** 2).sum() for b in range(4)])
    assert math.isclose(num(losses.jacobian_norm_penalty(g)), expected, rel_tol=1e-12)


def test_jacobian_norm_penalty_ce_is_grad_log_softmax(make_mlp):
    model = make_mlp()
    x, y = rand(3, 1, 8, 8, seed=4), torch.tensor([1, 0, 3])
    value = losses.jacobian_norm_penalty_ce(model, x, y)
    assert value.requires_grad  # create_graph=True by default: usable as a training penalty
    grads = [jacrev(lambda xi, k=int(k): torch.log_softmax(model(xi.unsqueeze(0)), 1)[0, k])(xi)
             for xi, k in zip(x, y)]
    expected = torch.stack([g.pow(2).sum() for g in grads]).mean()
    torch.testing.assert_close(value.detach(), expected, rtol=1e-10, atol=0)
    # and sum_i y^i ||grad S_s^i||^2 / (S_s^i)^2 with one-hot y (Eq. 3), by central differences on a few pixels
    eps, b, k = 1e-6, 1, int(y[1])
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[b, k]
        for c in (0, 17, 40):
            xp, xm = x.clone(), x.clone()
            xp[b].view(-1)[c] += eps
            xm[b].view(-1)[c] -= eps
            dp = (torch.softmax(model(xp), 1)[b, k] - torch.softmax(model(xm), 1)[b, k]) / (2 * eps)
            assert math.isclose(num(dp / p), num(grads[b].view(-1)[c]), rel_tol=1e-6, abs_tol=1e-9)
    # differentiable wrt the parameters
    (gw,) = torch.autograd.grad(value, model.classifier.weight)
    assert torch.isfinite(gw).all() and gw.abs().sum() > 0


def test_jacobian_matching_ce():
    gs, gt, p = rand(3, 1, 4, 4, seed=1), rand(3, 1, 4, 4, seed=2), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    expected = np.mean([-(gs[b].numpy() * gt[b].numpy()).sum() / num(p[b]) for b in range(3)])
    assert math.isclose(num(losses.jacobian_matching_ce(gs, gt, p)), expected, rel_tol=1e-12)


def test_noisy_distillation_sigma_zero_is_activation_matching(make_mlp):
    student, teacher = make_mlp(seed=0), make_mlp(seed=1)
    x = rand(4, 1, 8, 8, seed=5)
    expected = losses.activation_matching(student(x), teacher(x))
    for samples in (1, 3):
        torch.testing.assert_close(losses.noisy_distillation(student, teacher, x, 0.0, samples), expected,
                                   rtol=1e-12, atol=0)


def test_noisy_distillation_with_generator_is_a_monte_carlo_loop(make_mlp):
    student, teacher = make_mlp(seed=0), make_mlp(seed=1)
    x, sigma, samples = rand(4, 1, 8, 8, seed=5), 0.3, 3
    value = losses.noisy_distillation(student, teacher, x, sigma, samples, torch.Generator().manual_seed(42))
    g = torch.Generator().manual_seed(42)
    per_draw = []
    for _ in range(samples):
        xn = x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
        s, t = student(xn).detach().numpy(), teacher(xn).detach().numpy()
        per_draw.append(((s - t) ** 2).sum(1).mean())
    assert math.isclose(num(value), num(np.mean(per_draw)), rel_tol=1e-12)
    assert not math.isclose(num(value), num(losses.noisy_distillation(student, teacher, x, 0.0)), rel_tol=1e-3)
    # the student gets gradients, the teacher none
    value.backward()
    assert student.classifier.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="sigma"):
        losses.noisy_distillation(student, teacher, x, -0.1)
    with pytest.raises(ValueError, match="samples"):
        losses.noisy_distillation(student, teacher, x, 0.1, samples=0)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_target_distillation(temperature):
    s, t = rand(5, 4, seed=1, scale=3), rand(5, 4, seed=2, scale=3)
    log_ps = np_log_softmax(s.numpy() / temperature)
    log_pt = np_log_softmax(t.numpy() / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(1).mean()
    value = num(losses.soft_target_distillation(s, t, temperature))
    assert math.isclose(value, temperature ** 2 * kl, rel_tol=1e-10)
    assert math.isclose(num(losses.soft_target_distillation(t, t, temperature)), 0.0, abs_tol=1e-12)


def test_lwf_distillation_forms():
    s, t = rand(5, 4, seed=1, scale=3), rand(5, 4, seed=2, scale=3)
    T = 2.0
    log_ps, log_pt = np_log_softmax(s.numpy() / T), np_log_softmax(t.numpy() / T)
    pt = np.exp(log_pt)
    cross_entropy = -(pt * log_ps).sum(1).mean()
    entropy = -(pt * log_pt).sum(1).mean()
    assert math.isclose(num(losses.lwf_distillation(s, t)), cross_entropy - entropy, rel_tol=1e-10)
    assert math.isclose(num(losses.lwf_distillation(s, t, form="squared")),
                        num(((s - t) ** 2).sum(1).mean()), rel_tol=1e-12)
    with pytest.raises(ValueError, match="form"):
        losses.lwf_distillation(s, t, form="l1")


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_attention_map(p):
    f = rand(3, 5, 4, 6, seed=7)
    a = losses.attention_map(f, p) if p != 2.0 else losses.attention_map(f)
    assert a.shape == (3, 24)
    for b in range(3):
        q = (np.abs(f[b].numpy()) ** p).mean(0).ravel()
        np.testing.assert_allclose(a[b].numpy(), q / np.linalg.norm(q), rtol=1e-12)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_attention_transfer():
    fs = [rand(2, 3, 8, 8, seed=1), rand(2, 4, 4, 4, seed=2)]
    ft = [rand(2, 6, 8, 8, seed=3), rand(2, 2, 4, 4, seed=4)]  # channels may differ
    expected = 0.0
    for s, t in zip(fs, ft):
        for b in range(2):
            qs = (s[b].numpy() ** 2).mean(0).ravel()
            qt = (t[b].numpy() ** 2).mean(0).ravel()
            expected += ((qs / np.linalg.norm(qs) - qt / np.linalg.norm(qt)) ** 2).sum() / 2
    assert math.isclose(num(losses.attention_transfer(fs, ft)), expected, rel_tol=1e-10)
    # gradients reach the student's features only
    fs = [f.clone().requires_grad_(True) for f in fs]
    ft = [f.clone().requires_grad_(True) for f in ft]
    losses.attention_transfer(fs, ft).backward()
    assert all(f.grad is not None for f in fs) and all(f.grad is None for f in ft)


def test_attention_transfer_rejects_mismatches():
    a, b = rand(2, 3, 8, 8), rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="spatial size"):
        losses.attention_transfer([a], [b])
    with pytest.raises(ValueError, match="feature maps"):
        losses.attention_transfer([a, a], [a])
    with pytest.raises(ValueError, match="feature maps"):
        losses.attention_transfer([], [])


# ---------------------------------------------------------------- presets
PAPER_ROWS = [  # Tables 1-2 of the paper, in order, with what each row's name says
    ("ce", "Regular Cross-Entropy (CE) training", 1, 0, 0),
    ("act+ce", "Match Activations + CE", 1, 1, 0),
    ("jac+ce", "Match Jacobians + CE", 1, 0, 1),
    ("act+jac+ce", "Match {Activations + Jacobians} + CE", 1, 1, 1),
    ("act", "Match Activations only", 0, 1, 0),
    ("act+jac", "Match {Activations + Jacobians}", 0, 1, 1),
]


def test_paper_methods_are_the_table_rows_in_order():
    assert list(losses.PAPER_METHODS) == [row[0] for row in PAPER_ROWS]


@pytest.mark.parametrize("method, label, alpha, beta, gamma", PAPER_ROWS)
def test_preset_weights(method, label, alpha, beta, gamma):
    objective = preset(method)
    assert (objective.alpha, objective.beta, objective.gamma) == (alpha, beta, gamma)
    parts = method.split("+")
    assert (objective.alpha == 1) == ("ce" in parts)
    assert (objective.beta == 1) == ("act" in parts)
    assert (objective.gamma == 1) == ("jac" in parts)
    assert objective.hinton == objective.noisy == objective.penalty == 0
    assert objective.input_noise == 0 and objective.jacobian_loss == "squared"
    assert objective.needs_teacher == (method != "ce")
    assert losses.METHOD_LABELS[method] == label


def test_preset_overrides_and_rejections():
    objective = preset("jac+ce", jacobian_loss="normalized", jacobian_output="top1")
    assert objective.jacobian_loss == "normalized" and objective.jacobian_output == "top1" and objective.gamma == 1
    assert preset("ce").to_dict() == Objective().to_dict()
    with pytest.raises(ValueError, match="method"):
        preset("act+jac+hinton")
    with pytest.raises(ValueError, match="lambda_"):
        preset("ce", lambda_=1.0)
    with pytest.raises(ValueError, match="gama"):
        preset("ce", gama=1.0)
    with pytest.raises(ValueError, match="beta"):
        preset("act", beta=-1.0)


@pytest.mark.parametrize("name", ["alpha", "beta", "gamma", "hinton", "noisy", "penalty"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, -1e-9, "1", None, True, [1.0]])
def test_objective_rejects_bad_weights(name, value):
    with pytest.raises(ValueError, match=name):
        Objective(**{name: value})


@pytest.mark.parametrize("kwargs, name", [
    (dict(jacobian_output="label"), "jacobian_output"),
    (dict(jacobian_output=None), "jacobian_output"),
    (dict(jacobian_loss="l1"), "jacobian_loss"),
    (dict(temperature=0.0), "temperature"),
    (dict(sigma=-0.1), "sigma"),
    (dict(input_noise=math.nan), "input_noise"),
    (dict(samples=0), "samples"),
    (dict(projections=-1), "projections"),
    (dict(projections=1.5), "projections"),
])
def test_objective_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Objective(**kwargs)


# ---------------------------------------------------------------- Objective.terms and total
def test_terms_use_the_teachers_index_and_total_is_the_weighted_sum(make_mlp):
    student = make_mlp().train()
    x, y = rand(4, 1, 8, 8, seed=8), torch.tensor([0, 1, 2, 3])
    t_logits, t_grad = rand(4, 4, seed=9), rand(4, 1, 8, 8, seed=10, scale=0.1)
    t_index = torch.tensor([2, 2, 0, 1])  # not the labels
    objective = Objective(alpha=0.5, beta=2.0, gamma=0.25)
    terms = objective.terms(student, x, y, t_logits, t_grad, t_index)
    assert set(terms) == {"ce", "act", "jac"}
    J = per_sample_jacobians(student, x)  # (B, K, D)
    logits = student(x).detach().numpy()
    s_grad = J[torch.arange(4), t_index].numpy()
    jac = np.mean(((s_grad - t_grad.flatten(1).numpy()) ** 2).sum(1))
    act = np.mean(((logits - t_logits.numpy()) ** 2).sum(1))
    ce = -np.mean(np_log_softmax(logits)[np.arange(4), y.numpy()])
    assert math.isclose(num(terms["jac"]), jac, rel_tol=1e-10)
    assert math.isclose(num(terms["act"]), act, rel_tol=1e-10)
    assert math.isclose(num(terms["ce"]), ce, rel_tol=1e-10)
    # with the labels instead, the Jacobian term is different
    by_label = objective.terms(student, x, y, t_logits, t_grad, y)["jac"]
    assert not math.isclose(num(by_label), jac, rel_tol=1e-3)
    total = objective.total(terms)
    assert math.isclose(num(total), 0.5 * ce + 2.0 * act + 0.25 * jac, rel_tol=1e-10)
    # the total trains through the Jacobian term (double backpropagation)
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())


def test_terms_normalized_jacobian_loss(make_mlp):
    student = make_mlp()
    x, y = rand(3, 1, 8, 8, seed=8), torch.tensor([0, 1, 2])
    t_logits, t_grad = rand(3, 4, seed=9), rand(3, 1, 8, 8, seed=10)
    terms = preset("act+jac", jacobian_loss="normalized").terms(student, x, y, t_logits, t_grad, y)
    assert set(terms) == {"act", "jac"}
    s_grad = per_sample_jacobians(student, x)[torch.arange(3), y].numpy()
    t = t_grad.flatten(1).numpy()
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    assert math.isclose(num(terms["jac"]), np.mean(((unit(s_grad) - unit(t)) ** 2).sum(1)), rel_tol=1e-8)


@pytest.mark.parametrize("output", ["target", "top1"])
def test_penalty_term_on_the_selected_output(make_mlp, output):
    student = make_mlp()
    x, y = rand(3, 1, 8, 8, seed=8), torch.tensor([0, 1, 2])
    terms = Objective(penalty=0.1, jacobian_output=output).terms(student, x, y)
    assert set(terms) == {"ce", "penalty"}
    J = per_sample_jacobians(student, x)
    index = y if output == "target" else student(x).argmax(1)
    expected = J[torch.arange(3), index].pow(2).sum(1).mean()
    assert math.isclose(num(terms["penalty"]), num(expected), rel_tol=1e-10)


def test_penalty_term_with_projections_estimates_the_frobenius_norm(make_mlp):
    student = make_mlp()
    x, y = rand(2, 1, 8, 8, seed=8), torch.tensor([0, 1])
    exact = num(per_sample_jacobians(student, x).pow(2).sum((1, 2)).mean())
    g = torch.Generator().manual_seed(0)
    objective = Objective(alpha=0.0, penalty=1.0, projections=400)
    value = num(objective.terms(student, x, y, generator=g)["penalty"])
    assert abs(value - exact) < 0.2 * exact


def test_terms_need_the_teacher():
    student = torch.nn.Linear(4, 3).double()
    x, y = rand(2, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="teacher_logits"):
        preset("act+ce").terms(student, x, y)
    with pytest.raises(ValueError, match="teacher="):
        preset("noisy").terms(student, x, y, teacher_logits=rand(2, 3))
    assert preset("ce").terms(student, x, y).keys() == {"ce"}


def test_hinton_and_noisy_terms(make_mlp):
    student, teacher = make_mlp(seed=0), make_mlp(seed=1)
    x, y = rand(3, 1, 8, 8, seed=8), torch.tensor([0, 1, 2])
    with torch.no_grad():
        t_logits = teacher(x)
    terms = preset("hinton+ce", temperature=3.0).terms(student, x, y, t_logits)
    torch.testing.assert_close(terms["hinton"], losses.soft_target_distillation(student(x), t_logits, 3.0))
    terms = preset("noisy", sigma=0.0, samples=2).terms(student, x, y, t_logits, teacher=teacher)
    assert set(terms) == {"noisy"}
    torch.testing.assert_close(terms["noisy"], losses.activation_matching(student(x), t_logits))


def test_input_noise_perturbs_the_inputs(make_mlp):
    student = make_mlp()
    x, y = rand(3, 1, 8, 8, seed=8), torch.tensor([0, 1, 2])
    clean = num(Objective().terms(student, x, y)["ce"])
    g = torch.Generator().manual_seed(0)
    noisy = num(Objective(input_noise=0.5).terms(student, x, y, generator=g)["ce"])
    g = torch.Generator().manual_seed(0)
    xn = x + 0.5 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    assert noisy != clean
    assert math.isclose(noisy, num(losses.cross_entropy(student(xn), y)), rel_tol=1e-12)
