"""The paper's three experiments, one module each, registered by name.

Each module exposes ``plan(**parameters)``: its positional arguments are exactly its notebook's ``parameters``
cell, with the same defaults (a test checks it), so notebook 03/04/05 and the batch reproduction build the same
plan from the same values without executing notebook code. What the batch and the report need from a plan is
:class:`Plan`.

=============  ============================  =========================================
name           notebook                      module
=============  ============================  =========================================
distill        03_distill (Tables 1-2)       :mod:`jkt.experiments.distill`
robustness     04_robustness (Table 3)       :mod:`jkt.experiments.robustness`
transfer       05_transfer (poster table)    :mod:`jkt.experiments.transfer`
=============  ============================  =========================================
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from . import distill, robustness, transfer

EXPERIMENTS = {"distill": distill, "robustness": robustness, "transfer": transfer}
NOTEBOOKS = {"distill": "03_distill.ipynb", "robustness": "04_robustness.ipynb", "transfer": "05_transfer.ipynb"}


@runtime_checkable
class Plan(Protocol):
    """What the batch and the report use of a validated plan."""
    profile: object        # the jkt.profiles.Profile it was made for

    def pending(self) -> list:
        """The runs without a finished record (empty: the job is done)."""

    def prepare_teacher(self) -> dict:
        """Train or load what the runs share (the teacher), so that parallel jobs never train it twice."""

    def run(self):
        """Every pending run, each writing its record; returns :meth:`records`."""

    def records(self):
        """The plan's finished runs as a DataFrame."""

    def table(self):
        """The plan's table, as its notebook shows it."""

    def describe(self) -> str:
        """One paragraph: what the plan will run, on what, and how much is left."""


def plan(experiment: str, **parameters) -> Plan:
    """``EXPERIMENTS[experiment].plan(**parameters)``, with a ValueError naming the experiments for an unknown one."""
    from ..validate import check_choice

    check_choice("experiment", experiment, EXPERIMENTS)
    return EXPERIMENTS[experiment].plan(**parameters)
