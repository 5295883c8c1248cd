"""What a grid of notebooks needs and cannot make here (datasets, pretrained weights; teachers the grid trains
are not needs), checked once before any job starts: ``python -m jkt reproduce`` stops with one message listing
each missing thing and how to get it, and ``--list`` marks the jobs that could not run."""
from __future__ import annotations

from . import profiles
from .data import require
from .models import require_pretrained


def job_needs(job) -> set[tuple[str, str]]:
    """``{(kind, name)}`` that ``job``'s notebook needs and cannot train here: datasets (``"dataset"``) and
    pretrained weights (``"weights"``). Teachers that the grid trains itself are not needs."""
    p = profiles.get(job.parameters.get("profile", "cpu"))
    if job.experiment == "taylor":
        return {("dataset", "digits")}
    if job.experiment == "transfer":
        setting = job.parameters.get("setting", "offline")
        recipe = p.transfer_recipe(setting)
        needs = {("dataset", job.parameters.get("dataset") or recipe.dataset)}
        return needs | ({("weights", recipe.teacher_arch)} if setting == "paper" else set())
    return {("dataset", job.parameters.get("dataset") or p.dataset)}


class MissingResources(FileNotFoundError):
    """What a grid needs is not on this machine; the message lists each missing thing and how to get it."""


def missing_resources(jobs: list) -> dict[tuple[str, str], str]:
    """``{(kind, name): why and how to get it}`` for every need of ``jobs`` (job_needs) missing on this machine."""
    missing = {}
    for kind, name in sorted(set().union(*(job_needs(j) for j in jobs))):
        try:
            (require if kind == "dataset" else require_pretrained)(name)
        except FileNotFoundError as e:
            missing[(kind, name)] = str(e)
    return missing


def check_resources(jobs: list) -> None:
    """Raise MissingResources listing every missing need of ``jobs`` with its remedy (nothing is written)."""
    missing = missing_resources(jobs)
    if missing:
        blocked = sum(bool(job_needs(j) & set(missing)) for j in jobs)
        items = "\n".join(f"* {kind} {name}:\n  " + text.replace("\n", "\n  ") for (kind, name), text in missing.items())
        raise MissingResources(f"{len(missing)} thing(s) that {blocked} of the {len(jobs)} notebooks need are not on "
                               f"this machine; nothing was run or written. Get them, then run the same command "
                               f"again (or leave those parts out with --only):\n{items}")
