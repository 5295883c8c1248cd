"""The figures of notebooks 01 (the Taylor expansions) and 02 (input Jacobians). Each function returns a
matplotlib figure; the notebooks save it with ``jkt.plots.save(fig, name, profile)``."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from .taylor import STATEMENT_LABELS, STATEMENTS, NoisyEstimate, Pair, discrepancies, mean_abs, noisy_excess

# ---------------------------------------------------------------------------------------------------
# Notebook 01

_FORM_STYLE = {"paper": dict(marker="o", mfc="none", ms=8), "full": dict(marker="s", ms=5)}


def plot_discrepancies(results: dict, slopes):
    """2x2 log-log panels, one per statement: the mean absolute discrepancy (MC minus analytic) against
    sigma for each network and form, with standard-error bars and the fitted slopes in the legend."""
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


# ---------------------------------------------------------------------------------------------------
# Notebook 02

def plot_finite_differences(tables: dict):
    """Autograd directional derivatives against central finite differences, one panel per network
    (``{name: finite_difference_check table}``), one colour per method."""
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
