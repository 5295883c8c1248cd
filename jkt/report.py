"""Tables beside the paper's numbers."""
from __future__ import annotations

import pandas as pd

from . import paper
from .losses import METHOD_LABELS


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    s = pd.Series(list(values), dtype=float)
    return float(s.mean()), float(s.std(ddof=1)) if len(s) > 1 else 0.0, int(len(s))


def fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def distill_table(records: pd.DataFrame, methods, dataset: str, per_class, profile: str) -> pd.DataFrame:
    """One row per method in the given (paper's) order: mean ± std of test accuracy over seeds, the seed
    count, and the paper's number where dataset and profile are the paper's."""
    rows = []
    for m in methods:
        acc = records.loc[records["method"] == m, "test_accuracy"] if len(records) else []
        row = {"method": m, "description": METHOD_LABELS.get(m, m)}
        if len(acc):
            mean, std, n = mean_std(acc)
            row.update({"accuracy": fmt(mean, std, n), "mean": mean, "std": std, "seeds": n})
        else:
            row.update({"accuracy": "not run", "mean": float("nan"), "std": float("nan"), "seeds": 0})
        if profile == "paper":
            row["paper"] = paper.distillation_number(dataset, m, per_class)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")
