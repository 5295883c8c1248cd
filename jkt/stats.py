"""The report's statistics: methods compared within a seed, paired.

All methods of a seed share that seed's training subset and the student's initial weights (the
experiments seed both from the seed), so the per-seed difference of two methods removes the subset's
luck, the largest source of spread at low data. A comparison is the paired mean difference with its
confidence interval, a paired t-test, Holm's correction across the cells of a claim, and the minimum
detectable difference at the seeds it has (two-sided alpha, power 0.8, before Holm).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

KINDS = ("greater", "no_gain", "close")
VERDICTS = ("supported", "equivalent", "partly supported", "not resolved", "mixed", "contradicted", "no data")


def paired(a: pd.Series, b: pd.Series, kind: str = "greater", alpha: float = 0.05, margin: float = 1.0,
           power: float = 0.8) -> dict:
    """One comparison of accuracies ``a`` (the claim's method) and ``b`` (its baseline), both indexed by seed, on
    the seeds they share: ``n``, the paired mean difference ``diff`` and its sd, the (1 - alpha) CI, the
    (1 - 2 alpha) CI used for equivalence, the minimum detectable difference ``mdd``, and ``p`` of the test of
    ``kind`` (before Holm; the verdict comes from :func:`holm_verdicts`):

    - "greater": two-sided paired t-test of diff = 0;
    - "no_gain": one-sided, H0 diff >= margin (the method gains at least ``margin`` points);
    - "close": equivalence (two one-sided tests), H0 |diff| >= margin.
    """
    from scipy import stats

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not allowed; choose one of {list(KINDS)}")
    a, b = pd.Series(a, dtype=float).dropna(), pd.Series(b, dtype=float).dropna()
    seeds = a.index.intersection(b.index)
    d = (a[seeds] - b[seeds]).to_numpy(float)
    n = len(d)
    out = {"n": n, "a_mean": a[seeds].mean() if n else np.nan, "b_mean": b[seeds].mean() if n else np.nan,
           "diff": d.mean() if n else np.nan, "sd": d.std(ddof=1) if n > 1 else np.nan, "kind": kind,
           "margin": margin, "p": np.nan, "p_beyond": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "eq_low": np.nan, "eq_high": np.nan, "mdd": np.nan, "seeds_for_margin": np.nan}
    if n < 2:
        return out
    diff, sd = out["diff"], out["sd"]
    se = sd / math.sqrt(n)
    t2, t1 = stats.t.ppf(1 - alpha / 2, n - 1), stats.t.ppf(1 - alpha, n - 1)
    out.update(ci_low=diff - t2 * se, ci_high=diff + t2 * se, eq_low=diff - t1 * se, eq_high=diff + t1 * se,
               mdd=(t2 + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n),
               seeds_for_margin=seeds_needed(sd, margin, alpha, power))

    def above(shift):  # p of H0 diff <= shift against diff > shift
        return float(stats.t.sf((diff - shift) / se, n - 1)) if se > 0 else float(diff <= shift)

    def below(shift):  # p of H0 diff >= shift against diff < shift
        return float(stats.t.cdf((diff - shift) / se, n - 1)) if se > 0 else float(diff >= shift)

    if kind == "greater":
        out["p"] = min(1.0, 2 * min(above(0.0), below(0.0)))
    elif kind == "no_gain":
        out["p"], out["p_beyond"] = below(margin), above(margin)
    else:
        out["p"], out["p_beyond"] = max(above(-margin), below(margin)), min(above(margin), below(-margin))
    return out


def seeds_needed(sd: float, target: float, alpha: float = 0.05, power: float = 0.8, most: int = 10_000) -> float:
    """The fewest seeds whose minimum detectable paired difference (two-sided ``alpha``, ``power``) is at most
    ``target``, for paired differences of standard deviation ``sd`` (e.g. a pilot's): nan without an sd, inf past
    ``most``. What a run of this profile needs to decide a cell at that size."""
    from scipy import stats

    if not np.isfinite(sd) or target <= 0:
        return np.nan
    if sd == 0:
        return 2
    for n in range(2, most + 1):
        if (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n) <= target:
            return n
    return np.inf


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of ``pvalues`` (nan stays nan): family-wise error at most alpha."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok])]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def holm_verdicts(cells: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """``cells`` (rows of :func:`paired`, one claim) with ``p_holm`` and a ``verdict`` each: "supported" or
    "contradicted" when the Holm-adjusted test decides, "equivalent" (for "greater") when the (1 - 2 alpha) CI
    lies inside +-margin, else "not resolved"."""
    cells = cells.copy()
    cells["p_holm"] = holm(cells["p"])
    beyond = holm(cells["p_beyond"]) if "p_beyond" in cells else np.full(len(cells), np.nan)
    verdicts = []
    for (_, c), pb in zip(cells.iterrows(), beyond):
        verdict = "not resolved"
        if c["p_holm"] < alpha:
            verdict = "supported" if c["kind"] != "greater" or c["diff"] > 0 else "contradicted"
        elif pb < alpha:
            verdict = "contradicted"
        elif c["kind"] == "greater" and -c["margin"] < c["eq_low"] and c["eq_high"] < c["margin"]:
            verdict = "equivalent"
        verdicts.append(verdict)
    cells["verdict"] = verdicts
    return cells


def combine(verdicts) -> str:
    """A claim's verdict from its cells': all alike -> that verdict; supported and contradicted -> mixed; some
    supported, none contradicted -> partly supported; only contradicted and unresolved -> contradicted."""
    verdicts = list(verdicts)
    if not verdicts:
        return "no data"
    if len(set(verdicts)) == 1:
        return verdicts[0]
    yes, no = "supported" in verdicts, "contradicted" in verdicts
    if yes and no:
        return "mixed"
    if yes:
        return "partly supported"
    return "contradicted" if no else "not resolved"
