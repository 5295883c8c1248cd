"""The numerical checks of the paper's expansions (notebook 01) and the Jacobian measurements of notebook 02.

Notation (workshop paper, Section 4): ``T``, ``S`` teacher and student logits, ``T_s``, ``S_s`` their softmax
outputs, ``xi = sigma * z`` with ``z ~ N(0, I_D)``, ``d^i = T^i - S^i``, ``H_f`` the input Hessian of ``f``.
The exact second-order expansions that the notebook derives (``E[xi^T A xi] = sigma^2 tr A``, odd moments
vanish, so the remainder is ``O(sigma^4)``):

* Proposition 1: ``E sum_i (d^i(x+xi))^2 = sum_i (d^i)^2 + sigma^2 sum_i ||grad d^i||^2 + sigma^2 sum_i d^i tr H_{d^i}``
  (the paper keeps the first two terms);
* Eq. 2: ``E[-sum_i T_s^i log S_s^i](x+xi) = L(x) - sigma^2 sum_i grad T_s^i . grad S_s^i / S_s^i
  - sigma^2/2 sum_i [T_s^i tr H_{log S_s^i} + log S_s^i tr H_{T_s^i}]`` (the paper keeps the Jacobian term);
* Proposition 2: ``E sum_i (y^i - S^i(x+xi))^2 = sum_i (y^i - S^i)^2 + sigma^2 sum_i ||grad S^i||^2
  + sigma^2 sum_i (S^i - y^i) tr H_{S^i}``;
* Eq. 3: ``E[-log S_s^y(x+xi)] = -log S_s^y + sigma^2/2 (||grad S_s^y||^2 / (S_s^y)^2 - tr H_{S_s^y} / S_s^y)``
  (the paper has ``sigma^2 ||grad S_s^y||^2 / (S_s^y)^2``: no 1/2, no Hessian term).

Everything here works in the dtype of its inputs; the notebooks use float64 copies of the networks.
"""
from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .validate import check_choice, check_positive_int

# ---------------------------------------------------------------------------------------------------
# Per-profile sizes of the two notebooks (the notebooks pick one dict; nothing here depends on data)

_CPU = dict(
    # notebook 01: the Taylor checks on small float64 MLPs over 8x8 digits
    points=8,                      # test points per network
    draws=32_000,                  # antithetic noise pairs per point, in orthogonal blocks (shared by all sigmas)
    chunk_rows=48_000,             # rows per forward pass in the Monte Carlo (bounds memory)
    sigmas=(1 / 256, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2),
    teacher_hidden=(32, 32), student_hidden=(16,),
    teacher_epochs=8, student_epochs=40, student_per_class=20,
    affine_epochs=3, affine_points=64, widget_draws=4_000,
    # notebook 02: Jacobians of the profile's VGG-9 teacher and VGG-4 student
    fd_points=4, fd_directions=3,
    timing_batch=64, timing_repeats=5, timing_warmup=1, timing_min_seconds=0.2,
    bn_batch_sizes=(8, 32, 128), bn_rows=8,
    student_steps=60, gradient_examples=5, cosine_points=None,    # None: the whole test set
    estimator_points=8, estimator_repeats=16, estimator_sigmas=(0.01, 0.1),
)
SIZES = {
    "smoke": dict(
        _CPU, points=3, draws=8_000, chunk_rows=24_000, teacher_epochs=4, student_epochs=20,
        affine_epochs=2, affine_points=16, widget_draws=1_000,
        fd_points=2, fd_directions=2, timing_batch=32, timing_repeats=3, timing_min_seconds=0.02,
        bn_batch_sizes=(8, 32), bn_rows=4,
        student_steps=40, gradient_examples=3, estimator_points=6, estimator_repeats=8),
    "cpu": _CPU,
    "paper": dict(_CPU, points=12, draws=128_000, timing_batch=128, timing_repeats=5, bn_rows=16,
                  student_steps=400, estimator_repeats=48),
}


def sizes(profile: str) -> dict:
    """The notebooks' sample counts and sizes for ``profile`` (smoke: CI seconds; cpu: minutes on 2 cores)."""
    check_choice("profile", profile, SIZES)
    return dict(SIZES[profile])


# ---------------------------------------------------------------------------------------------------
# Second-order data of a network at a batch of points

@dataclass
class Expansion:
    """Value, input Jacobian and input-Hessian traces of a vector function at each point of a batch:
    ``value`` (B, K), ``grad`` (B, K, D) with D the flattened input size, ``hess_trace`` (B, K)."""
    value: torch.Tensor
    grad: torch.Tensor
    hess_trace: torch.Tensor


def _single(fn, shape):
    """``fn`` (a batch function) as a function of one flattened input."""
    return lambda v: fn(v.view(1, *shape))[0]


def hessian_trace(fn, x: torch.Tensor) -> torch.Tensor:
    """Exact ``tr H_{f_k}(x_b)`` for every output k and point b, by ``torch.func.hessian`` (forward over
    reverse) under ``vmap``: shape (B, K). Costs D Hessian-vector products per point: small inputs only."""
    from torch.func import hessian, vmap

    h = vmap(hessian(_single(fn, x.shape[1:])))(x.detach().flatten(1))
    return h.diagonal(dim1=-2, dim2=-1).sum(-1)


def hutchinson_trace(fn, x: torch.Tensor, probes: int, generator: torch.Generator | None = None) -> tuple:
    """Hutchinson's unbiased estimate of ``tr H_{f_k}(x_b)``: the mean over Rademacher v of ``v^T H v``
    (``E[v v^T] = I``), each ``H v`` a forward-over-reverse product. Returns ``(estimate, standard error)``,
    both (B, K). For inputs too large for :func:`hessian_trace`."""
    from torch.func import jacrev, jvp, vmap

    check_positive_int("probes", probes)
    g = _single(fn, x.shape[1:])
    xf = x.detach().flatten(1)
    v = torch.randint(0, 2, (probes, *xf.shape), generator=generator, dtype=torch.int64).to(xf) * 2 - 1

    def quad(xb, vb):  # v^T H_k v for all outputs k
        return (jvp(jacrev(g), (xb,), (vb,))[1] * vb).sum(-1)

    q = torch.stack([vmap(quad)(xf, vi) for vi in v])  # (probes, B, K)
    se = q.std(0) / math.sqrt(probes) if probes > 1 else torch.full_like(q[0], float("nan"))
    return q.mean(0), se


def expansion(fn, x: torch.Tensor, hessian: str = "exact", probes: int = 64,
              generator: torch.Generator | None = None) -> Expansion:
    """:class:`Expansion` of ``fn`` (a function of a batch, returning (B, K)) at every point of ``x``:
    Jacobians by ``torch.func.jacrev``, Hessian traces exactly (``hessian="exact"``) or by Hutchinson."""
    from torch.func import jacrev, vmap

    check_choice("hessian", hessian, ["exact", "hutchinson"])
    x = x.detach()
    with torch.no_grad():
        value = fn(x)
    grad = vmap(jacrev(_single(fn, x.shape[1:])))(x.flatten(1))
    trace = hessian_trace(fn, x) if hessian == "exact" else hutchinson_trace(fn, x, probes, generator)[0]
    return Expansion(value, grad.detach(), trace.detach())


# ---------------------------------------------------------------------------------------------------
# The four statements: their losses and their analytic right-hand sides

STATEMENTS = ("prop1", "eq2", "prop2", "eq3")
STATEMENT_LABELS = {
    "prop1": "Prop. 1: squared error to the teacher",
    "eq2": "Eq. 2: cross-entropy to the teacher's softmax",
    "prop2": "Prop. 2: squared error to the labels",
    "eq3": "Eq. 3: cross-entropy to the labels",
}


def pointwise_losses(t_logits: torch.Tensor, s_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The four losses per sample, shape (4, N), in the order of ``STATEMENTS``: ``sum_i (T^i - S^i)^2``,
    ``-sum_i T_s^i log S_s^i``, ``sum_i (y^i - S^i)^2`` (one-hot y) and ``-log S_s^y``. ``y``: labels (N,),
    or one label (a 0-d tensor or an int) for all rows."""
    log_s = F.log_softmax(s_logits, 1)
    y = torch.as_tensor(y, device=s_logits.device).expand(len(s_logits))
    s_y = s_logits.gather(1, y[:, None])[:, 0]
    return torch.stack([(t_logits - s_logits).pow(2).sum(1),
                        -(F.softmax(t_logits, 1) * log_s).sum(1),
                        s_logits.pow(2).sum(1) - 2 * s_y + 1,   # = sum_i (onehot(y)^i - S^i)^2
                        -log_s.gather(1, y[:, None])[:, 0]])


def second_order_coefficients(teacher: nn.Module, student: nn.Module, x: torch.Tensor, y: torch.Tensor,
                              hessian: str = "exact", probes: int = 64, generator=None) -> dict:
    """The coefficient c of ``sigma^2`` in ``E[loss(x + xi)] - loss(x)`` for each statement and point:
    ``{statement: {"paper": (B,), "full": (B,), <the terms>: (B,)}}``.

    "paper" is the paper's right-hand side (Props. 1-2, Eqs. 2-3), "full" the exact second-order
    expansion; the named terms are the pieces that make them up (for the coefficient fits)."""
    fns = {"T": teacher, "S": student,
           "Ts": lambda v: F.softmax(teacher(v), 1), "Ss": lambda v: F.softmax(student(v), 1)}
    e = {k: expansion(f, x, hessian, probes, generator) for k, f in fns.items()}
    T, S, Ts, Ss = e["T"], e["S"], e["Ts"], e["Ss"]
    onehot = F.one_hot(y, T.value.shape[1]).to(x.dtype)
    out = {}
    # Proposition 1: d = T - S
    jac = (T.grad - S.grad).pow(2).sum((1, 2))
    curv = ((T.value - S.value) * (T.hess_trace - S.hess_trace)).sum(1)
    out["prop1"] = {"paper": jac, "full": jac + curv, "jacobian": jac, "hessian": curv}
    # Eq. 2: grad log S_s = grad S_s / S_s; tr H_{log S_s} = tr H_{S_s} / S_s - ||grad S_s||^2 / S_s^2
    cross = -((Ts.grad * Ss.grad).sum(-1) / Ss.value).sum(1)
    g2 = Ss.grad.pow(2).sum(-1)
    tr_log_s = Ss.hess_trace / Ss.value - g2 / Ss.value.pow(2)
    hess2 = -0.5 * (Ts.value * tr_log_s + Ss.value.log() * Ts.hess_trace).sum(1)
    out["eq2"] = {"paper": cross, "full": cross + hess2, "jacobian": cross, "hessian": hess2}
    # Proposition 2: d = y - S, so tr H_d = -tr H_S
    norm = S.grad.pow(2).sum((1, 2))
    curv2 = ((S.value - onehot) * S.hess_trace).sum(1)
    out["prop2"] = {"paper": norm, "full": norm + curv2, "jacobian": norm, "hessian": curv2}
    # Eq. 3: the label's output only
    pick = lambda t: t.gather(1, y[:, None])[:, 0]  # noqa: E731
    grad_term = pick(g2) / pick(Ss.value).pow(2)
    hess_term = pick(Ss.hess_trace) / pick(Ss.value)
    out["eq3"] = {"paper": grad_term, "full": 0.5 * (grad_term - hess_term),
                  "jacobian": grad_term, "hessian": hess_term}
    return out


# The exact weights of each statement's two terms, and the paper's (for the coefficient fits).
TERM_WEIGHTS = {
    "prop1": {"exact": (1.0, 1.0), "paper": (1.0, 0.0)},
    "eq2": {"exact": (1.0, 1.0), "paper": (1.0, 0.0)},
    "prop2": {"exact": (1.0, 1.0), "paper": (1.0, 0.0)},
    "eq3": {"exact": (0.5, -0.5), "paper": (1.0, 0.0)},
}


# ---------------------------------------------------------------------------------------------------
# ReLU networks: activation patterns and the distance to the nearest kink

def relu_inputs(model: nn.Module, x: torch.Tensor):
    """``(model(x), [input of every nn.ReLU module, in call order]``) via forward hooks."""
    found = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: found.append(inp[0]))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, found


def relu_margin(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """For each point, ``min_j |a_j(x)| / ||grad_x a_j(x)||`` over every ReLU input a_j: the distance to the
    nearest kink (exact for the first layer, to first order for deeper ones). ``inf`` without ReLUs."""
    from torch.func import jacrev

    shape = x.shape[1:]

    def pre(v):
        acts = relu_inputs(model, v.view(1, *shape))[1]
        return torch.cat([a.flatten() for a in acts]) if acts else v.new_zeros(0)

    out = []
    for xb in x.detach().flatten(1):
        a = pre(xb).detach()
        if a.numel() == 0:
            out.append(torch.tensor(float("inf"), dtype=x.dtype))
            continue
        g = jacrev(pre)(xb).norm(dim=1)
        out.append((a.abs() / g.detach().clamp_min(torch.finfo(x.dtype).tiny)).min())
    return torch.stack(out)


def _logits_and_pattern(model, x):
    out, acts = relu_inputs(model, x)
    pattern = torch.cat([a.flatten(1) > 0 for a in acts], 1) if acts else None
    return out, pattern


# ---------------------------------------------------------------------------------------------------
# Monte Carlo of the noisy losses

@dataclass
class NoisyEstimate:
    """Monte-Carlo estimates of ``E[loss(x + sigma z)] - loss(x)`` for the four statements.

    ``excess`` and ``se`` (its standard error) have shape (4, B, S): statement, point, sigma.
    ``crossed`` (B, S): the fraction of draws in which a ReLU of the teacher or the student changed state
    (None for networks without ReLUs). ``clean`` (4, B): the losses at x."""
    sigmas: tuple
    excess: torch.Tensor
    se: torch.Tensor
    clean: torch.Tensor
    crossed: torch.Tensor | None
    draws: int


def orthogonal_gaussian_blocks(blocks: int, dim: int, generator=None, dtype=torch.float64) -> torch.Tensor:
    """``blocks`` independent blocks of ``dim`` standard normal vectors, shape (blocks, dim, dim), whose
    directions within a block are orthogonal: row j is ``r_j q_j`` with ``(q_1..q_dim)`` the columns of a
    Haar-random orthogonal matrix and ``r_j ~ chi_dim`` independent radii. Each row is exactly N(0, I)
    (a uniform direction times an independent chi radius), so a block mean is an unbiased Monte-Carlo
    estimate; the orthogonality removes most of the variance of quadratic forms (orthogonal Monte Carlo)."""
    g = torch.randn(blocks, dim, dim, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar: fix QR's sign convention
    radii = torch.randn(blocks, dim, dim, generator=generator, dtype=dtype).norm(dim=-1)
    return q.transpose(-1, -2) * radii.unsqueeze(-1)


@torch.no_grad()
def noisy_excess(teacher: nn.Module, student: nn.Module, x: torch.Tensor, y: torch.Tensor, sigmas,
                 draws: int, chunk_rows: int = 48_000, seed: int = 0, orthogonal: bool = True) -> NoisyEstimate:
    """Monte-Carlo estimate of the left-hand sides of Props. 1-2 and Eqs. 2-3, minus the clean loss.

    Antithetic pairs: each draw z gives ``(loss(x + sigma z) + loss(x - sigma z)) / 2``, an unbiased
    estimate whose odd-order Taylor terms cancel exactly, so its variance is ``O(sigma^4)`` instead of
    ``O(sigma^2)``. Draws come in blocks of D (the input size) with orthogonal directions
    (:func:`orthogonal_gaussian_blocks`; ``orthogonal=False``: independent draws); the standard error is the
    standard deviation of the block means over sqrt(number of blocks). The same z serve every sigma
    (common random numbers: the curves are smooth in sigma). Subtracting the clean loss before
    accumulating keeps the sums free of cancellation. Forward passes hold at most ``chunk_rows`` rows.
    ``draws`` is rounded up to whole blocks (at least two)."""
    check_positive_int("draws", draws)
    check_positive_int("chunk_rows", chunk_rows)
    B, n_s, dt = x.shape[0], len(sigmas), x.dtype
    dim = x[0].numel()
    blocks = max(2, math.ceil(draws / dim))
    sig = torch.tensor([float(s) for s in sigmas], dtype=dt).view(n_s, 1, 1)
    per_chunk = max(1, chunk_rows // (2 * n_s * dim))
    excess, se = torch.zeros(4, B, n_s, dtype=dt), torch.zeros(4, B, n_s, dtype=dt)
    crossed = torch.zeros(B, n_s, dtype=dt)
    has_relu = any(isinstance(m, nn.ReLU) for net in (teacher, student) for m in net.modules())
    t0, pt0 = _logits_and_pattern(teacher, x)
    s0, ps0 = _logits_and_pattern(student, x)
    clean = pointwise_losses(t0, s0, y)
    for b in range(B):
        gen = torch.Generator().manual_seed(1_000_003 * seed + b)
        xb = x[b].flatten()
        means = []
        n_cross = torch.zeros(n_s, dtype=dt)
        done = 0
        while done < blocks:
            c = min(per_chunk, blocks - done)
            if orthogonal:
                z = orthogonal_gaussian_blocks(c, dim, gen, dt).reshape(c * dim, dim)
            else:
                z = torch.randn(c * dim, dim, generator=gen, dtype=dt)
            xs = torch.stack([xb + sig * z, xb - sig * z], 1).view(-1, *x.shape[1:])
            t, pt = _logits_and_pattern(teacher, xs)
            s, ps = _logits_and_pattern(student, xs)
            w = pointwise_losses(t, s, y[b]).view(4, n_s, 2, c, dim).mean(2) - clean[:, b, None, None, None]
            means.append(w.mean(-1))
            if has_relu:
                change = torch.zeros(len(xs), dtype=torch.bool)
                for p, p0 in ((pt, pt0), (ps, ps0)):
                    if p is not None:
                        change |= (p != p0[b]).any(1)
                n_cross += change.view(n_s, 2, c * dim).any(1).sum(-1).to(dt)
            done += c
        means = torch.cat(means, -1)  # (4, S, blocks)
        excess[:, b] = means.mean(-1)
        se[:, b] = means.std(-1) / math.sqrt(blocks)
        crossed[b] = n_cross / (blocks * dim)
    return NoisyEstimate(tuple(float(s) for s in sigmas), excess, se, clean, crossed if has_relu else None,
                         blocks * dim)


def discrepancies(estimate: NoisyEstimate, coefficients: dict) -> dict:
    """``{statement: {"paper": D, "full": D}}`` with ``D = MC excess - sigma^2 c`` of shape (B, S): the
    Monte-Carlo left side minus each analytic right side (its standard error is ``estimate.se``)."""
    s2 = torch.tensor(estimate.sigmas, dtype=estimate.excess.dtype).pow(2)
    return {name: {form: estimate.excess[i] - coefficients[name][form][:, None] * s2
                   for form in ("paper", "full")}
            for i, name in enumerate(STATEMENTS)}


def discrepancy_table(estimate: NoisyEstimate, coefficients: dict, network: str = ""):
    """A long pandas table: one row per (statement, point, sigma) with the MC excess, its standard error,
    both analytic right-hand sides, both discrepancies and the fraction of draws that crossed a ReLU kink."""
    import pandas as pd

    rows = []
    d = discrepancies(estimate, coefficients)
    for i, name in enumerate(STATEMENTS):
        for b in range(estimate.excess.shape[1]):
            for j, s in enumerate(estimate.sigmas):
                rows.append({"network": network, "statement": name, "point": b, "sigma": s,
                             "mc": float(estimate.excess[i, b, j]), "se": float(estimate.se[i, b, j]),
                             "paper": float(coefficients[name]["paper"][b]) * s * s,
                             "full": float(coefficients[name]["full"][b]) * s * s,
                             "d_paper": float(d[name]["paper"][b, j]), "d_full": float(d[name]["full"][b, j]),
                             "crossed": float(estimate.crossed[b, j]) if estimate.crossed is not None else 0.0})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# Power laws and coefficient fits

@dataclass
class PowerLaw:
    """``value ~ prefactor * sigma^slope`` fitted by least squares in log-log on the resolved points."""
    slope: float
    prefactor: float
    slope_se: float
    used: np.ndarray = field(repr=False)

    @property
    def n(self) -> int:
        return int(self.used.sum())

    def __call__(self, sigma):
        return self.prefactor * np.asarray(sigma, dtype=float) ** self.slope


def fit_power_law(sigmas, values, errors=None, min_snr: float = 3.0, sigma_range=(0.0, math.inf)) -> PowerLaw:
    """Fit ``log|value| = log(prefactor) + slope * log(sigma)`` over the points with ``|value| >= min_snr *
    error`` (resolved above the Monte-Carlo noise) and sigma in ``sigma_range``.

    With ``errors``, a weighted fit: ``log|value|`` has standard error ``error / |value|``, so each point gets
    the weight ``(|value| / error)^2`` and ``slope_se`` follows from those errors; without, an unweighted fit
    whose ``slope_se`` comes from the residuals (NaN for two points). Fewer than two points: NaN slope."""
    s = np.asarray(sigmas, dtype=float)
    v = np.abs(np.asarray(values, dtype=float))
    e = None if errors is None else np.asarray(errors, dtype=float)
    used = (v > 0) & (s >= sigma_range[0]) & (s <= sigma_range[1])
    if e is not None:
        used &= v >= min_snr * e
    if used.sum() < 2:
        return PowerLaw(float("nan"), float("nan"), float("nan"), used)
    lx, ly = np.log(s[used]), np.log(v[used])
    A = np.stack([np.ones_like(lx), lx], 1)
    w = np.ones_like(lx) if e is None else (v[used] / np.maximum(e[used], 1e-300)) ** 2
    w = np.minimum(w, 1e12)  # an exact power law (zero error) would otherwise make the system singular
    AtW = A.T * w
    coef = np.linalg.solve(AtW @ A, AtW @ ly)
    slope_se = float("nan")
    if e is not None:
        slope_se = float(math.sqrt(np.linalg.inv(AtW @ A)[1, 1]))
    elif len(lx) > 2:
        resid = ly - A @ coef
        slope_se = float(math.sqrt((resid @ resid / (len(lx) - 2)) * np.linalg.inv(A.T @ A)[1, 1]))
    return PowerLaw(float(coef[1]), float(math.exp(coef[0])), slope_se, used)


def mean_abs(d: torch.Tensor, se: torch.Tensor):
    """Mean over points (dim 0) of ``|D|``, and its noise floor: the mean of the points' standard errors.

    The floor is deliberately conservative: with no signal, ``|D|`` of a point is about 0.8 of its standard
    error whatever the number of points, so a mean ``|D|`` counts as resolved only when it clearly exceeds
    the typical point's standard error (a plain standard error of the mean would call noise resolved)."""
    return d.abs().mean(0), se.mean(0)


def fit_coefficients(observed, observed_se, terms) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of ``observed = sum_j w_j * terms[j]`` (no intercept): which weights the
    measured second-order coefficients support. Returns ``(weights, standard errors)``."""
    y = np.asarray(observed, dtype=float)
    se = np.asarray(observed_se, dtype=float)
    X = np.stack([np.asarray(t, dtype=float) for t in terms], 1)
    w = 1.0 / np.maximum(se, 1e-300)
    coef, *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
    cov = np.linalg.inv((X * w[:, None]).T @ (X * w[:, None]))
    return coef, np.sqrt(np.diag(cov))


def slope_table(results: dict, min_snr: float = 3.0):
    """Fitted log-log slopes of the mean (over points) absolute discrepancy against sigma, for every network,
    statement and form. ``results``: ``{network: (NoisyEstimate, coefficients)}``. Only sigmas where the
    mean discrepancy is at least ``min_snr`` standard errors enter a fit (see :func:`fit_power_law`)."""
    import pandas as pd

    rows = []
    for net, (est, coefs) in results.items():
        d = discrepancies(est, coefs)
        for i, name in enumerate(STATEMENTS):
            for form in ("paper", "full"):
                m, e = mean_abs(d[name][form], est.se[i])
                fit = fit_power_law(est.sigmas, m, e, min_snr)
                used = np.asarray(est.sigmas)[fit.used]
                rows.append({"network": net, "statement": name, "form": form, "slope": fit.slope,
                             "slope_se": fit.slope_se, "prefactor": fit.prefactor, "sigmas_used": fit.n,
                             "from_sigma": used.min() if len(used) else float("nan"),
                             "to_sigma": used.max() if len(used) else float("nan")})
    return pd.DataFrame(rows)


def coefficient_fits(estimate: NoisyEstimate, coefficients: dict, sigma_index: int = 0):
    """Which weights of each statement's two second-order terms the Monte Carlo supports: a weighted least-squares
    fit, over the points, of the measured coefficient ``(MC excess) / sigma^2`` at ``sigmas[sigma_index]`` on the
    Jacobian term and the Hessian term (see ``TERM_WEIGHTS``). ``paper_z``: how many standard errors the fitted
    weights are from the paper's (the larger of the two); ``exact_z``: the same for the exact expansion."""
    import pandas as pd

    s2 = estimate.sigmas[sigma_index] ** 2
    rows = []
    for i, name in enumerate(STATEMENTS):
        obs = estimate.excess[i, :, sigma_index] / s2
        obs_se = estimate.se[i, :, sigma_index] / s2
        w, w_se = fit_coefficients(obs, obs_se, [coefficients[name]["jacobian"], coefficients[name]["hessian"]])
        exact, paper = np.array(TERM_WEIGHTS[name]["exact"]), np.array(TERM_WEIGHTS[name]["paper"])
        rows.append({"statement": name, "jacobian weight": w[0], "jacobian s.e.": w_se[0],
                     "hessian weight": w[1], "hessian s.e.": w_se[1],
                     "exact weights": TERM_WEIGHTS[name]["exact"], "paper weights": TERM_WEIGHTS[name]["paper"],
                     "exact_z": float(np.max(np.abs(w - exact) / w_se)),
                     "paper_z": float(np.max(np.abs(w - paper) / w_se))})
    return pd.DataFrame(rows).set_index("statement")


def which_points(estimate: NoisyEstimate, coefficients: dict, sigma_index: int = 0):
    """Per statement and point: the share of the exact sigma^2 coefficient that the paper's form drops,
    ``|c_full - c_paper| / |c_full|``, beside the measured relative error of the paper's form at
    ``sigmas[sigma_index]``, ``r = |MC - paper| / |MC|``, and the standard error of r propagated from the
    Monte Carlo's (``dr = |paper / MC| * se / |MC|``)."""
    import pandas as pd

    s2 = estimate.sigmas[sigma_index] ** 2
    rows = []
    for i, name in enumerate(STATEMENTS):
        c = coefficients[name]
        for b in range(estimate.excess.shape[1]):
            mc = float(estimate.excess[i, b, sigma_index])
            paper = float(c["paper"][b]) * s2
            rows.append({"statement": name, "point": b,
                         "dropped share (analytic)": abs(float(c["full"][b] - c["paper"][b])) / abs(float(c["full"][b])),
                         "paper's relative error (MC)": abs(mc - paper) / abs(mc),
                         "s.e.": abs(paper / mc) * float(estimate.se[i, b, sigma_index]) / abs(mc)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# Small networks for notebook 01

@dataclass
class Pair:
    """A teacher and a student (float64 copies, eval mode) and their test accuracies in percent."""
    activation: str
    teacher: nn.Module
    student: nn.Module
    teacher_accuracy: float
    student_accuracy: float


def mlp_pair(data, activation: str, sz: dict, seed: int = 0, device="cpu") -> Pair:
    """A teacher MLP trained on all of ``data.train`` (cross-entropy) and a smaller student distilled from it
    on ``student_per_class`` images per class (activation matching + CE, so that T and S differ)."""
    from . import data as jdata, models
    from .losses import preset
    from .teachers import teacher_targets
    from .train import accuracy, fit, seed_everything

    def build(hidden, s):
        seed_everything(s)
        return models.build("mlp", data.in_channels, data.num_classes, activation=activation,
                            image_size=data.image_size, hidden=hidden)

    teacher = build(sz["teacher_hidden"], seed)
    fit(teacher, data, data.train, preset("ce"), sz["teacher_epochs"], 64, seed=seed, device=device, progress=False)
    student = build(sz["student_hidden"], seed + 1)
    sub = jdata.subset(data.train, sz["student_per_class"], seed)
    targets = teacher_targets(teacher, data, sub, with_gradients=False, device=device)
    fit(student, data, sub, preset("act+ce"), sz["student_epochs"], 64, seed=seed, device=device,
        teacher_targets=targets, progress=False)
    acc = [accuracy(m, data, data.test, device=device) for m in (teacher, student)]
    return Pair(activation, copy.deepcopy(teacher).cpu().double().eval(),
                copy.deepcopy(student).cpu().double().eval(), *acc)


def sample_points(data, n: int, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` test images (normalised, ``dtype``) and labels, drawn without replacement with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.test), generator=g)[:n]
    return data.normalize(data.test.x[idx]).to(dtype), data.test.y[idx]


# ---------------------------------------------------------------------------------------------------
# Section 3: the local affine approximation f(x) = J(x) x

def affine_residual(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per sample, ``||f(x) - J(x) x|| / ||f(x)||`` with J the exact input Jacobian (reverse mode, eval mode,
    :func:`jkt.jacobian.full_jacobian`): 0 up to rounding for a bias-free ReLU/max-pool network, which is
    positively homogeneous (Section 3 of the workshop paper)."""
    from .jacobian import eval_mode, full_jacobian

    with eval_mode(model), torch.no_grad():
        f = model(x)
    jx = (full_jacobian(model, x) * x.unsqueeze(1)).flatten(2).sum(-1)
    return (f - jx).norm(dim=1) / f.norm(dim=1)


AFFINE_VARIANTS = {
    "MLP, ReLU, no biases": dict(arch="mlp", activation="relu", bias=False, batch_norm=None),
    "VGG-4, no BatchNorm, no biases": dict(arch="vgg4", activation="relu", bias=False, batch_norm=False),
    "VGG-4, no BatchNorm, biases": dict(arch="vgg4", activation="relu", bias=True, batch_norm=False),
    "VGG-4, BatchNorm, no shift": dict(arch="vgg4", activation="relu", bias=False, batch_norm=True),
    "VGG-4, BatchNorm, biases": dict(arch="vgg4", activation="relu", bias=True, batch_norm=True),
    "MLP, tanh, no biases": dict(arch="mlp", activation="tanh", bias=False, batch_norm=None),
}


def affine_table(data, sz: dict, seed: int = 0, device="cpu"):
    """Train each of ``AFFINE_VARIANTS`` briefly (cross-entropy, ``affine_epochs`` epochs, VGG-4 at width 1/4)
    and measure ``||f(x) - J(x) x|| / ||f(x)||`` on ``affine_points`` test images, at initialisation and after
    training, in float64. One row per variant: median, max and the test accuracy."""
    import pandas as pd

    from . import models
    from .losses import preset
    from .train import accuracy, fit, seed_everything

    x, _ = sample_points(data, sz["affine_points"], seed)
    rows = []
    for name, v in AFFINE_VARIANTS.items():
        seed_everything(seed)
        options = dict(activation=v["activation"], bias=v["bias"])
        if v["arch"] == "mlp":
            options["image_size"] = data.image_size
        else:
            options["batch_norm"] = v["batch_norm"]
        model = models.build(v["arch"], data.in_channels, data.num_classes, width=0.25 if v["arch"] != "mlp" else 1.0,
                             **options)
        init = affine_residual(copy.deepcopy(model).double(), x)
        fit(model, data, data.train, preset("ce"), sz["affine_epochs"], 64, seed=seed, device=device, progress=False)
        trained = affine_residual(copy.deepcopy(model).cpu().double(), x)
        rows.append({"network": name, "at init (median)": float(init.median()),
                     "trained (median)": float(trained.median()), "trained (max)": float(trained.max()),
                     "test accuracy": accuracy(model, data, data.test, device=device)})
    return pd.DataFrame(rows).set_index("network")


# ---------------------------------------------------------------------------------------------------
# Notebook 02: finite differences

@torch.no_grad()
def directional_fd(model: nn.Module, x: torch.Tensor, u: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central finite differences ``(f(x + h u) - f(x - h u)) / 2h`` of all outputs, shape (B, K): ``J u``
    up to O(h^2) (exact for a piecewise-linear network unless a kink lies within h of x)."""
    return (model(x + h * u) - model(x - h * u)) / (2 * h)


def maxpool_ties(model: nn.Module, x: torch.Tensor) -> float:
    """The fraction of 2x2 max-pool windows of a VGG (eval mode) whose two largest inputs are equal and
    positive: points where the network is not differentiable (flat image backgrounds make them common)."""
    from .jacobian import eval_mode

    ties = windows = 0
    with eval_mode(model), torch.no_grad():
        _, feats = model(x, taps=True)
    for f, pooled in zip(feats.values(), getattr(model, "pool_after", [])):
        if not pooled or min(f.shape[-2:]) < 2:
            continue
        u = F.unfold(f.flatten(0, 1).unsqueeze(1), 2, stride=2)  # (N*C, 4, windows)
        top = u.topk(2, dim=1).values
        ties += int(((top[:, 0] == top[:, 1]) & (top[:, 0] > 0)).sum())
        windows += top[:, 0].numel()
    return ties / max(windows, 1)


def finite_difference_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, directions: int = 4,
                            h: float = 1e-6, generator: torch.Generator | None = None):
    """Every way of getting an input Jacobian from :mod:`jkt.jacobian` against central finite differences
    (:func:`directional_fd`) along random unit directions u, in the model's dtype and eval mode.

    One row per (method, sample, direction): the analytic directional derivative and the finite difference
    of the same quantity: ``<grad f_y, u>`` (label), ``<grad f_top1, u>`` (top-1), ``J u`` (full Jacobian,
    every output, one row per output), ``<v^T J, u>`` (a random projection v)."""
    import pandas as pd

    from . import jacobian as J

    rows = []
    with J.eval_mode(model):
        logits = model(x).detach()
        top1 = logits.argmax(1)
        g_label = J.input_gradient(model, x, y)
        g_top1 = J.input_gradient(model, x, "top1")
        full = J.full_jacobian(model, x)
        v = torch.randn(logits.shape, generator=generator, dtype=x.dtype)
        _, g_proj = J.projected_gradient(model, x, v)
        for k in range(directions):
            u = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            u = u / u.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
            fd = directional_fd(model, x, u, h)
            dot = lambda g: (g * u).flatten(1).sum(1)  # noqa: E731
            ju = (full * u.unsqueeze(1)).flatten(2).sum(-1)
            pairs = {"one output (label)": (dot(g_label), fd.gather(1, y[:, None])[:, 0]),
                     "one output (top-1)": (dot(g_top1), fd.gather(1, top1[:, None])[:, 0]),
                     "random projection": (dot(g_proj), (v * fd).sum(1))}
            for name, (a, b) in pairs.items():
                rows += [{"method": name, "sample": i, "direction": k, "autograd": float(a[i]),
                          "finite difference": float(b[i])} for i in range(len(x))]
            rows += [{"method": "full Jacobian", "sample": i, "direction": k, "autograd": float(ju[i, c]),
                      "finite difference": float(fd[i, c])} for i in range(len(x)) for c in range(fd.shape[1])]
    df = pd.DataFrame(rows)
    scale = df.groupby("method")["finite difference"].transform(lambda s: s.abs().max())
    df["relative error"] = (df["autograd"] - df["finite difference"]).abs() / scale
    return df


# ---------------------------------------------------------------------------------------------------
# Notebook 02: cost

from .bench import time_call  # noqa: E402  (re-exported: notebook 02 times its calls with it)


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The unit of cost: one forward and one backward pass (cross-entropy, gradients of the parameters)."""
    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    return step


def relative_times(calls: dict, reference, repeats: int = 5, warmup: int = 1, min_seconds: float = 0.02):
    """A table of each callable's median time (:func:`time_call`) and its multiple of ``reference``'s (one
    forward+backward step). The reference is timed again before each callable, and every ratio uses the
    median of all those reference timings: the reference is sampled across the whole measurement, and one
    burst of load from other processes cannot distort a ratio through a single reference timing."""
    import pandas as pd

    rows, refs = [], []
    for name, fn in calls.items():
        refs.append(time_call(reference, repeats, warmup, min_seconds))
        rows.append({"method": name, "seconds": time_call(fn, repeats, warmup, min_seconds)})
    ref = statistics.median(refs)
    table = pd.DataFrame([{"method": "forward+backward step", "seconds": ref}] + rows).set_index("method")
    table["x step"] = table["seconds"] / ref
    return table


def jacobian_methods(model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher_grad=None,
                     generator=None) -> dict:
    """The ways to get input Jacobians, as zero-argument callables (for :func:`relative_times`): one output
    (label; top-1), a student's training step with Jacobian matching (double backpropagation, matched to
    ``teacher_grad``, zeros if None), the full Jacobian by K backward passes and by ``torch.func``, and one
    random projection (its estimate of ``||J||_F^2``)."""
    from . import jacobian as J
    from .losses import jacobian_matching

    with torch.no_grad():
        k = model(x[:1]).shape[1]
    target = teacher_grad if teacher_grad is not None else torch.zeros_like(x)

    def jacobian_step():
        model.zero_grad(set_to_none=True)
        logits, g, _ = J.output_and_input_gradient(model, x, y, create_graph=True)
        (F.cross_entropy(logits, y) + jacobian_matching(g, target)).backward(inputs=list(model.parameters()))

    return {
        "one output (label)": lambda: J.input_gradient(model, x, y),
        "one output (top-1)": lambda: J.input_gradient(model, x, "top1"),
        "training step with Jacobian matching": jacobian_step,
        f"full Jacobian ({k} backward passes)": lambda: [J.input_gradient(model, x, i) for i in range(k)],
        "full Jacobian (torch.func)": lambda: J.full_jacobian(model, x),
        "1 random projection": lambda: J.frobenius_sq_estimate(model, x, 1, generator),
    }


# ---------------------------------------------------------------------------------------------------
# Notebook 02: the BatchNorm caveat

def per_sample_gradients_train_mode(model: nn.Module, x: torch.Tensor, index: torch.Tensor,
                                    rows: int | None = None) -> torch.Tensor:
    """The exact per-sample input gradients ``d f_b[index_b] / d x_b`` of a network in train mode (BatchNorm
    normalises with the batch's statistics; the other samples are held fixed), for the first ``rows``
    samples: one backward pass per sample from one forward pass of the whole batch. Runs on a copy, so the
    model's running statistics are not touched."""
    net = copy.deepcopy(model).train()
    rows = len(x) if rows is None else min(rows, len(x))
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = net(xr).gather(1, index[:, None])[:, 0]
        grads = [torch.autograd.grad(out[b], xr, retain_graph=b < rows - 1)[0][b] for b in range(rows)]
    return torch.stack(grads)


def batchnorm_gap(model: nn.Module, x: torch.Tensor, index: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """For the first ``rows`` samples, ``||batched - exact|| / ||exact||``: how far the batched train-mode input
    gradient (:func:`jkt.jacobian.input_gradient` on the whole batch, what a training step uses) is from the
    exact per-sample one (:func:`per_sample_gradients_train_mode`)."""
    from .jacobian import input_gradient

    exact = per_sample_gradients_train_mode(model, x, index, rows).flatten(1)
    batched = input_gradient(copy.deepcopy(model).train(), x, index)[:len(exact)].flatten(1)
    return (batched - exact).norm(dim=1) / exact.norm(dim=1)


def batchnorm_gap_table(model: nn.Module, data, split, batch_sizes, rows: int, device="cpu"):
    """:func:`batchnorm_gap` on the first images of ``split`` for each batch size: one row per (batch, sample)."""
    import pandas as pd

    out = []
    for b in batch_sizes:
        x = data.normalize(split.x[:b].to(device))
        gap = batchnorm_gap(model, x, split.y[:b].to(device), rows)
        out += [{"batch": b, "sample": i, "gap": float(g)} for i, g in enumerate(gap)]
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------------
# Notebook 02: seeing Jacobians

def distill_student(data, train_split, teacher: nn.Module, method: str, profile, steps: int, seed: int = 0,
                    device="cpu", **options) -> nn.Module:
    """A fresh profile-sized student (VGG-4) trained for about ``steps`` steps with the preset ``method``
    (e.g. "act+ce", "act+jac+ce"; ``options`` override the preset) against ``teacher``'s cached outputs and
    input gradients on ``train_split``; ``steps=0`` returns the initialised student. Eval mode."""
    from . import models
    from .losses import preset
    from .teachers import teacher_targets
    from .train import fit, seed_everything

    objective = preset(method, **options)
    seed_everything(seed)
    student = models.build(profile.student_arch, data.in_channels, data.num_classes, profile.student_width)
    if steps > 0:
        targets = None
        if objective.needs_teacher:
            targets = teacher_targets(teacher, data, train_split, objective.jacobian_output,
                                      with_gradients=objective.gamma > 0, device=device)
        batch = min(profile.batch_size, len(train_split))
        epochs = max(1, math.ceil(steps / math.ceil(len(train_split) / batch)))
        fit(student, data, train_split, objective, epochs, batch, seed=seed, lr=profile.lr,
            anneal_at=profile.anneal_at, device=device, teacher_targets=targets, progress=False)
    return student.to(device).eval()


def label_gradients(model: nn.Module, data, split, batch_size: int = 500, device="cpu",
                    limit: int | None = None) -> torch.Tensor:
    """The input gradient of the label's output for every image of ``split`` (the first ``limit`` if given),
    in eval mode (exact per-sample gradients), on the CPU: shape (N, C, H, W)."""
    from .data import Batches, Split
    from .jacobian import eval_mode, input_gradient

    if limit is not None:
        split = Split(split.x[:limit], split.y[:limit])
    out = []
    with eval_mode(model):
        for x, y, _ in Batches(split, data, batch_size, device, shuffle=False):
            out.append(input_gradient(model, x, y).cpu())
    return torch.cat(out)


def gradient_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, the cosine similarity of two batches of input gradients."""
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


# ---------------------------------------------------------------------------------------------------
# Notebook 02: three estimators of the full-Jacobian distance sum_i ||grad T^i - grad S^i||^2

def exact_jacobian_distance(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``||J_T(x_b) - J_S(x_b)||_F^2`` per sample, exactly: K backward passes through each network."""
    from .jacobian import input_gradient

    with torch.no_grad():
        k = teacher(x[:1]).shape[1]
    total = 0.0
    for i in range(k):
        total = total + (input_gradient(teacher, x, i) - input_gradient(student, x, i)).flatten(1).pow(2).sum(1)
    return total


def projection_draws(teacher: nn.Module, student: nn.Module, x: torch.Tensor, n: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` independent draws, shape (n, B), of ``||v^T (J_T - J_S)||^2`` with v ~ N(0, I_K): each unbiased
    for the squared Jacobian distance (:func:`jkt.jacobian.jacobian_distance_sq_estimate`, one projection)."""
    from .jacobian import jacobian_distance_sq_estimate

    return torch.stack([jacobian_distance_sq_estimate(student, teacher, x, 1, generator) for _ in range(n)])


@torch.no_grad()
def noise_draws(teacher: nn.Module, student: nn.Module, x: torch.Tensor, sigma: float, n: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` draws, shape (n, B), of the noisy-input estimate of the squared Jacobian distance (Prop. 1 read
    from left to right): ``[(l(x + sigma z) + l(x - sigma z)) / 2 - l(x)] / sigma^2`` with
    ``l = ||T - S||^2`` (antithetic pairs; a single draw would add a term of variance O(1/sigma^2)).
    For smooth networks its mean is the Jacobian distance plus ``sum_i d^i tr H_{d^i}`` plus O(sigma^2)."""
    base = (teacher(x) - student(x)).pow(2).sum(1)
    out = []
    for _ in range(n):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        xs = torch.cat([x + sigma * z, x - sigma * z])
        loss = (teacher(xs) - student(xs)).pow(2).sum(1).view(2, -1).mean(0)
        out.append((loss - base) / sigma ** 2)
    return torch.stack(out)


def estimator_comparison(teacher: nn.Module, student: nn.Module, x: torch.Tensor, sigmas, repeats: int,
                         seed: int = 0, timing_repeats: int = 3):
    """The three estimators of ``||J_T - J_S||_F^2`` at equal cost, on the points ``x`` (eval mode).

    The budget is the measured time of the exact sum (K backward passes per network); each estimator gets
    as many draws as fit in it (one projection: a forward and a backward pass per network; one antithetic
    noise draw: two forward passes per network), the costs being measured in interleaved rounds. Each
    estimate is repeated ``repeats`` times with fresh draws.
    Returns ``(summary table, long table of relative errors est/exact - 1 per repeat and point)``."""
    import pandas as pd

    gen = torch.Generator().manual_seed(seed)
    exact = exact_jacobian_distance(teacher, student, x)
    calls = {"exact sum": lambda: exact_jacobian_distance(teacher, student, x),
             "projection": lambda: projection_draws(teacher, student, x, 1, gen)}
    for s in sigmas:
        calls[f"noise, sigma={s:g}"] = lambda s=s: noise_draws(teacher, student, x, s, 1, gen)
    # Interleaved rounds: each round times every call once; a draw's cost is the median over rounds of its
    # time divided by the same round's exact-sum time, so a burst of load in one measurement cannot skew it.
    rounds = [{name: time_call(fn, 1, 1 if r == 0 else 0, min_seconds=0.1) for name, fn in calls.items()}
              for r in range(max(3, timing_repeats))]
    budget = statistics.median(r["exact sum"] for r in rounds)
    unit = {name: budget * statistics.median(r[name] / r["exact sum"] for r in rounds)
            for name in calls if name != "exact sum"}
    rows, errors = [{"estimator": "exact sum", "draws": 1, "seconds per estimate": budget,
                     "relative bias": 0.0, "bias s.e.": 0.0, "relative std": 0.0}], []
    for name, t in unit.items():
        n = max(1, round(budget / t))
        if name == "projection":
            draws = projection_draws(teacher, student, x, repeats * n, gen)
        else:
            draws = noise_draws(teacher, student, x, float(name.split("=")[1]), repeats * n, gen)
        est = draws.view(repeats, n, -1).mean(1)
        rel = est / exact - 1                                     # (repeats, B)
        bias_per_point = rel.mean(0)
        se_per_point = rel.std(0) / math.sqrt(repeats)
        rows.append({"estimator": name, "draws": n, "seconds per estimate": n * t,
                     "relative bias": float(bias_per_point.mean()),
                     "bias s.e.": float(se_per_point.pow(2).sum().sqrt() / len(exact)),
                     "relative std": float(rel.std(0).mean())})
        errors += [{"estimator": name, "relative error": float(v)} for v in rel.flatten()]
    table = pd.DataFrame(rows).set_index("estimator")
    return table, pd.DataFrame(errors), exact


# ---------------------------------------------------------------------------------------------------
# Figures (saved by the notebooks with jkt.plots.save)

_FORM_STYLE = {"paper": dict(marker="o", mfc="none", ms=8), "full": dict(marker="s", ms=5)}


def plot_discrepancies(results: dict, slopes):
    """2x2 log-log panels, one per statement: the mean absolute discrepancy (MC minus analytic) against
    sigma for each network and form, with standard-error bars and the fitted slopes in the legend."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), sharex=True)
    colors = {"paper": "tab:red", "full": "tab:blue"}
    styles = ["-", "--", ":"]
    for ax, (i, name) in zip(axes.flat, enumerate(STATEMENTS)):
        for ls, (net, (est, coefs)) in zip(styles, results.items()):
            d = discrepancies(est, coefs)
            for form in ("paper", "full"):
                m, e = mean_abs(d[name][form], est.se[i])
                row = slopes[(slopes.network == net) & (slopes.statement == name) & (slopes.form == form)].iloc[0]
                label = f"{net}, {form}: slope {row.slope:.2f}" if row.sigmas_used >= 2 else f"{net}, {form}: unresolved"
                ax.errorbar(est.sigmas, m.numpy(), yerr=e.numpy(), ls=ls, color=colors[form], label=label,
                            capsize=2, **_FORM_STYLE[form])
                if row.sigmas_used >= 2:  # the fitted power law over the sigmas it used, as a wide pale band
                    span = np.geomspace(row.from_sigma, row.to_sigma, 20)
                    ax.plot(span, row.prefactor * span ** row.slope, color=colors[form], lw=6, alpha=0.2)
            ax.plot(est.sigmas, est.se[i].mean(0).numpy(), ls=ls, color="0.6", lw=1)
        ax.set(xscale="log", yscale="log", title=STATEMENT_LABELS[name])
        ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("noise sigma (normalised input units)")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean |MC - analytic| over points")
    fig.suptitle("Discrepancy of the paper's form (red) and of the full second-order form (blue) against sigma\n"
                 "solid: tanh, dashed: ReLU; pale bands: the fitted power laws; grey: a point's Monte-Carlo standard error")
    fig.tight_layout()
    return fig


def plot_mc_vs_analytic(estimate: NoisyEstimate, coefficients: dict, sigma_index: int = 0, title: str = ""):
    """One panel per statement: the Monte-Carlo excess ``E[loss(x+xi)] - loss(x)`` of every point (with its
    standard error) against the paper's right-hand side (open) and the full second-order one (filled)."""
    import matplotlib.pyplot as plt

    s = estimate.sigmas[sigma_index]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    for ax, (i, name) in zip(axes, enumerate(STATEMENTS)):
        mc = estimate.excess[i, :, sigma_index].numpy()
        err = estimate.se[i, :, sigma_index].numpy()
        for form, color in (("paper", "tab:red"), ("full", "tab:blue")):
            an = (coefficients[name][form] * s * s).numpy()
            ax.errorbar(mc, an, xerr=err, ls="none", color=color, label=form, capsize=2, **_FORM_STYLE[form])
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1)
        ax.set(xlabel="Monte Carlo (± s.e.)", ylabel="analytic", title=STATEMENT_LABELS[name].split(":")[0])
        ax.ticklabel_format(axis="both", style="sci", scilimits=(-2, 3))
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} noisy-loss excess over the clean loss at sigma = {s:g}: on the diagonal = agreement")
    fig.tight_layout()
    return fig


def mc_vs_analytic(pair: Pair, x: torch.Tensor, y: torch.Tensor, coefficients: dict, sigma: float, draws: int,
                   seed: int = 0):
    """Run a one-sigma Monte Carlo for ``pair`` and draw :func:`plot_mc_vs_analytic` (the widget's picture)."""
    est = noisy_excess(pair.teacher, pair.student, x, y, [sigma], draws, seed=seed)
    return plot_mc_vs_analytic(est, coefficients, 0, title=f"{pair.activation} MLP:")


def plot_affine(table):
    """Bars of the median relative residual ``||f - J x|| / ||f||`` per network, at init and trained (log scale)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    ypos = np.arange(len(table))
    floor = 1e-17
    for off, col, color in ((-0.2, "at init (median)", "0.6"), (0.2, "trained (median)", "tab:blue")):
        ax.barh(ypos + off, np.maximum(table[col].to_numpy(), floor), height=0.4, color=color, label=col)
    ax.set(yticks=ypos, yticklabels=table.index, xscale="log", xlabel="||f(x) - J(x) x|| / ||f(x)||")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_finite_differences(tables: dict):
    """Autograd directional derivatives against central finite differences, one panel per network
    (``{name: finite_difference_check table}``), one colour per method."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 4.8), squeeze=False)
    for ax, (net, df) in zip(axes[0], tables.items()):
        for (name, g), marker in zip(df.groupby("method", sort=False), "osD^"):
            ax.scatter(g["finite difference"], g["autograd"], s=14, marker=marker, alpha=0.7,
                       label=f"{name} (max rel. err. {g['relative error'].max():.1e})")
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1)
        ax.set(xlabel="central finite difference", ylabel="autograd (jkt.jacobian)", title=net)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_costs(tables: dict, title: str = ""):
    """Grouped horizontal bars: each method's time as a multiple of one forward+backward step, per network."""
    import matplotlib.pyplot as plt

    methods = list(next(iter(tables.values())).index)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(methods) + 1.5))
    ypos = np.arange(len(methods))
    h = 0.8 / len(tables)
    for j, (net, t) in enumerate(tables.items()):
        vals = t.loc[methods, "x step"].to_numpy()
        bars = ax.barh(ypos + (j - (len(tables) - 1) / 2) * h, vals, height=h, label=net)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set(yticks=ypos, yticklabels=methods, xlabel="time / (one forward+backward step, same network and batch)",
           title=title)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    return fig


def plot_batchnorm_gap(df):
    """The relative gap between batched and exact per-sample train-mode gradients against the batch size."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    q = df.groupby("batch")["gap"].quantile([0.25, 0.5, 0.75]).unstack()
    ax.fill_between(q.index, q[0.25], q[0.75], alpha=0.3, label="interquartile range")
    ax.plot(q.index, q[0.5], "o-", label="median")
    ax.set(xscale="log", xlabel="batch size", ylabel="||batched - per-sample|| / ||per-sample||", ylim=(0, None))
    ax.set_xticks(list(q.index), [str(b) for b in q.index])
    ax.legend()
    fig.tight_layout()
    return fig


def plot_gradients(images: torch.Tensor, rows: dict, cosines: dict | None = None):
    """A grid: the input images on top, then one row per model of its input gradients (red positive, blue
    negative, each image scaled to its own maximum); ``cosines`` adds the cosine with the teacher per image."""
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(2.1 * n, 2.1 * (1 + len(rows))), squeeze=False)
    for j in range(n):
        img = images[j].permute(1, 2, 0).squeeze(-1).cpu()
        axes[0, j].imshow(img, cmap="gray" if img.dim() == 2 else None)
        for i, (name, g) in enumerate(rows.items(), start=1):
            a = g[j].sum(0).cpu()
            m = float(a.abs().max()) or 1.0
            axes[i, j].imshow(a, cmap="RdBu_r", vmin=-m, vmax=m)
            if cosines is not None and name in cosines:
                axes[i, j].set_title(f"cos {float(cosines[name][j]):+.2f}", fontsize=8)
    for i, name in enumerate(["input"] + list(rows)):
        axes[i, 0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_estimators(errors):
    """Box plots of ``estimate / exact - 1`` per estimator (all repeats and points) at equal cost."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(errors["estimator"]))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.boxplot([errors.loc[errors.estimator == n, "relative error"] for n in names], vert=False,
               showfliers=False)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set(xlabel="estimate / exact - 1 (symlog; equal cost; the exact sum is at 0 with no spread)",
           title="boxes: quartiles, whiskers: 1.5 IQR, orange: median, over repeats and test images")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
