"""Tables beside the paper's numbers, and the paper's claims tested on ours across seeds (notebooks 03 and 06)."""
from __future__ import annotations

import pandas as pd

from . import paper


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    s = pd.Series(list(values), dtype=float)
    return float(s.mean()), float(s.std(ddof=1)) if len(s) > 1 else 0.0, int(len(s))


def fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


# ---------------------------------------------------------------------------------------------------
# The batch report (notebook 06): tables beside the paper for every record of a profile, claim verdicts

PAPER_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _per_class_order(values) -> list:
    """Per-class sizes in increasing order, "full" last."""
    values = list(dict.fromkeys(values))
    return sorted([v for v in values if v != "full"], key=float) + (["full"] if "full" in values else [])


def ordered(methods, order) -> list:
    present = list(dict.fromkeys(methods))
    return [m for m in order if m in present] + [m for m in present if m not in order]


def distillation_reference(dataset: str, per_classes) -> tuple[str, bool]:
    """The paper table to put beside ours: ``(paper dataset, same dataset?)``. Our own dataset when the paper has
    it; otherwise, for orientation, the paper table sharing most of our per-class columns (CIFAR-10 on ties)."""
    if dataset in paper.DISTILLATION:
        return dataset, True
    per_classes = set(per_classes)
    best = max(paper.DISTILLATION, key=lambda d: (len(per_classes & set(paper.DISTILLATION[d]["per_class"])),
                                                  d == "cifar10"))
    return best, False


def reference_label(dataset: str, same: bool) -> str:
    name = PAPER_NAMES.get(dataset, dataset)
    return f"paper ({name})" if same else f"paper {name} (different dataset)"


def distillation_table(records: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Tables 1-2 for one dataset: one row per method (the paper's order), for every per_class of our records a
    column ``(per_class, "ours")`` with mean ± std over seeds and beside it the paper's number (its own table on
    CIFAR, else the closest paper table for orientation, labelled as a different dataset)."""
    part = records[records["dataset"] == dataset] if len(records) else records
    if not len(part):
        return pd.DataFrame()
    per_classes = _per_class_order(part["per_class"])
    ref, same = distillation_reference(dataset, per_classes)
    label = reference_label(ref, same)
    methods = ordered(part["method"], paper.DISTILLATION[ref]["rows"])
    table = pd.DataFrame(index=pd.Index(methods, name="method"))
    for pc in per_classes:
        cell = part[part["per_class"] == pc]
        table[(pc, "ours")] = [_cell(cell.loc[cell["method"] == m, "test_accuracy"], _diverged(cell, m))
                               for m in methods]
        numbers = [paper.distillation_number(ref, m, pc) for m in methods]
        table[(pc, label)] = ["—" if v is None else f"{v:.2f}" for v in numbers]
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["per_class", ""])
    return table


def _cell(values, diverged: int = 0) -> str:
    values = pd.Series(values, dtype=float).dropna()
    text = fmt(*mean_std(values)) if len(values) else "not run"
    return text + (f" ({diverged} diverged)" if diverged else "")


def _diverged(records: pd.DataFrame, method: str) -> int:
    """How many of ``method``'s runs among ``records`` stopped on a non-finite loss (their accuracy is that of
    the network they left)."""
    if "diverged_at_step" not in records:
        return 0
    return int(records.loc[records["method"] == method, "diverged_at_step"].notna().sum())


def distillation_long(records: pd.DataFrame) -> pd.DataFrame:
    """The distillation records for plotting, with ``images per class`` numeric ("full" becomes the training
    set's size per class) and ``label`` the method's description."""
    if not len(records):
        return records
    df = records.copy()
    classes = {}
    for dataset, part in df[df["per_class"] != "full"].groupby("dataset"):
        classes[dataset] = float((part["n_train"] / part["per_class"].astype(float)).median())
    df["images per class"] = [float(pc) if pc != "full" else n / classes.get(d, 1.0)
                              for pc, n, d in zip(df["per_class"], df["n_train"], df["dataset"])]
    return df


def robustness_table(curves: pd.DataFrame, dataset: str, profile: str, route: str = "penalty") -> pd.DataFrame:
    """Table 3: one row per penalty strength, for every test sigma our accuracy (mean ± std over seeds of each
    network's mean over noise draws) beside the paper's (CIFAR-100; for orientation when ours is another dataset)."""
    if not len(curves):
        return pd.DataFrame()
    part = curves[curves["route"] == route]
    per_seed = part.groupby(["strength", "sigma", "seed"], as_index=False)["accuracy"].mean()
    same = profile == "paper" and dataset == "cifar100"
    label = reference_label("cifar100", same)
    rows = paper.TABLE3_ROBUSTNESS["rows"]
    strengths = sorted(per_seed["strength"].unique())
    table = pd.DataFrame(index=pd.Index(strengths, name="strength"))
    for sigma in sorted(per_seed["sigma"].unique()):
        cell = per_seed[per_seed["sigma"] == sigma]
        table[(sigma, "ours")] = [_cell(cell.loc[cell["strength"] == s, "accuracy"]) for s in strengths]
        refs = []
        for s in strengths:
            entry = next((row for k, row in rows.items() if abs(k - s) < 1e-12), None)
            j = next((i for i, t in enumerate(paper.TABLE3_ROBUSTNESS["sigmas"]) if abs(t - sigma) < 1e-12), None)
            refs.append("—" if entry is None or j is None else
                        (f"{entry[j][0]:.2f}" if entry[j][1] is None else f"{entry[j][0]:.2f} ± {entry[j][1]:.2f}"))
        table[(sigma, label)] = refs
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["sigma", ""])
    return table


def transfer_report_table(records: pd.DataFrame) -> pd.DataFrame:
    """The poster's transfer table: one row per method (its order), for every (setting, per_class) of our records
    our accuracy (mean ± std over seeds) beside the poster's MIT Indoor 67 number: at the same per_class in the
    paper setting on 67 classes, else its 25-per-class column for orientation (a different task)."""
    if not len(records):
        return pd.DataFrame()
    poster = paper.TRANSFER_MIT67
    methods = ordered(records["method"], poster["rows"])
    table = pd.DataFrame(index=pd.Index(methods, name="method"))
    for setting in dict.fromkeys(records["setting"]):
        part = records[records["setting"] == setting]
        for pc in _per_class_order(part["per_class"]):
            cell = part[part["per_class"] == pc]
            name = f"{setting}, {pc}" if records["setting"].nunique() > 1 else pc
            table[(name, "ours")] = [_cell(cell.loc[cell["method"] == m, "test_accuracy"]) for m in methods]
            same = setting == "paper" and pc in poster["per_class"] and _num_classes(cell) == 67
            col = poster["per_class"].index(pc) if same else 0
            label = "poster (MIT Indoor 67)" if same else "poster MIT Indoor 67, 25/class (different task)"
            table[(name, label)] = [f"{poster['rows'][m][col]:.2f}" if m in poster["rows"] else "—" for m in methods]
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["per_class", ""])
    return table


def _num_classes(records: pd.DataFrame):
    rows = records[records["per_class"] != "full"]
    if not len(rows):
        return None
    return int(round(float((rows["n_train"] / rows["per_class"].astype(float)).median())))


def _fmt_p(p) -> str:
    return "n/a" if p != p else ("<0.001" if p < 0.001 else f"{p:.3f}")


# ---- the paper's claims ------------------------------------------------------------------------------------

CLAIMS = [
    ("distill-low", "Distillation beats training from scratch at low data", "Tables 1-2"),
    ("jacobian-low", "Matching activations and Jacobians beats activations alone at low data", "Tables 1-2"),
    ("jacobian-full", "At full data, Jacobians do not help", "Tables 1-2"),
    ("jacobian-loss", "The normalised Jacobian loss (the paper's CIFAR-10 form) beats the squared one (Proposition 1's)",
     "supplementary"),
    ("squared-vs-ce", "The squared loss works better than cross-entropy for distillation: act+jac (Proposition 1) "
                      "beats Eq. 2's cross-entropy form soft+softjac (its Jacobian term for the label's output "
                      "only, at weight 1)", "Section 5"),
    ("mechanism", "Jacobian matching brings the student's input gradients, and its outputs under noise, closer to "
                  "the teacher's than activation matching alone", "Proposition 1"),
    ("penalty-noise", "The Jacobian-norm penalty raises accuracy under noise (each strength against none, paired "
                      "within seeds)", "Table 3"),
    ("penalty-clean", "... while clean accuracy stays close", "Table 3"),
    ("lwf-jacobian", "LwF + Jacobians beats LwF", "transfer table"),
    ("attention-jacobian", "Attention + Jacobians beats attention", "transfer table"),
    ("practitioner", "Beyond the paper: act+jac beats Monte-Carlo noisy-input distillation and Hinton soft targets "
                     "at low data (their training seconds in the practitioner's table)", "Proposition 1"),
]


def claims(distill=None, robustness=None, transfer=None, alpha: float = 0.05, low_data: int = 10,
           margin: float = 1.0, clean_margin: float = 2.0, improving=()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's claims tested on our records, methods paired within a seed (jkt.stats): ``(claims, cells)``.

    ``cells``: one row per comparison (a dataset and per_class, or a sigma): the paired mean difference, its
    (1 - alpha) CI, the minimum detectable difference at its seeds, p before and after Holm's correction across
    the cells of its claim, and a verdict ("supported", "contradicted", "equivalent": the (1 - 2 alpha) CI
    inside +-``margin``, or "not resolved"). ``claims``: one row per claim (jkt.report.CLAIMS), its cells'
    verdicts combined. Low data: per_class <= ``low_data``; full data: per_class "full", else our largest
    (said so). ``margin``: a smaller gain counts as no help; ``clean_margin``: how close "close" is.
    ``improving``: (dataset, per_class, family) whose students the learning curves show still improving
    (jkt.curves.still_improving): a comparison of a method of that family there keeps its verdict only if it
    favours that method (more steps can only widen its lead), else it is "not resolved". A method at least half
    of whose runs there diverged (a non-finite loss stopped them) does not count as still improving.
    """
    from .curves import family
    from .stats import combine, holm_verdicts, paired

    empty = pd.DataFrame()
    distill = empty if distill is None else distill
    robustness = empty if robustness is None else robustness
    transfer = empty if transfer is None else transfer
    cells = []

    def by_seed(rows, column="test_accuracy"):
        return rows.groupby("seed")[column].mean()

    def rising(dataset, pc, method):  # the method's family was still improving at this cell
        return (dataset, pc, family(method)) in improving

    def mostly_diverged(dataset, pc, method):  # more steps cannot carry runs that stopped on a non-finite loss
        rows = distill[(distill["dataset"] == dataset) & (distill["per_class"] == pc)]
        return 2 * _diverged(rows, method) >= (rows["method"] == method).sum() > 0

    def cell(claim, where, a_name, b_name, a, b, kind, m=margin, at=None, diverged=""):
        if not len(a) or not len(b):
            return  # a method that was not run: no comparison
        still = [side for side, name in (("a", a_name), ("b", b_name))
                 if at is not None and rising(*at, name) and not mostly_diverged(*at, name)]
        cells.append({"claim": claim, "where": where, "comparison": f"{a_name} - {b_name}",
                      **paired(a, b, kind, alpha, m), "improving": "".join(still), "diverged": diverged})

    if len(distill):
        check_pairing(distill, ["dataset", "per_class", "seed"])
        for dataset, part in distill.groupby("dataset", sort=False):
            per_classes = _per_class_order(part["per_class"])
            if "mech_grad_cos_label" in part:
                mechanism_cells(part, dataset, per_classes, cell)

            def acc(m, pc):
                return by_seed(part[(part["method"] == m) & (part["per_class"] == pc)])

            def diverged(pc, *methods):  # runs that stopped on a non-finite loss hold the network they left
                rows = part[part["per_class"] == pc]
                return ", ".join(f"{m}: {k} of {(rows['method'] == m).sum()} runs diverged"
                                 for m in methods if (k := _diverged(rows, m)))

            for pc in per_classes:
                where = f"{dataset}, per_class {pc}"
                pairs = [("jacobian-loss", "act+jacn", "act+jac"), ("jacobian-loss", "act+jacn+ce", "act+jac+ce"),
                         ("squared-vs-ce", "act+jac", "soft+softjac")]
                if pc != "full" and float(pc) <= low_data:
                    pairs += [("distill-low", "act+ce", "ce"), ("distill-low", "act", "ce"),
                              ("jacobian-low", "act+jac+ce", "act+ce"), ("jacobian-low", "act+jac", "act"),
                              ("practitioner", "act+jac", "noisy"), ("practitioner", "act+jac", "hinton")]
                for claim, a_name, b_name in pairs:
                    cell(claim, where, a_name, b_name, acc(a_name, pc), acc(b_name, pc), "greater",
                         at=(dataset, pc), diverged=diverged(pc, a_name, b_name))
            top = per_classes[-1]
            if top != "full" and float(top) <= low_data:
                continue  # no per_class above low data: nothing to say about full data
            where = f"{dataset}, per_class {top}" + ("" if top == "full" else " (our largest; not the full set)")
            for a_name, b_name in (("act+jac+ce", "act+ce"), ("act+jac", "act")):
                cell("jacobian-full", where, a_name, b_name, acc(a_name, top), acc(b_name, top), "no_gain",
                     at=(dataset, top))
    penalty = robustness[robustness["route"] == "penalty"] if len(robustness) else robustness
    for dataset, part in (penalty.groupby("dataset", sort=False) if len(penalty) else []):
        per_seed = part.groupby(["strength", "sigma", "seed"], as_index=False)["accuracy"].mean()
        strengths = sorted(per_seed["strength"].unique())
        if len(strengths) < 2:
            continue
        for sigma in sorted(per_seed["sigma"].unique()):  # networks of a seed share subset and initial weights
            at = per_seed[per_seed["sigma"] == sigma]
            base = by_seed(at[at["strength"] == strengths[0]], "accuracy")
            for strength in strengths[1:] if sigma > 0 else strengths[-1:]:
                top = by_seed(at[at["strength"] == strength], "accuracy")
                if sigma > 0:
                    cell("penalty-noise", f"{dataset}, sigma {sigma:g}", f"strength {strength:g}",
                         f"strength {strengths[0]:g}", top, base, "greater")
                else:
                    cell("penalty-clean", f"{dataset}, sigma 0", f"strength {strength:g}",
                         f"strength {strengths[0]:g}", top, base, "close", clean_margin)
    if len(transfer):
        check_pairing(transfer, ["setting", "per_class", "seed"])
        for (setting, pc), part in transfer.groupby(["setting", "per_class"], sort=False):
            def acc(m):
                return by_seed(part[part["method"] == m])

            where = f"{setting}, per_class {pc}"
            cell("lwf-jacobian", where, "lwf+jac", "lwf", acc("lwf+jac"), acc("lwf"), "greater")
            cell("attention-jacobian", where, "lwf+att+jac", "lwf+att", acc("lwf+att+jac"), acc("lwf+att"), "greater")

    cells = pd.DataFrame(cells)
    if len(cells):
        cells = pd.concat([holm_verdicts(part, alpha) for _, part in cells.groupby("claim", sort=False)],
                          ignore_index=True)
        cells["verdict"] = [_converged_verdict(c) for _, c in cells.iterrows()]
    level = f"{100 * (1 - alpha):g}%"
    tests = {"greater": f"paired t-test within seeds, Holm across cells, p < {alpha:g}; equivalent: the "
                        f"{100 * (1 - 2 * alpha):g}% CI inside ±{margin:g} points",
             "no_gain": f"one-sided paired t-test against a gain of {margin:g} points, Holm across cells, p < {alpha:g}",
             "close": f"paired equivalence test (two one-sided), |difference| < {clean_margin:g} points, p < {alpha:g}"}
    kinds = {key: "greater" for key, _, _ in CLAIMS}
    kinds.update({"jacobian-full": "no_gain", "penalty-clean": "close"})
    rows = []
    for key, text, source in CLAIMS:
        mine = cells[cells["claim"] == key] if len(cells) else cells
        evidence = []
        for _, c in mine.iterrows():
            ci = "" if c["n"] < 2 else f" [{level} CI {c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
            mdd = "" if c["n"] < 2 else f", detectable {c['mdd']:.2f}"
            stale = f" ({' and '.join(_side_names(c))} still improving)" if c["improving"] else ""
            stale += f" ({c['diverged']})" if c.get("diverged") else ""
            evidence.append(f"{c['where']}: {c['comparison']} {c['diff']:+.2f}{ci} over {int(c['n'])} paired "
                            f"seed(s){mdd}, p {_fmt_p(c['p_holm'])} (Holm): {c['verdict']}{stale}")
        rows.append({"claim": text, "paper": source, "verdict": combine(mine["verdict"]) if len(mine) else "no data",
                     "test": tests[kinds[key]], "evidence": "; ".join(evidence) or "no records yet"})
    return pd.DataFrame(rows), cells


PRACTITIONER = ("act+jac", "noisy", "hinton")


def practitioner_table(distill: pd.DataFrame, methods=PRACTITIONER, alpha: float = 0.05,
                       low_data: int = 10) -> pd.DataFrame:
    """The practitioner's comparison: for every (dataset, per_class <= ``low_data``) where they ran, each of
    ``methods`` with its test accuracy (mean ± std over seeds), its mean training seconds per run and their ratio
    to the first method's, and its paired difference from the first method with the (1 - alpha) CI (same seeds:
    same subset, same initial weights)."""
    from .stats import paired

    rows = []
    if not len(distill):
        return pd.DataFrame(rows)
    part = distill[distill["method"].isin(methods) & distill["per_class"].map(
        lambda pc: pc != "full" and float(pc) <= low_data)]
    for (dataset, pc), cell in part.groupby(["dataset", "per_class"], sort=False):
        if cell["method"].nunique() < 2:
            continue
        base = cell[cell["method"] == methods[0]]
        for m in methods:
            runs = cell[cell["method"] == m]
            if not len(runs):
                continue
            c = paired(runs.groupby("seed")["test_accuracy"].mean(), base.groupby("seed")["test_accuracy"].mean(),
                       alpha=alpha)
            ci = "" if m == methods[0] or c["n"] < 2 else f"{c['diff']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
            rows.append({"dataset": dataset, "per_class": pc, "method": m,
                         "accuracy": _cell(runs["test_accuracy"]), "seeds": runs["seed"].nunique(),
                         "train seconds": round(float(runs["train_seconds"].mean()), 1),
                         f"time / {methods[0]}": round(float(runs["train_seconds"].mean()
                                                             / base["train_seconds"].mean()), 2) if len(base) else None,
                         f"paired difference from {methods[0]}": ci})
    return pd.DataFrame(rows)


# The verdict that favours the claim's method (a) or its baseline (b), per kind of test.
_FAVOURS = {"greater": {"a": "supported", "b": "contradicted"}, "no_gain": {"a": "contradicted", "b": "supported"}}


def _converged_verdict(c) -> str:
    """A comparison whose students were still improving (``c["improving"]``: "a", "b" or "ab") keeps its verdict
    only when that verdict favours the still-improving side (its accuracy at the grid's steps is below what more
    steps give, so more training can only widen its lead); any other verdict is "not resolved"."""
    side = c.get("improving") or ""
    if not side:
        return c["verdict"]
    kept = _FAVOURS.get(c["kind"], {}).get(side) if len(side) == 1 else None
    return c["verdict"] if c["verdict"] == kept else "not resolved"


def _side_names(c) -> list[str]:
    a, b = c["comparison"].split(" - ", 1)
    return [name for side, name in (("a", a), ("b", b)) if side in c["improving"]]


def check_pairing(records: pd.DataFrame, cell: list) -> None:
    """The methods compared within a seed must share its training subset and initial weights: a ValueError naming
    the cell when the records' fingerprints say otherwise (records without fingerprints are not checked)."""
    for column in ("subset_fingerprint", "init_fingerprint"):
        if column in records:
            counts = records.dropna(subset=[column]).groupby(cell)[column].nunique()
            if (counts > 1).any():
                raise ValueError(f"records of one seed differ in {column} at {list(counts[counts > 1].index)[:3]}: "
                                 f"the methods compared there do not share their subset or initial weights")


def mechanism_cells(part: pd.DataFrame, dataset: str, per_classes, cell) -> None:
    """The mechanism claim's comparisons, act+jac against act at every per_class, seed by seed: 100 x the cosine
    of input gradients (label's output), and for each noise sigma -100 x the log of the noisy-input distillation
    error (so the difference is about the percentage by which Jacobian matching lowers it); margins of 1."""
    import numpy as np

    measures = [("mech_grad_cos_label", "gradient cosine x100", lambda v: 100 * v)]
    measures += [(c, f"noisy error at sigma {c.rsplit('_', 1)[1]}, -100 log", lambda v: -100 * np.log(v))
                 for c in part.columns if c.startswith("mech_noisy_error_")]

    def by_seed(method, pc, column, transform):
        rows = part[(part["method"] == method) & (part["per_class"] == pc)].dropna(subset=[column])
        return transform(rows.groupby("seed")[column].mean())

    for pc in per_classes:
        for column, what, transform in measures:
            cell("mechanism", f"{dataset}, per_class {pc}", "act+jac", f"act ({what})",
                 by_seed("act+jac", pc, column, transform), by_seed("act", pc, column, transform), "greater")


def forest_plot(cells: pd.DataFrame, title: str = ""):
    """Each paired comparison's mean difference (points) with its confidence interval, one row per cell, the
    mechanism's comparisons (other units) in a panel of their own; bars mark +-margin, colour the verdict."""
    import matplotlib.pyplot as plt

    rows = cells[cells["kind"].notna() & (cells["n"] >= 1)] if len(cells) and "kind" in cells else pd.DataFrame()
    groups = [(name, part) for name, part in (
        ("accuracy points", rows[rows["claim"] != "mechanism"] if len(rows) else rows),
        ("mechanism: x100 cosine, or -100 log of the noisy error", rows[rows["claim"] == "mechanism"]
         if len(rows) else rows)) if len(part)] or [("", rows)]
    heights = [max(len(part), 1) for _, part in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 0.3 * sum(heights) + 1.2 * len(groups)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    colours = {"supported": "C2", "contradicted": "C3", "equivalent": "C0", "not resolved": "0.5"}
    for ax, (label, part) in zip(axes[:, 0], groups):
        for i, (_, c) in enumerate(part.iterrows()):
            err = [[c["diff"] - c["ci_low"]], [c["ci_high"] - c["diff"]]] if c["n"] >= 2 else None
            ax.errorbar(c["diff"], i, xerr=err, fmt="o", color=colours.get(c["verdict"], "k"), capsize=3)
            ax.plot([-c["margin"], c["margin"]], [i, i], ls="none", marker="|", color="0.6")
        ax.set_yticks(range(len(part)), [f"{c['where']}: {c['comparison']}" if c["claim"] == "mechanism" else
                                         f"{c['claim']}: {c['where']}, {c['comparison']}"
                                         for _, c in part.iterrows()], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(f"paired difference, {label} (CI; | marks the margin)", fontsize=8)
    for verdict, colour in colours.items():
        axes[0, 0].plot([], [], "o", color=colour, label=verdict)
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0, 0].set_title(title)
    fig.tight_layout()
    return fig


def markdown(table: pd.DataFrame, index: bool = True) -> str:
    """A DataFrame as a GitHub markdown table (multi-level columns joined with a space), for the README."""
    df = table.reset_index() if index else table
    names = [" ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c) for c in df.columns]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)
