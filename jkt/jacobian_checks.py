"""Notebook 02's measurements of input Jacobians: every route of jkt.jacobian against finite differences, what
each costs, the BatchNorm caveat of train mode, students' input gradients against their teacher's, and three
estimators of Proposition 1's full-Jacobian distance at equal cost.

Everything works in the dtype of its inputs; the float64 checks run on float64 copies of the networks.
"""
from __future__ import annotations

import copy
import math
import statistics

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import models
from .batching import Batches
from .data import Split
from .jacobian import (eval_mode, frobenius_sq_estimate, full_jacobian, input_gradient,
                       jacobian_distance_sq_estimate, output_and_input_gradient, projected_gradient)
from .losses import jacobian_matching, preset
from .profiles import epochs_for
from .teachers import teacher_targets
from .timing import time_call
from .train import fit, seed_everything

# ---------------------------------------------------------------------------------------------------
# Finite differences

@torch.no_grad()
def directional_fd(model: nn.Module, x: torch.Tensor, u: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central finite differences ``(f(x + h u) - f(x - h u)) / 2h`` of all outputs, shape (B, K): ``J u``
    up to O(h^2) (exact for a piecewise-linear network unless a kink lies within h of x)."""
    return (model(x + h * u) - model(x - h * u)) / (2 * h)


def maxpool_ties(model: nn.Module, x: torch.Tensor) -> float:
    """The fraction of 2x2 max-pool windows of a VGG (eval mode) whose two largest inputs are equal and
    positive: points where the network is not differentiable (flat image backgrounds make them common)."""
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


def _dot(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per sample, the inner product of two batches of input-shaped tensors."""
    return (g * u).flatten(1).sum(1)


def finite_difference_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, directions: int = 4,
                            h: float = 1e-6, generator: torch.Generator | None = None):
    """Every way of getting an input Jacobian from :mod:`jkt.jacobian` against central finite differences
    (:func:`directional_fd`) along random unit directions u, in the model's dtype and eval mode.

    One row per (method, sample, direction): the analytic directional derivative and the finite difference
    of the same quantity: ``<grad f_y, u>`` (label), ``<grad f_top1, u>`` (top-1), ``J u`` (full Jacobian,
    every output, one row per output), ``<v^T J, u>`` (a random projection v)."""
    rows = []
    with eval_mode(model):
        logits = model(x).detach()
        top1 = logits.argmax(1)
        g_label = input_gradient(model, x, y)
        g_top1 = input_gradient(model, x, "top1")
        full = full_jacobian(model, x)
        v = torch.randn(logits.shape, generator=generator, dtype=x.dtype)
        _, g_proj = projected_gradient(model, x, v)
        for k in range(directions):
            u = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            u = u / u.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
            fd = directional_fd(model, x, u, h)
            ju = (full * u.unsqueeze(1)).flatten(2).sum(-1)
            pairs = {"one output (label)": (_dot(g_label, u), fd.gather(1, y[:, None])[:, 0]),
                     "one output (top-1)": (_dot(g_top1, u), fd.gather(1, top1[:, None])[:, 0]),
                     "random projection": (_dot(g_proj, u), (v * fd).sum(1))}
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
# Cost, as a multiple of one training step

def cross_entropy_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
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
    with torch.no_grad():
        k = model(x[:1]).shape[1]
    target = teacher_grad if teacher_grad is not None else torch.zeros_like(x)

    def jacobian_step():
        model.zero_grad(set_to_none=True)
        logits, g, _ = output_and_input_gradient(model, x, y, create_graph=True)
        (F.cross_entropy(logits, y) + jacobian_matching(g, target)).backward(inputs=list(model.parameters()))

    return {
        "one output (label)": lambda: input_gradient(model, x, y),
        "one output (top-1)": lambda: input_gradient(model, x, "top1"),
        "training step with Jacobian matching": jacobian_step,
        f"full Jacobian ({k} backward passes)": lambda: [input_gradient(model, x, i) for i in range(k)],
        "full Jacobian (torch.func)": lambda: full_jacobian(model, x),
        "1 random projection": lambda: frobenius_sq_estimate(model, x, 1, generator),
    }


# ---------------------------------------------------------------------------------------------------
# The BatchNorm caveat

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
    exact = per_sample_gradients_train_mode(model, x, index, rows).flatten(1)
    batched = input_gradient(copy.deepcopy(model).train(), x, index)[:len(exact)].flatten(1)
    return (batched - exact).norm(dim=1) / exact.norm(dim=1)


def batchnorm_gap_table(model: nn.Module, data, split, batch_sizes, rows: int, device="cpu"):
    """:func:`batchnorm_gap` on the first images of ``split`` for each batch size: one row per (batch, sample)."""
    out = []
    for b in batch_sizes:
        x = data.normalize(split.x[:b].to(device))
        gap = batchnorm_gap(model, x, split.y[:b].to(device), rows)
        out += [{"batch": b, "sample": i, "gap": float(g)} for i, g in enumerate(gap)]
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------------
# Seeing Jacobians

def distill_student(data, train_split, teacher: nn.Module, method: str, profile, steps: int, seed: int = 0,
                    device="cpu", **options) -> nn.Module:
    """A fresh profile-sized student (VGG-4) trained for about ``steps`` steps with the preset ``method``
    (e.g. "act+ce", "act+jac+ce"; ``options`` override the preset) against ``teacher``'s cached outputs and
    input gradients on ``train_split``; ``steps=0`` returns the initialised student. Eval mode."""
    objective = preset(method, **options)
    seed_everything(seed)
    student = models.build(profile.student_arch, data.in_channels, data.num_classes, profile.student_width)
    if steps > 0:
        targets = None
        if objective.needs_teacher:
            targets = teacher_targets(teacher, data, train_split, objective.jacobian_output,
                                      with_gradients=objective.gamma > 0, device=device)
        batch = min(profile.batch_size, len(train_split))
        epochs = epochs_for(len(train_split), batch, None, steps)
        fit(student, data, train_split, objective, epochs, batch, seed=seed, lr=profile.lr,
            anneal_at=profile.anneal_at, device=device, teacher_targets=targets, progress=False)
    return student.to(device).eval()


def label_gradients(model: nn.Module, data, split, batch_size: int = 500, device="cpu",
                    limit: int | None = None) -> torch.Tensor:
    """The input gradient of the label's output for every image of ``split`` (the first ``limit`` if given),
    in eval mode (exact per-sample gradients), on the CPU: shape (N, C, H, W)."""
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
# Three estimators of the full-Jacobian distance sum_i ||grad T^i - grad S^i||^2

def exact_jacobian_distance(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``||J_T(x_b) - J_S(x_b)||_F^2`` per sample, exactly: K backward passes through each network."""
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
    Returns ``(summary table, long table of the relative errors est/exact - 1 per repeat and point,
    the exact distances per point)``."""
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
