"""Wall-clock timing that survives asynchronous GPUs and millisecond operations (``python -m jkt bench``,
notebook 02's cost table)."""
from __future__ import annotations

import math
import statistics
import time

import torch

from .validate import check_positive_int


def sync(device=None) -> None:
    """Wait for queued GPU work (timings of asynchronous CUDA calls are meaningless without it)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def time_call(fn, repeats: int = 5, warmup: int = 1, min_seconds: float = 0.02) -> float:
    """Median wall time of one ``fn()`` call in seconds, over ``repeats`` measurements after ``warmup``
    untimed calls. A measurement times enough back-to-back calls to last ``min_seconds`` (as ``timeit``
    does), so that millisecond operations are not lost in the timer's and the scheduler's noise."""
    check_positive_int("repeats", repeats)
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = time.perf_counter() - start
    number = max(1, math.ceil(min_seconds / max(once, 1e-9)))
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)
