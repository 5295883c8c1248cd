"""Figures: one helper saves each figure under a stable name that says which profile made it.

Where: ``$JKT_FIGURES`` when set, else ``<repo>/runs/figures`` (git-ignored). Only the reproduction
(``python -m jkt reproduce``) points ``JKT_FIGURES`` at the committed ``figures/`` folder, so a notebook run by
hand, ``pytest --nbval`` or a smoke run never overwrites a committed figure, and the profile in every name
keeps one profile's figures from replacing another's.
"""
from __future__ import annotations

import os
from pathlib import Path

from .profiles import PROFILES
from .store import REPO
from .validate import check_choice

COMMITTED = REPO / "figures"


def figures_dir() -> Path:
    """``$JKT_FIGURES``, else ``<repo>/runs/figures``."""
    return Path(os.environ.get("JKT_FIGURES") or REPO / "runs" / "figures")


def write(fig, path, dpi: int = 120) -> Path:
    """Save ``fig`` at ``path`` (its suffix names the format) through a temporary name, then rename."""
    path = Path(path)
    if not path.suffix:
        raise ValueError(f"{path} has no suffix; name the format, e.g. {path}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def save(fig, name: str, profile: str, formats=("png",), dpi: int = 120) -> list[Path]:
    """Save ``fig`` as ``<figures_dir>/<name>_<profile>.<format>``."""
    check_choice("profile", profile, PROFILES)
    return [write(fig, figures_dir() / f"{name}_{profile}.{ext}", dpi) for ext in formats]
