"""Figures: one helper saves each figure under figures/ with a stable name (and the notebook shows it)."""
from __future__ import annotations

import os
from pathlib import Path

from .store import REPO


def figures_dir() -> Path:
    """``$JKT_FIGURES`` or ``<repo>/figures``."""
    return Path(os.environ.get("JKT_FIGURES") or REPO / "figures")


def save(fig, name: str, formats=("png",), dpi: int = 120) -> list[Path]:
    """Save ``fig`` as ``figures/<name>.<format>`` (written to a temporary name, then renamed)."""
    folder = figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        path = folder / f"{name}.{ext}"
        tmp = folder / f".{name}.{os.getpid()}.tmp.{ext}"
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
        paths.append(path)
    return paths
