"""jkt: knowledge transfer with Jacobian matching (Srinivas & Fleuret, ICML 2018), taught and reproduced.

Submodules load on first use, so ``import jkt`` is cheap and ``jkt.plots.save(...)`` just works.
"""
import importlib

__version__ = "0.1.0"
__all__ = ["data", "models", "batchnorm", "jacobian", "losses", "taylor", "jacobian_checks", "taylor_plots",
           "timing", "train", "teachers", "lwf", "transfer_loss", "kernels", "store", "profiles", "experiments",
           "paper", "records", "report", "stats", "curves", "plots", "validate", "batch", "batching", "resources", "workers", "bench", "bench_run"]


# The library's entry points for your own code, importable as ``jkt.NAME``.
EXPORTS = {"JacobianMatching": "transfer_loss", "BatchNorm2d": "batchnorm", "use_fast_batchnorm": "batchnorm"}


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    if name in EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jkt' has no attribute {name!r}")
