"""The numerical checks of the paper's expansions (notebook 01): exact second-order expansions of the four
statements, their Monte-Carlo left-hand sides, the fits that decide between them, and Section 3's ``f = J x``.

Equations and sections are those of the workshop paper (Srinivas & Fleuret, "Local Affine Approximators for
Improving Knowledge Transfer"). Notation (its Section 4): ``T``, ``S`` teacher and student logits, ``T_s``,
``S_s`` their softmax outputs, ``xi = sigma * z`` with ``z ~ N(0, I_D)``, ``d^i = T^i - S^i``, ``H_f`` the
input Hessian of ``f``.
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

Everything here works in the dtype of its inputs; the notebook uses float64 copies of the networks.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev, jvp, vmap

from . import data as jdata
from . import models
from .jacobian import eval_mode, full_jacobian
from .losses import preset
from .teachers import teacher_targets
from .train import accuracy, fit, seed_everything
from .validate import check_choice, check_positive_int

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
    h = vmap(torch.func.hessian(_single(fn, x.shape[1:])))(x.detach().flatten(1))
    return h.diagonal(dim1=-2, dim2=-1).sum(-1).detach()


def hutchinson_trace(fn, x: torch.Tensor, probes: int, generator: torch.Generator | None = None) -> tuple:
    """Hutchinson's unbiased estimate of ``tr H_{f_k}(x_b)``: the mean over Rademacher v of ``v^T H v``
    (``E[v v^T] = I``), each ``H v`` a forward-over-reverse product. Returns ``(estimate, standard error)``,
    both (B, K). For inputs too large for :func:`hessian_trace`."""
    check_positive_int("probes", probes)
    g = _single(fn, x.shape[1:])
    xf = x.detach().flatten(1)
    v = torch.randint(0, 2, (probes, *xf.shape), generator=generator, dtype=torch.int64).to(xf) * 2 - 1

    def quad(xb, vb):  # v^T H_k v for all outputs k
        return (jvp(jacrev(g), (xb,), (vb,))[1] * vb).sum(-1)

    q = torch.stack([vmap(quad)(xf, vi) for vi in v])  # (probes, B, K)
    se = q.std(0) / math.sqrt(probes) if probes > 1 else torch.full_like(q[0], float("nan"))
    return q.mean(0).detach(), se.detach()


def expansion(fn, x: torch.Tensor, hessian: str = "exact", probes: int = 64,
              generator: torch.Generator | None = None) -> Expansion:
    """:class:`Expansion` of ``fn`` (a function of a batch, returning (B, K)) at every point of ``x``:
    Jacobians by ``torch.func.jacrev``, Hessian traces exactly (``hessian="exact"``) or by Hutchinson."""
    check_choice("hessian", hessian, ["exact", "hutchinson"])
    x = x.detach()
    with torch.no_grad():
        value = fn(x)
    grad = vmap(jacrev(_single(fn, x.shape[1:])))(x.flatten(1))
    trace = hessian_trace(fn, x) if hessian == "exact" else hutchinson_trace(fn, x, probes, generator)[0]
    return Expansion(value, grad.detach(), trace)


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
    def pick(t):
        return t.gather(1, y[:, None])[:, 0]

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
