"""What the three experiments share: the identity every record carries, the run loop over pending runs,
run metrics and host information, the records of a grid as a table, and option selection per method.

One of each, used by jkt.experiments.distill, .robustness and .transfer.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import time

import torch

from .. import data as jdata
from .. import store
from ..profiles import Profile
from ..train import peak_memory_mb, progress_bar, progress_enabled


def identity(experiment: str, profile: Profile, dataset: str) -> dict:
    """What made a record, first in every run config (and so in its key): the experiment, the profile's name,
    the hash of the profile's whole recipe, and the dataset. The report selects records by it, so records of
    another profile, or of an earlier recipe of the same profile, never mix into a table."""
    return {"kind": experiment, "profile": profile.name, "recipe": profile.recipe_hash(), "dataset": dataset}


def fingerprint(*tensors) -> str:
    """A short hash of the tensors' values: records carry the fingerprints of a run's training subset and of its
    student's initial weights, so the report can check that the methods it pairs within a seed share both."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_dataset(dataset, allowed=None) -> str:
    """A dataset name of jkt.data (or ``allowed``) or ``imagefolder:PATH``."""
    allowed = list(jdata.DATASETS) if allowed is None else list(allowed)
    folder = isinstance(dataset, str) and dataset.startswith("imagefolder:") and len(dataset) > len("imagefolder:")
    if not (folder or (isinstance(dataset, str) and dataset in allowed)):
        raise ValueError(f"dataset={dataset!r} is not allowed; choose one of {allowed} or 'imagefolder:PATH'")
    return dataset


def check_fits(name: str, per_class, split: jdata.Split) -> None:
    """``per_class`` images of every class exist in ``split`` (ValueError naming ``name`` and the range)."""
    try:
        jdata.subset_indices(split, per_class, 0)
    except ValueError as e:
        raise ValueError(f"{name}={per_class!r}: {e}") from None


def used_options(switches: dict, groups: dict) -> dict:
    """The options of every group whose switch is on in ``switches`` (a method's preset): an option that a
    method does not use never enters its objective, so it never changes the run's key and finished runs are reused."""
    options = {}
    for switch, group in groups.items():
        if switches.get(switch):
            options.update(group)
    return options


def host_info(device) -> dict:
    return {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None}


def run_metrics(history, start: float, n_train: int, device, **metrics) -> dict:
    """What every run records besides its accuracies: times, steps, loss curve, peak memory, host."""
    return {**metrics, "train_seconds": history.seconds, "seconds": time.perf_counter() - start,
            "steps": history.steps, "n_train": n_train, "final_loss": history.loss[-1] if history.loss else None,
            "final_terms": history.terms[-1] if history.terms else None, "loss_curve": history.loss,
            "peak_memory_mb": peak_memory_mb(device), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            **host_info(device)}


def run_pending(todo: list, run_one, progress: bool, desc: str, label) -> None:
    """``run_one(item)`` (which returns the run's metrics) for every pending item, under one progress bar showing
    ``label(item)``, and one plain line per finished run (what, test accuracy, seconds, runs left): a notebook
    executed by papermill shows its widget bars nowhere, but ``papermill --log-output`` prints these lines.
    ``progress=False`` or ``JKT_PROGRESS=0`` silences both. Each run writes its own record atomically, so an
    interrupted loop loses at most the run in progress."""
    bar = progress_bar(todo, progress, desc=desc)
    for done, item in enumerate(bar, 1):
        bar.set_postfix_str(label(item))
        start = time.perf_counter()
        metrics = run_one(item)
        if progress_enabled(progress):
            bar.write(f"{desc}: {label(item)}: test accuracy {metrics['test_accuracy']:.2f}%, "
                      f"{time.perf_counter() - start:.1f} s, {len(todo) - done} run(s) left", file=sys.stdout)


def records_frame(run_config, methods, seeds, results=None):
    """The finished runs of a (method x seed) grid as a DataFrame, one row per run (scalar metrics only)."""
    import pandas as pd

    rows = []
    for m in methods:
        for s in seeds:
            rec = store.load_record(run_config(m, s), results)
            if rec is not None:
                rows.append({"method": m, "seed": s, **{k: v for k, v in rec["metrics"].items()
                                                        if not isinstance(v, (list, dict))}, "key": rec["key"]})
    return pd.DataFrame(rows)


def pending_grid(run_config, methods, seeds, results=None) -> list[tuple[str, int]]:
    """The (method, seed) pairs of a grid without a record yet."""
    return [(m, s) for s in seeds for m in methods if store.load_record(run_config(m, s), results) is None]
