"""The batch reproduction's grid: which notebooks run with which parameters (jobs), where they write, and what
each job's notebook will run (the experiment's registered plan, from the job's parameters). jkt.batch runs them.

Figures: grid jobs write theirs under ``<out>/<profile>/<experiment>/figures/``; the report and the figure
jobs write to the committed ``figures/`` when the batch writes to the default ``runs/`` in a profile other
than smoke (else to ``<out>/<profile>/figures``), each name carrying its profile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from . import profiles
from .experiments import EXPERIMENTS
from .experiments import NOTEBOOKS as EXPERIMENT_NOTEBOOKS
from .plots import COMMITTED as COMMITTED_FIGURES
from .store import REPO
from .validate import check_choices, check_positive_int

PARTS = (*EXPERIMENTS, "curves", "figures")  # what --only chooses from
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = {"taylor": "01_taylor_equivalence.ipynb", "jacobians": "02_jacobians.ipynb", **EXPERIMENT_NOTEBOOKS,
             "report": "06_reproduce.ipynb"}
# Table 3 is the paper's penalty only; the figure job of notebook 04 runs its three routes on seed 0.
ROBUSTNESS_ROUTES = ("penalty",)


def default_out() -> Path:
    """``<repo>/runs``: executed notebooks go to ``<out>/<profile>/<experiment>/``."""
    return REPO / "runs"


# ---------------------------------------------------------------------------------------------------
# Jobs and the grid

@dataclass(frozen=True)
class Job:
    """One notebook execution: ``notebook`` run with ``parameters`` (the rest are the notebook's defaults)
    into ``output``. Jobs of one ``group`` share a cached teacher (made once, before any of them starts)."""
    experiment: str
    name: str
    notebook: str
    parameters: dict
    output: str
    group: str | None = None
    figures: str | None = None   # JKT_FIGURES of the job (None: inherited)

    @property
    def failed_output(self) -> Path:
        out = Path(self.output)
        return out.with_name(out.stem + ".failed.ipynb")

    def describe(self) -> str:
        return f"{self.experiment}/{self.name}"


def curve_jobs(p: profiles.Profile, per_class) -> list[tuple[int, list]]:
    """The learning curves' extra runs at ``per_class``: ``(steps, methods)`` for each factor of ``p.curves`` times
    each curve method's own steps (the factor 1 is the grid's run)."""
    from .losses import preset

    runs = {}
    for method in p.curves.get("methods", ()):
        base = p.steps_for(per_class, preset(method).first_order)
        for f in p.curves.get("factors", ()):
            if base and f != 1:
                runs.setdefault(max(1, round(base * f)), []).append(method)
    return sorted(runs.items())


def _largest_first(per_classes) -> list:
    return sorted(per_classes, key=lambda pc: math.inf if pc == "full" else float(pc), reverse=True)


def _slug(value) -> str:
    return str(value).replace(":", "_").replace("/", "_")


def figures_out(profile: str, out=None) -> Path:
    """Where the report and the figure jobs put their figures: the committed ``figures/`` for a reproduction into
    the default ``runs/`` in a profile other than smoke, else ``<out>/<profile>/figures``."""
    default = out is None or Path(out).resolve() == default_out().resolve()
    if default and profile != "smoke":
        return COMMITTED_FIGURES
    return Path(out or default_out()).resolve() / profile / "figures"


def plan(profile: str = "cpu", only=None, seeds=None, out=None, device: str = "auto") -> list[Job]:
    """The paper's grid for ``profile`` as jobs, one per (dataset or setting, per_class or seed):

    * distill (Tables 1-2): every dataset of the profile x its ``per_class_grid`` x its seeds at that size, one
      job per seed with the profile's methods at that size (``Profile.methods_for``, ``Profile.seeds_for``);
    * curves: the learning curves that check the students' steps (``Profile.curves``, :func:`curve_jobs`);
    * robustness (Table 3): one job per seed, the notebook's strengths x sigmas (the paper's), the penalty route;
    * transfer (the poster's table): one job per per_class size and seed, the six rows;
    * figures: notebooks 01 and 02, and 04 with its three routes on seed 0 (the figures the README cites).

    ``only``: a list of parts (default all); ``seeds``: an int N for seeds 0..N-1 everywhere (default the
    profile's, per per_class for distill).
    Nothing is run or written here.
    """
    p = profiles.get(profile)
    if only is not None and "curves" in only and not p.curves:
        raise ValueError(f"only={list(only)!r}: the {p.name} profile has no learning curves (Profile.curves)")
    only = list(PARTS) if only is None else check_choices("only", list(only), PARTS)
    seeds = None if seeds is None else list(range(check_positive_int("seeds", seeds)))
    root = Path(out or default_out()).resolve() / p.name  # absolute: a Dask worker has its own working folder
    jobs = []

    def job(experiment, name, parameters, group=None, figures=None):
        folder = root / experiment
        on = {} if experiment == "taylor" else {"device": device}  # notebook 01's float64 MLPs run on the CPU
        jobs.append(Job(experiment, name, str(NOTEBOOK_DIR / NOTEBOOKS[experiment]),
                        {"profile": p.name, **parameters, **on}, str(folder / f"{name}.ipynb"),
                        group, str(figures or folder / "figures" / name)))

    if "distill" in only:
        for dataset in p.datasets:
            for per_class in _largest_first(p.per_class_grid[dataset]):  # the longest jobs first: better packing
                cell = list(seeds if seeds is not None else p.seeds_for(per_class))
                k = p.seeds_per_job.get(per_class, 1)
                for chunk in (cell[i:i + k] for i in range(0, len(cell), k)):
                    name = f"seed{chunk[0]}" + (f"-{chunk[-1]}" if len(chunk) > 1 else "")
                    job("distill", f"{_slug(dataset)}-per_class{per_class}-{name}",
                        {"dataset": dataset, "per_class": per_class, "seeds": chunk,
                         "methods": list(p.methods_for(per_class))}, group=f"distill/{dataset}")
    if "curves" in only and p.curves:
        for dataset in p.datasets:
            for per_class in _largest_first(p.per_class_grid[dataset]):
                for steps, methods in reversed(curve_jobs(p, per_class)):
                    job("distill", f"{_slug(dataset)}-per_class{per_class}-steps{steps}",
                        {"dataset": dataset, "per_class": per_class, "seeds": list(p.curves["seeds"]),
                         "methods": methods, "steps": steps}, group=f"distill/{dataset}")
    if "robustness" in only:
        for s in seeds if seeds is not None else p.seeds:
            job("robustness", f"{_slug(p.dataset)}-seed{s}", {"seeds": [s], "routes": list(ROBUSTNESS_ROUTES)})
    if "figures" in only:
        figures = figures_out(p.name, out)
        job("taylor", "01_taylor_equivalence", {"widgets": False}, figures=figures)  # see notebook 01
        job("jacobians", "02_jacobians", {}, group=f"distill/{p.dataset}", figures=figures)
        job("robustness", f"{_slug(p.dataset)}-routes-seed0", {"seeds": [0]}, figures=figures)
    if "transfer" in only:
        setting, grid = p.transfer_grid
        for per_class in grid or (p.transfer_recipe(setting).per_class,):
            for s in seeds if seeds is not None else p.seeds:
                job("transfer", f"{setting}-per_class{per_class}-seed{s}",
                    {"setting": setting, "per_class": per_class, "seeds": [s]}, group=f"transfer/{setting}")
    names = [j.output for j in jobs]
    assert len(set(names)) == len(names), "two jobs would write the same notebook"
    return jobs


def report_job(profile: str, out=None) -> Job:
    """Notebook 06 over every record of ``profile``: ``<out>/<profile>/06_reproduce.ipynb``."""
    p = profiles.get(profile)
    return Job("report", "06_reproduce", str(NOTEBOOK_DIR / NOTEBOOKS["report"]), {"profile": p.name},
               str(Path(out or default_out()).resolve() / p.name / "06_reproduce.ipynb"),
               figures=str(figures_out(p.name, out)))


# ---------------------------------------------------------------------------------------------------
# What a job's notebook will run: the experiment's registered plan, made from the job's parameters

def job_plan(job: Job):
    """The plan that ``job``'s notebook makes: ``jkt.experiments.plan(experiment, **parameters)`` (the notebooks
    call it with their parameters cell, whose names and defaults a test keeps equal to the plan's)."""
    from .experiments import plan as make_plan

    return make_plan(job.experiment, **job.parameters, progress=False)


def pending_runs(job: Job) -> int:
    """How many runs of ``job`` have no record yet (0 for a figure notebook, which keeps no records)."""
    return len(job_plan(job).pending()) if job.experiment in EXPERIMENTS else 0
