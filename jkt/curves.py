"""Learning curves: have the distillation students stopped improving at the profile's number of steps?

The batch trains some methods and seeds of every per_class cell for several multiples of the profile's steps
(``Profile.curves``; each run its own schedule: Adam, one tenfold anneal at 80%), and every distillation record
holds the student's accuracy on the validation pool (training images that no subset uses, jkt.data.holdout).
A method has **levelled off** at its steps S when going on to the next budget raises validation accuracy by less
than ``threshold`` points per doubling of the steps, averaged over seeds (each pair of budgets compared within a
seed: same subset, same initial weights). Methods fall in two families with their own steps (the Jacobian and
noise terms fit slowly; :func:`family`); a curve method stands for its family, and where a family was still
improving at a per_class, the report keeps a comparison's verdict only when it favours that family's method.
"""
from __future__ import annotations

import math

import pandas as pd

THRESHOLD = 0.5  # points of validation accuracy per doubling of the steps


def family(method: str) -> str:
    """"first-order" for a method with a Jacobian or noise term (its own steps on the cpu profile), else
    "zeroth-order"."""
    from .losses import preset

    return "first-order" if preset(method).first_order else "zeroth-order"


def _gains(runs: pd.DataFrame, low: int, high: int) -> pd.Series:
    """Per seed: validation accuracy at ``high`` steps minus at ``low``, per doubling."""
    at = runs.pivot_table(index="seed", columns="steps", values="validation_accuracy")
    if low not in at or high not in at:
        return pd.Series(dtype=float)
    return ((at[high] - at[low]) / math.log2(high / low)).dropna()


def levelled(curves: pd.DataFrame, grid: pd.DataFrame, threshold: float = THRESHOLD) -> pd.DataFrame:
    """One row per (dataset, per_class, method) that has a learning curve: the grid's steps for it (the records
    of the tables, ``grid``), the gain in validation accuracy per doubling from there to the curve's next budget
    (mean over seeds, each compared within its seed: same subset, same initial weights; with its sd and count),
    the same from the budget before, the steps the curve picks (the smallest budget whose next doubling gains
    less than ``threshold``), and the status: "levelled off", "still improving" or "unchecked" (no next budget)."""
    rows = []
    if not len(grid) or not len(curves) or "validation_accuracy" not in curves:
        return pd.DataFrame(rows)
    if "diverged_at_step" in curves:  # a run that stopped early has no place on a curve of budgets
        curves, grid = (d[d["diverged_at_step"].isna()] for d in (curves, grid))
    for (dataset, pc, method), runs in curves.groupby(["dataset", "per_class", "method"], sort=False):
        mine = grid[(grid["dataset"] == dataset) & (grid["per_class"] == pc) & (grid["method"] == method)]
        if runs["steps"].nunique() < 2 or not len(mine):
            continue
        steps = int(mine["steps"].median())
        budgets = sorted(int(s) for s in runs["steps"].unique())
        after = [b for b in budgets if b > steps]
        before = [b for b in budgets if b < steps]
        gain = _gains(runs, steps, after[0]) if after else pd.Series(dtype=float)
        earlier = _gains(runs, before[-1], steps) if before else pd.Series(dtype=float)
        pick = next((b for b, c in zip(budgets, budgets[1:]) if _gains(runs, b, c).mean() < threshold), None)
        status = "unchecked" if not len(gain) else "levelled off" if gain.mean() < threshold else "still improving"
        rows.append({"dataset": dataset, "per_class": pc, "method": method, "family": family(method),
                     "steps": steps, "next_steps": after[0] if after else None,
                     "gain_per_doubling": gain.mean() if len(gain) else None,
                     "gain_sd": gain.std(ddof=1) if len(gain) > 1 else None, "seeds": len(gain),
                     "gain_before": earlier.mean() if len(earlier) else None, "curves_pick": pick,
                     "threshold": threshold, "status": status})
    return pd.DataFrame(rows)


def still_improving(table: pd.DataFrame) -> set:
    """``(dataset, per_class, family)`` of every curve of a :func:`levelled` table still improving: the methods of
    that family at that cell were stopped too early."""
    if not len(table):
        return set()
    rows = table[table["status"] == "still improving"]
    return set(zip(rows["dataset"], rows["per_class"], rows["family"]))


def plot(curves: pd.DataFrame, table: pd.DataFrame, title: str = ""):
    """Validation accuracy against steps (log2 axis), one panel per (dataset, per_class), one line per method
    (mean over the seeds that have a curve, i.e. runs at two budgets or more; its grid steps ringed)."""
    import matplotlib.pyplot as plt

    cells = sorted(dict.fromkeys(zip(table["dataset"], table["per_class"])) if len(table) else [],
                   key=lambda c: (c[0], math.inf if c[1] == "full" else float(c[1])))  # smallest per_class first
    methods = sorted(table["method"].unique()) if len(table) else []  # one colour per method in every panel
    fig, axes = plt.subplots(1, max(len(cells), 1), figsize=(3.4 * max(len(cells), 1), 3.4), squeeze=False)
    for ax, (dataset, pc) in zip(axes[0], cells):
        rows = table[(table["dataset"] == dataset) & (table["per_class"] == pc)]
        for row in rows.sort_values("method").itertuples():
            runs = curves[(curves["dataset"] == dataset) & (curves["per_class"] == pc) & (curves["method"] == row.method)]
            budgets = runs.groupby("seed")["steps"].nunique()
            runs = runs[runs["seed"].isin(budgets[budgets > 1].index)]  # the grid's other seeds would bias one point
            line = runs.groupby("steps")["validation_accuracy"].mean()
            color = f"C{methods.index(row.method)}"
            ax.plot(line.index, line.values, marker="o", color=color, label=f"{row.method}: {row.status}")
            if row.steps in line.index:
                ax.plot([row.steps], [line[row.steps]], "o", ms=12, mfc="none", color=color)
        ax.set_xscale("log", base=2)
        ax.set(title=f"{pc} per class", xlabel="steps")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("validation accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
