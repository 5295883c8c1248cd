"""The records of one profile, as the report (notebook 06) reads them: only those its current recipe made
(their identity: experiment, profile, recipe hash, dataset), and only the notebooks' default configuration at
each grid cell (the experiment's registered plan decides which keys that is)."""
from __future__ import annotations

from . import profiles
from .data import shared_loads
from .experiments import EXPERIMENTS
from .experiments import plan as make_plan
from .store import config_hash, load_records


def _py(value):
    return value.item() if hasattr(value, "item") else value


def _default_keys(experiment: str, records, profile: str, results=None, by_epochs: bool = False) -> set:
    """The keys among ``records`` that the experiment's notebook makes with its default options at the records'
    grid coordinates (a record of any other configuration is a variant, left out of the paper's tables).
    ``by_epochs``: also at the records' own epochs (the learning curves' runs, default options otherwise)."""
    cells = ["dataset", "per_class"] + (["setting"] if experiment == "transfer" else []) + \
        (["epochs"] if by_epochs else [])
    keys = set()
    for values, rows in records.groupby(cells, sort=False):
        parameters = {k: _py(v) for k, v in zip(cells, values)}
        plan = make_plan(experiment, profile=profile, results=results, progress=False, **parameters)
        keys |= {config_hash(plan.run_config(m, int(s))) for m, s in zip(rows["method"], rows["seed"])}
    return keys


def _robustness_curves(records, profile: str, results=None):
    """Table 3's measurements (route, strength, seed, sigma, draw, accuracy) of the networks that notebook 04
    trains with its default options for ``profile``, for every seed found among the records."""
    import pandas as pd

    frames = []
    for dataset, rows in records.groupby("dataset", sort=False):
        plan = make_plan("robustness", profile=profile, dataset=dataset, results=results, progress=False,
                         seeds=sorted({int(s) for s in rows["seed"]}))
        curves = plan.curves()
        if len(curves):
            frames.append(curves.assign(dataset=dataset))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def profile_records(profile: str, results=None, experiments=tuple(EXPERIMENTS)) -> tuple[dict, list]:
    """``({experiment: DataFrame}, notes)`` for the records that ``profile``'s current recipe made (their identity,
    jkt.experiments.common.identity: profile name and recipe hash), in the notebooks' default configuration:
    distill and transfer one row per run; robustness one row per network, sigma and noise draw; ``curves``: the
    distillation runs of the default options at any number of steps (the grid's and the learning curves'). ``notes`` says
    which records were left out and why. An unreadable record, or a dataset missing here, is an error."""
    import pandas as pd

    p = profiles.get(profile)
    tables, notes = {}, []
    with shared_loads():
        for experiment in experiments:
            everything = load_records(results, kind=experiment, profile=p.name)
            df = everything[everything["recipe"] == p.recipe_hash()] if len(everything) else everything
            if len(df) < len(everything):
                notes.append(f"{experiment}: {len(everything) - len(df)} record(s) of an earlier {p.name} recipe "
                             f"are left out")
            if len(df) and experiment == "robustness":
                df = _robustness_curves(df, p.name, results)
            elif len(df):
                mask = df["key"].isin(_default_keys(experiment, df, p.name, results))
                known = mask
                if experiment == "distill":  # the learning curves: default options at other numbers of steps
                    known = df["key"].isin(_default_keys(experiment, df, p.name, results, by_epochs=True))
                    tables["curves"] = df[known].reset_index(drop=True)
                if (~known).any():
                    notes.append(f"{experiment}: {int((~known).sum())} record(s) made with non-default options "
                                 f"(e.g. from a notebook run by hand) are left out")
                df = df[mask].reset_index(drop=True)
            tables[experiment] = df if len(df) else pd.DataFrame()
    tables.setdefault("curves", pd.DataFrame())
    return tables, notes
