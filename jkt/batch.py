"""The batch reproduction: the paper's grid (jkt.grid) as papermill jobs, run on an Executor, resumable, then the
report.

A *job* is one execution of a notebook with the grid's parameters: an experiment notebook (03 distillation,
04 robustness, 05 transfer), or a notebook that makes committed figures (01, 02, and 04 with its three routes), written to ``<out>/<profile>/<experiment>/<name>.ipynb`` (through a temporary name,
renamed when it succeeds; ``<name>.failed.ipynb`` when it fails), so every number can be traced to the
notebook that made it. Jobs are independent and go to a ``concurrent.futures.Executor``: a local process
pool (one worker per GPU when there are GPUs, each pinned to its own), or a Dask cluster
(``Client(address).get_executor()``), with the same code path. Notebook 06 tabulates the records at the end.

Resumable: a job is skipped when its executed notebook exists *and* every record its plan expects exists.
The batch learns what a job runs from the experiment's registered ``plan`` (jkt.experiments), called with
the job's parameters exactly as the notebook calls it. The notebooks write each run's record atomically
(jkt.store), so a job killed at any moment simply reruns and loads its finished runs; records are keyed by
their config, so nothing is ever duplicated.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path

from . import profiles
from .data import shared_loads
from .experiments import EXPERIMENTS
from .grid import Job, default_out, job_plan, pending_runs, plan, report_job
from .resources import check_resources
from .store import REPO
from .validate import check_positive_int
from .workers import DaskPool, LocalPool, default_workers, gpu_ids, threads_per_job

STATUS_EVERY = 30.0  # seconds between status lines when the progress goes to a log, not a terminal
KERNEL_ENV_DROP = ("JKT_PROFILE",)  # the batch passes the profile explicitly; CI's override must not leak in

# ---------------------------------------------------------------------------------------------------
# Running one job (in a worker process, or a Dask worker thread)

@contextlib.contextmanager
def _environment(env: dict):
    """Set (value) or remove (None) environment variables for the duration; the kernel inherits them."""
    saved = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker_threads() -> int:
    """Torch threads of a job: ``$JKT_WORKER_THREADS`` (set by the local pool), else cores // jobs per Dask worker."""
    if os.environ.get("JKT_WORKER_THREADS"):
        return int(os.environ["JKT_WORKER_THREADS"])
    try:
        from distributed import get_worker

        per_worker = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        per_worker = 1
    return threads_per_job(per_worker)


def _error_text(error: BaseException) -> str:
    """One line: the notebook's exception (name: value) or the Python error."""
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."


def run_job(job: Job, env: dict | None = None, check: bool = True) -> dict:
    """Execute ``job`` unless it is finished; returns ``{"status": "done"|"skipped"|"failed", ...}`` (never raises).

    The notebook runs under a temporary name next to its output and is renamed only when every cell ran:
    an output notebook exists only for a job that succeeded. A failed one is kept as ``<name>.failed.ipynb``.
    """
    start = time.perf_counter()
    out = Path(job.output)
    result = {"job": job.describe(), "name": job.name, "experiment": job.experiment, "notebook": str(out),
              "error": None, "pending": None, "host": os.uname().nodename, "pid": os.getpid()}
    threads = _worker_threads()
    env = {**(env or {}), **{k: None for k in KERNEL_ENV_DROP}, "JKT_PROGRESS": "0",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if job.figures:
        env["JKT_FIGURES"] = job.figures
    with _environment(env):
        if check and job.experiment != "report" and out.exists():
            import torch

            before = torch.get_num_threads()
            try:
                torch.set_num_threads(threads)
                result["pending"] = pending_runs(job)
            except Exception as e:  # the notebook will report it properly
                result["check_error"] = _error_text(e)
            finally:
                torch.set_num_threads(before)  # a Dask worker thread shares its process with others
            if result["pending"] == 0:
                return dict(result, status="skipped", seconds=time.perf_counter() - start)
        result.update(_execute(job, out))
    return dict(result, seconds=time.perf_counter() - start)


def prepare_teacher(job: Job, env: dict | None = None) -> dict:
    """Train (or load) the cached teacher that ``job``'s notebook will use, by the notebook's own plan
    (``plan.teacher()``), so that the jobs sharing it can then run in parallel. Never raises."""
    start = time.perf_counter()
    threads = _worker_threads()
    env = {**(env or {}), **{k: None for k in KERNEL_ENV_DROP}, "JKT_PROGRESS": "0"}
    with _environment(env):
        import torch

        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            meta = job_plan(job).prepare_teacher() if job.experiment in EXPERIMENTS else {"cached": True}
            result = {"status": "done", "cached": bool(meta.get("cached")), "error": None}
        except Exception as e:  # reported; the notebooks will meet it again and say where
            result = {"status": "failed", "error": _error_text(e)}
        finally:
            torch.set_num_threads(before)
    return dict(result, job=f"teacher of {job.group}", seconds=time.perf_counter() - start)


def _execute(job: Job, out: Path) -> dict:
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:8]}.tmp.ipynb")
    try:
        papermill.execute_notebook(job.notebook, str(tmp), parameters=dict(job.parameters), progress_bar=False,
                                   log_output=False, cwd=str(Path(job.notebook).parent))
    except BaseException as e:  # any failure is this job's, reported with its notebook
        failed = job.failed_output
        if tmp.exists():
            os.replace(tmp, failed)
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"status": "failed", "error": _error_text(e),
                "notebook": str(failed) if failed.exists() else None, "cell": getattr(e, "exec_count", None)}
    os.replace(tmp, out)
    job.failed_output.unlink(missing_ok=True)
    return {"status": "done"}


# ---------------------------------------------------------------------------------------------------
# Execution of a job list: throttled submission, teacher groups, progress, failures

@dataclass
class Summary:
    results: list = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.results)

    @property
    def failed(self) -> list:
        return [r for r in self.results if r["status"] == "failed"]

    @property
    def ran(self) -> int:
        return self.count("done") + self.count("failed")

    def line(self) -> str:
        return (f"{len(self.results)} notebooks: {self.count('done')} ran, {self.count('skipped')} already finished, "
                f"{self.count('failed')} failed ({self.seconds / 60:.1f} min)")


def _fmt_minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _job_env() -> dict:
    """What every job's kernel must see of the driver's environment (a Dask worker does not inherit it)."""
    return {k: str(Path(os.environ[k]).resolve()) for k in ("JKT_RESULTS", "JKT_DATA", "TORCH_HOME")
            if os.environ.get(k)}


def finished(jobs: list[Job]) -> tuple[list[dict], list[Job]]:
    """``(results of the finished jobs, the other jobs)``: a job is finished when its executed notebook exists
    and its plan has no pending run (checked here, in this process, loading each dataset once)."""
    done, todo = [], []
    with shared_loads():
        for job in jobs:
            start = time.perf_counter()
            try:
                pending = pending_runs(job) if job.experiment != "report" and Path(job.output).exists() else None
            except Exception:  # the job will run and its notebook will say what is wrong
                pending = None
            if pending == 0:
                done.append({"job": job.describe(), "name": job.name, "experiment": job.experiment,
                             "notebook": job.output, "status": "skipped", "error": None, "pending": 0,
                             "seconds": time.perf_counter() - start})
            else:
                todo.append(job)
    return done, todo


def execute(jobs: list[Job], pool, progress: bool = True, desc: str = "reproduce", log=None,
            check_here: bool = False) -> Summary:
    """Run ``jobs`` on ``pool`` (LocalPool or DaskPool), at most ``pool.capacity`` at a time; one failure never
    stops the others. Jobs of one teacher group wait until a first task has made (or loaded) their teacher,
    so that parallel workers never train the same teacher twice. Finished jobs are skipped: checked in this
    process with ``check_here`` (a local pool: no worker starts when nothing is left), else by the workers
    (a cluster: they have the data). Returns the Summary."""
    from .train import progress_enabled

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    summary, start = Summary(), time.perf_counter()
    if check_here:
        summary.results, jobs_left = finished(jobs)
    else:
        jobs_left = list(jobs)
    queue, running, started = list(jobs_left), {}, {}
    members = {}
    for job in jobs_left:
        if job.group is not None:
            members.setdefault(job.group, []).append(job)
    ready = {g for g, js in members.items() if len(js) < 2}  # a lone job makes its own teacher
    preparing = set()
    durations = []
    env = _job_env()
    bar, last_status = None, time.perf_counter()
    on_terminal = sys.stderr.isatty()  # in a log: one line per finished job and a status line every 30 s
    if progress_enabled(progress) and jobs and on_terminal:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), initial=len(summary.results), desc=desc, unit="nb", dynamic_ncols=True,
                   bar_format="{desc}: {n_fmt}/{total_fmt} notebooks |{bar}| [{elapsed}{postfix}]")
        say = bar.write
    else:
        say = log

    def eta() -> str:
        if not durations:
            return "?"
        mean = sum(durations) / len(durations)
        now = time.perf_counter()
        left = len(queue) * mean + sum(max(0.0, mean - (now - started[f])) for f, (kind, _) in running.items()
                                       if kind == "job")
        return _fmt_minutes(left / max(1, pool.capacity))

    def refresh():
        nonlocal last_status
        busy = sum(kind == "job" for kind, _ in running.values())
        status = f"running {busy}, failed {summary.count('failed')}, skipped {summary.count('skipped')}, left ~{eta()}"
        if bar is not None:
            bar.set_postfix_str(status, refresh=True)
        elif progress_enabled(progress) and time.perf_counter() - last_status >= STATUS_EVERY:
            last_status = time.perf_counter()
            say(f"[{_fmt_minutes(last_status - start)}] {len(summary.results)}/{len(jobs)} notebooks; {status}")

    def next_task():
        for job in queue:
            if job.group is None or job.group in ready:
                queue.remove(job)
                return "job", job, pool.executor.submit(run_job, job, env, not check_here)
            if job.group not in preparing:
                preparing.add(job.group)
                return "teacher", job, pool.executor.submit(prepare_teacher, job, env)
        return None

    try:
        while queue or running:
            while len(running) < pool.capacity:
                task = next_task()
                if task is None:
                    break
                kind, job, future = task
                running[future] = (kind, job)
                started[future] = time.perf_counter()
            refresh()
            done, _ = wait(list(running), timeout=2.0, return_when=FIRST_COMPLETED)
            for future in done:
                kind, job = running.pop(future)
                try:
                    result = future.result()
                except BaseException as e:  # the worker itself died (OOM, killed): a failure
                    result = {"job": job.describe(), "name": job.name, "experiment": job.experiment,
                              "status": "failed", "notebook": None, "error": f"worker lost: {_error_text(e)}",
                              "seconds": time.perf_counter() - started[future]}
                if kind == "teacher":
                    ready.add(job.group)
                    if result["status"] == "failed":
                        say(f"teacher of {job.group} could not be prepared ({result['error']}); its notebooks "
                            f"will try and report it")
                    elif not result.get("cached"):
                        say(f"teacher of {job.group} trained in {_fmt_minutes(result['seconds'])}")
                    continue
                summary.results.append(result)
                if result["status"] != "skipped":
                    durations.append(result["seconds"])
                if result["status"] == "failed":
                    where = result.get("notebook") or f"(no notebook written; expected {job.output})"
                    say(f"FAILED {job.describe()}: {result['error']}\n       notebook: {where}")
                elif result["status"] == "done":
                    say(f"done   {job.describe()} in {_fmt_minutes(result['seconds'])}: {result['notebook']}")
                if bar is not None:
                    bar.update(1)
            if any(_broken(pool, f) for f in done):
                pool.restart()
    finally:
        if bar is not None:
            refresh()
            bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _broken(pool, future) -> bool:
    from concurrent.futures.process import BrokenProcessPool

    return isinstance(pool, LocalPool) and isinstance(future.exception(), BrokenProcessPool)


# ---------------------------------------------------------------------------------------------------
# The command: plan, lock, run the grid, then the report

class BatchBusy(RuntimeError):
    """Another batch holds the output folder's lock."""


@contextlib.contextmanager
def _lock(folder: Path):
    """One batch per output folder at a time (the lock dies with its process, even on kill -9)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchBusy(f"another `python -m jkt reproduce` is running on {folder} (it holds {path}); "
                               f"wait for it to finish or give another --out") from None
        f.write(f"{os.uname().nodename} {os.getpid()}\n")
        f.flush()
        yield


def report_sources(report: Job) -> list[Path]:
    """What the report is made from besides the records: its notebook and the jkt package's code."""
    return [Path(report.notebook), *sorted(Path(__file__).resolve().parent.rglob("*.py"))]


def report_stale(report: Job, results=None, sources=None) -> str | None:
    """Why ``report``'s executed notebook must be made again (None: it is up to date): it is missing, or a record
    (under ``results``) or one of ``sources`` (default :func:`report_sources`: after a ``git pull``, say) is newer."""
    from .store import results_root

    out = Path(report.output)
    if not out.exists():
        return "no report yet"
    made = out.stat().st_mtime
    root = results_root(results)
    if root.exists() and any(p.stat().st_mtime > made for p in root.glob("*.json")):
        return "records newer than the report"
    changed = [p for p in (report_sources(report) if sources is None else sources) if p.stat().st_mtime > made]
    if changed:
        shown = ", ".join(str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in changed[:3])
        return f"changed since the report: {shown}{' ...' if len(changed) > 3 else ''}"
    return None


def reproduce(profile: str = "cpu", only=None, seeds=None, workers=None, scheduler=None, out=None, results=None,
              device: str = "auto", report: bool = True, progress: bool = True, jobs=None, log=None):
    """Plan the grid, run every unfinished job on a local pool (``workers``) or the Dask ``scheduler``, then
    notebook 06 when anything changed. Returns ``(Summary of the grid, the report's result or None)``.

    ``results`` (default ``$JKT_RESULTS`` or results/): where the notebooks write records; ``jobs``: run these
    instead of the planned grid (tests). From a script, call it under ``if __name__ == "__main__":`` (the local
    pool's worker processes re-import the main script).
    """
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        raise RuntimeError("jkt.batch.reproduce() was called while a worker process imported your script: call "
                           "it under `if __name__ == \"__main__\":` (worker processes re-import the main script)")
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    p = profiles.get(profile)
    if workers is not None:
        check_positive_int("workers", workers)
    jobs = plan(p.name, only, seeds, out, device) if jobs is None else list(jobs)
    check_resources(jobs)
    root = Path(out or default_out()).resolve() / p.name
    if os.environ.get("JKT_PROFILE") not in (None, "", p.name):
        log(f"note: JKT_PROFILE={os.environ['JKT_PROFILE']} is ignored by the batch: it runs --profile {p.name}")
    env = {"JKT_RESULTS": str(Path(results).resolve())} if results is not None else {}
    with _environment(env), _lock(root):
        for stale in root.rglob(".*.tmp.ipynb"):  # notebooks of a killed batch (we hold the lock: none is ours)
            stale.unlink(missing_ok=True)
        if scheduler is None:
            gpus = gpu_ids()
            workers = workers or default_workers(gpus)
            pool = LocalPool(workers, gpus, threads_per_job(workers), log=root / "workers.log")
        else:
            if workers is not None:
                log(f"note: --workers {workers} is ignored with --scheduler: the cluster's worker threads run the jobs")
            pool = DaskPool(scheduler)
        interrupted = True
        try:
            kinds = dict.fromkeys(j.experiment for j in jobs)
            counts = ", ".join(f"{sum(j.experiment == e for j in jobs)} {e}" for e in kinds)
            log(f"reproduce --profile {p.name}: {len(jobs)} notebooks ({counts or 'none'}) on {pool.describe}; "
                f"executed notebooks in {root}")
            summary = execute(jobs, pool, progress, desc=f"{p.name} grid", log=log, check_here=scheduler is None)
            report_result = None
            if report:
                rep = report_job(p.name, out)
                why = "new results of this run" if summary.ran > 0 else report_stale(rep, results)
                if why:
                    log(f"report: making notebook 06 ({why})")
                    report_result = execute([rep], pool, progress=False, log=log).results[0]
                else:
                    report_result = {"job": rep.describe(), "status": "skipped", "notebook": rep.output,
                                     "error": None, "seconds": 0.0}
            interrupted = False
        finally:
            pool.close(cancel=interrupted)  # Ctrl-C: do not wait for the running notebooks
    log(summary.line())
    for r in summary.failed:
        log(f"  failed: {r['job']}: {r['error']}\n          notebook: {r.get('notebook') or 'not written'}")
    if report_result is not None:
        if report_result["status"] == "failed":
            log(f"report FAILED: {report_result['error']}\n          notebook: {report_result.get('notebook')}")
        else:
            log(f"report: {report_result['notebook']}"
                + (" (up to date)" if report_result["status"] == "skipped" else ""))
    return summary, report_result
