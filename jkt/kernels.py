"""The project's Jupyter kernels: one IPython config file in the Python environment that drops ipykernel's
start-up warning "Kernel is running over TCP without encryption" from every kernel of that environment
(papermill's, nbval's, JupyterLab's, the batch's).

Why silence it: papermill, nbval and JupyterLab start their kernels on loopback with an HMAC-signed connection
file readable by the user only; the warning is about other users of a shared machine reading the traffic,
and it is printed on every papermill call, above the output a user came for. Only that message is dropped
(a logging filter on the kernel application's logger); every other kernel message stays. ``make setup``
installs the file; with conda, run ``python -c "import jkt.kernels; jkt.kernels.install()"`` once.
"""
from __future__ import annotations

import sys
from pathlib import Path

MARKER = "# jkt: drop ipykernel's TCP-without-encryption warning"
CONFIG = f'''{MARKER} (written by jkt.kernels.install)
import logging


class _NoPlainTcpWarning(logging.Filter):
    def filter(self, record):
        return "running over TCP without encryption" not in record.getMessage()


logging.getLogger("IPKernelApp").addFilter(_NoPlainTcpWarning())
'''


def config_path(prefix=None) -> Path:
    """``<prefix>/etc/ipython/ipython_kernel_config.py``: IPython reads it for every kernel of that environment."""
    return Path(prefix or sys.prefix) / "etc" / "ipython" / "ipython_kernel_config.py"


def install(prefix=None) -> Path:
    """Write the config file (idempotent). A config file of someone else's is left alone: FileExistsError."""
    from .store import atomic_write_text

    path = config_path(prefix)
    if path.exists() and MARKER not in path.read_text():
        raise FileExistsError(f"{path} exists and is not jkt's; add jkt.kernels.CONFIG to it by hand")
    return atomic_write_text(path, CONFIG)
