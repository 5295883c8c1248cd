"""Where the batch's jobs run: a local process pool (one worker per GPU, each pinned to its own, or one per core
with its share of the threads) or a Dask cluster, both as a ``concurrent.futures.Executor``."""
from __future__ import annotations

import os
import threading
import time


def threads_per_job(jobs_at_once: int) -> int:
    """cores // jobs running at once on this machine, and never more than ``$OMP_NUM_THREADS`` when it is set."""
    threads = max(1, available_cores() // max(1, jobs_at_once))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(threads, int(cap))) if cap.isdigit() else threads



def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_ids() -> list[str]:
    """The GPUs this process may use: ``$CUDA_VISIBLE_DEVICES`` when set, else every device torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable CUDA: no GPUs
        return []


def default_workers(gpus=None) -> int:
    """One worker per GPU; on CPUs one per core (small nets run best on one thread each), at most one per
    2 GB of available memory (a notebook kernel holds its dataset and nets)."""
    gpus = gpu_ids() if gpus is None else gpus
    if gpus:
        return len(gpus)
    workers = available_cores()
    try:
        import psutil

        workers = min(workers, max(1, psutil.virtual_memory().available // (2 * 2 ** 30)))
    except ImportError:
        pass
    return max(1, workers)


_SLOT = None


def worker_env(slot: int, gpus: list[str], threads: int) -> dict:
    """The environment of local worker number ``slot``: its own GPU (round robin when there are more workers
    than GPUs) and ``threads`` torch threads; the notebook kernels it starts inherit it."""
    env = {"JKT_WORKER_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def _init_worker(counter, gpus, threads, parent, log):
    """Local pool worker: take a slot, pin to its GPU, set threads, send the kernels' chatter to ``log``, and
    die with the parent (so a killed batch leaves no orphans: the kernels die with their worker)."""
    global _SLOT
    with counter.get_lock():
        _SLOT = counter.value
        counter.value += 1
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)  # the kernels inherit it: their warnings do not cover the progress bar
        os.close(fd)
    os.environ.update(worker_env(_SLOT, gpus, threads))

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="jkt-parent-watch").start()


class LocalPool:
    """A spawn-context ProcessPoolExecutor of ``workers`` processes, GPU-pinned when GPUs exist."""

    def __init__(self, workers: int, gpus: list[str], threads: int, log=None):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        self.capacity = workers
        self._make = lambda: ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                 initargs=(ctx.Value("i", 0), gpus, threads, os.getpid(),
                                                           None if log is None else str(log)))
        self.executor = self._make()
        self.describe = (f"{workers} local worker{'s' if workers > 1 else ''}, "
                         + (f"GPUs {','.join(gpus)}" if gpus else f"{threads} thread{'s' if threads > 1 else ''} each"))

    def restart(self):
        """A worker died (killed, out of memory): the pool is broken; start a fresh one for the remaining jobs."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._make()

    def close(self, cancel=False):
        self.executor.shutdown(wait=not cancel, cancel_futures=cancel)


class DaskPool:
    """``Client(scheduler).get_executor()``: the same Executor interface on a Dask cluster. Workers must see
    the same files (repository, data, results, ``--out``); GPU pinning is the cluster's (e.g. dask-cuda)."""

    def __init__(self, scheduler):
        from distributed import Client

        self.client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
        self.own_client = not isinstance(scheduler, Client)
        self.executor = self.client.get_executor(pure=False)
        self.capacity = max(1, sum(self.client.nthreads().values()))
        self.describe = f"Dask scheduler {self.client.scheduler.address}, {self.capacity} worker thread(s)"

    def close(self, cancel=False):
        self.executor.shutdown(wait=not cancel)
        if self.own_client:
            self.client.close()
