"""Run records and checkpoints: atomic writes, safe loads, config hashes.

A record is one JSON file per run, named by a hash of the run's full config, written to a temporary
file and renamed, so a crash (even kill -9) leaves either the old state or the new one, never half a file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
_UMASK = os.umask(0)
os.umask(_UMASK)


def results_root(root=None) -> Path:
    """Where records go: ``root``, else ``$JKT_RESULTS``, else ``<repo>/results``."""
    return Path(root or os.environ.get("JKT_RESULTS") or REPO / "results")


def config_hash(config: dict) -> str:
    """A stable 16-hex-digit hash of a JSON-able config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; records are shared like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- run records -------------------------------------------------------------------------------

def record_path(config: dict, root=None) -> Path:
    return results_root(root) / f"{config_hash(config)}.json"


def save_record(config: dict, metrics: dict, root=None) -> Path:
    """Write ``{"key", "config", "metrics"}`` atomically to ``<root>/<hash of config>.json``."""
    record = {"key": config_hash(config), "config": config, "metrics": metrics}
    return atomic_write_text(record_path(config, root), json.dumps(record, indent=1, sort_keys=True, default=str))


def load_record(config: dict, root=None) -> dict | None:
    """The record of this exact config, or None if the run has not finished (an unreadable file is reported and ignored)."""
    path = record_path(config, root)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        warnings.warn(f"ignoring unreadable record {path} ({e}); the run will be redone")
        return None
    return record if record.get("key") == config_hash(config) else None


class UnreadableRecord(ValueError):
    """A file in the records folder that is not a readable record."""


def load_records(root=None, **where):
    """All records under ``root`` as a pandas DataFrame, one row per run: config columns, then metrics columns
    prefixed by nothing (a metric named like a config key gets ``metric_``). ``where`` filters on config values.
    A file that is not a readable record raises UnreadableRecord naming it (a table must not silently lose runs)."""
    import pandas as pd

    rows = []
    for path in sorted(results_root(root).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            config, metrics = record["config"], record["metrics"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise UnreadableRecord(f"{path} is not a jkt record ({type(e).__name__}: {e}); move it out of "
                                   f"{path.parent} or delete it (its run will be redone)") from None
        if any(config.get(k) != v for k, v in where.items()):
            continue
        row = {"key": record.get("key")}
        row.update({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in config.items()})
        for k, v in metrics.items():
            row[f"metric_{k}" if k in row else k] = v
        rows.append(row)
    return pd.DataFrame(rows)


# ---- checkpoints -----------------------------------------------------------------------------------

class CorruptCheckpoint(RuntimeError):
    """A checkpoint whose bytes do not match its recorded sha256, or that cannot be read."""


def save_checkpoint(path, state_dict: dict, meta: dict) -> Path:
    """Save a state dict atomically, with a sidecar ``<path>.json`` holding ``meta`` and the file's sha256."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    sidecar = dict(meta, sha256=hashlib.sha256(data).hexdigest(), file=path.name)
    atomic_write_text(path.with_suffix(path.suffix + ".json"), json.dumps(sidecar, indent=1, sort_keys=True, default=str))
    return path


def load_checkpoint(path, map_location="cpu") -> tuple[dict, dict]:
    """``(state_dict, meta)``; raises CorruptCheckpoint if the sha256 does not match or the file cannot be read.
    Loads with ``weights_only=True``: a checkpoint cannot run code."""
    path = Path(path)
    sidecar = path.with_suffix(path.suffix + ".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptCheckpoint(f"{sidecar}: missing or unreadable ({e})") from e
    if not path.exists():
        raise CorruptCheckpoint(f"{path} is missing (its sidecar {sidecar.name} exists)")
    digest = sha256_file(path)
    if digest != meta.get("sha256"):
        raise CorruptCheckpoint(f"{path}: sha256 {digest[:12]}... does not match the recorded {str(meta.get('sha256'))[:12]}...")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # any read failure means the file is unusable
        raise CorruptCheckpoint(f"{path}: cannot be loaded ({e})") from e
    return state, meta
