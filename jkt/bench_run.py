"""Where a student run's seconds go: one complete run of the cpu profile, timed in parts, for this checkout
and (optionally) a baseline commit checked out in a git worktree, round-robin in one benchmark.

A run is what notebook 03 does for one (method, seed) of a per_class size: draw the subset and build the
student (set-up), compute the teacher's outputs and input gradients on the subset (teacher targets), train
for the profile's number of steps (training), and evaluate on the 10,000 test images (evaluation). The
teacher is an untrained VGG-9 of the profile's width (the same cost as a trained one). The part that kernels
and papermill add per notebook (start-up, imports, loading the dataset) is not in a run.

Each side runs in its own Python process (``sys.path`` pointing at its tree), executing the source of
:func:`student_run_parts`, which uses only functions that every version of jkt since the performance work has:
the two sides run the same code over different jkt implementations.
"""
from __future__ import annotations

import inspect
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from .store import REPO
from .validate import check_positive_int

PARTS = ("setup", "teacher_targets", "training", "evaluation", "mechanism")
BASELINE_STEPS = 200  # the cpu profile's student steps when the performance work started (aedec5d)


def student_run_parts(per_class: int, method: str = "act+jac+ce", seed: int = 0, cache: dict | None = None,
                      steps: int | None = None) -> dict:
    """Seconds of each part of one cpu-profile student run (see the module docstring), and its test accuracy.
    ``steps``: that many optimisation steps at the profile's batch size (the same work on every side), else the
    profile's own steps. The mechanism metrics (jkt.mechanism, where this jkt has them: 0 s elsewhere) use a
    reference made once."""
    import math
    import time

    import torch

    from jkt import data as jdata
    from jkt import models, profiles, teachers, train
    from jkt.losses import preset

    cache = {} if cache is None else cache
    p = profiles.get("cpu")
    if "data" not in cache:
        cache["data"] = jdata.load(p.dataset)
        torch.manual_seed(12345)
        cache["teacher"] = models.build(p.teacher_arch, cache["data"].in_channels, cache["data"].num_classes,
                                        p.teacher_width).eval()
        if hasattr(p, "mechanism"):
            from jkt import mechanism

            m = p.mechanism
            cache["mechanism"] = mechanism.reference(cache["teacher"], cache["data"], cache["data"].test, m["images"],
                                                     m["sigmas"], m["draws"], device="cpu")
    data, teacher = cache["data"], cache["teacher"]
    objective = preset(method)
    t0 = time.perf_counter()
    split = jdata.subset(data.train, per_class, seed)
    train.seed_everything(seed)
    student = models.build(p.student_arch, data.in_channels, data.num_classes, p.student_width)
    t1 = time.perf_counter()
    targets = teachers.teacher_targets(teacher, data, split, objective.jacobian_output,
                                       with_gradients=objective.gamma > 0, device="cpu")
    t2 = time.perf_counter()
    if steps is not None:  # jkt.profiles.epochs_for's rule, written out: a baseline tree may not have it
        epochs = max(1, math.ceil(steps / math.ceil(len(split) / p.batch_size)))
    elif hasattr(p, "steps_for"):
        epochs = p.student_epochs_for(len(split), per_class=per_class, first_order=objective.first_order)
    else:  # a baseline before per-size steps
        epochs = p.student_epochs_for(len(split))
    train.fit(student, data, split, objective, epochs, p.batch_size, seed=seed,
              lr=p.lr, anneal_at=p.anneal_at, device="cpu", teacher_targets=targets, progress=False)
    t3 = time.perf_counter()
    acc = train.accuracy(student, data, data.test, device="cpu")
    t4 = time.perf_counter()
    if "mechanism" in cache:
        from jkt import mechanism

        mechanism.metrics(student, cache["mechanism"])
    t5 = time.perf_counter()
    return {"setup": t1 - t0, "teacher_targets": t2 - t1, "training": t3 - t2, "evaluation": t4 - t3,
            "mechanism": t5 - t4, "test_accuracy": acc}


_DRIVER = """
import json, sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
import jkt
assert jkt.__file__.startswith({root!r}), jkt.__file__
{source}
cache = {{}}
student_run_parts({warm}, {method!r}, 0, cache, {steps!r})  # warm-up: dataset, teacher, first-call costs
out = {{str(pc): student_run_parts(pc, {method!r}, 0, cache, {steps!r}) for pc in {per_class!r}}}
strays = [m.__file__ for n, m in sys.modules.items() if n.startswith("jkt") and not m.__file__.startswith({root!r})]
assert not strays, f"modules of another jkt were imported: {{strays}}"
print("JKT-BENCH-RESULT " + json.dumps(out))
"""


def _side(root: Path, per_class, method: str, threads: int, steps: int | None) -> dict:
    code = _DRIVER.format(root=str(root), threads=threads, source=inspect.getsource(student_run_parts),
                          warm=min(per_class), method=method, per_class=list(per_class), steps=steps)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(root))
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("JKT-BENCH-RESULT ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"the student run in {root} failed:\n{done.stderr[-2000:]}")
    return json.loads(line[len("JKT-BENCH-RESULT "):])


def baseline_tree(rev: str) -> Path:
    """A git worktree of ``rev`` under ``<repo>/runs/bench-baseline/<rev>`` (made once, reused)."""
    folder = REPO / "runs" / "bench-baseline" / rev.replace("/", "_")
    if not (folder / "jkt" / "__init__.py").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(folder), rev],
                       check=True, capture_output=True, text=True)
    return folder


def compare(per_class=(1, 5, 10, 50), method: str = "act+jac+ce", repeats: int = 3, baseline: str | None = None,
            threads: int = 1, steps: int | None = BASELINE_STEPS, progress=None) -> dict:
    """Median seconds of each part per per_class size, for this tree and (``baseline``: a git revision) the
    baseline's, run round-robin (``repeats`` rounds of: baseline side, this side), and runs per hour.
    ``steps`` optimisation steps per run on both sides (None: each side's profile, which may differ)."""
    check_positive_int("repeats", repeats)
    if steps is not None:
        check_positive_int("steps", steps)
    sides = {"this": REPO}
    if baseline:
        sides = {"baseline": baseline_tree(baseline), **sides}
    from .bench import host

    machine = {**host(), "torch_threads": threads}  # when it started; the threads each side ran with
    rounds = {name: [] for name in sides}
    for r in range(repeats):
        for name, root in sides.items():
            rounds[name].append(_side(root, per_class, method, threads, steps))
            if progress:
                progress(f"whole runs: round {r + 1}/{repeats}, {name} done")
    out = {"host": machine, "method": method, "threads": threads, "repeats": repeats, "baseline": baseline,
           "steps": steps, "sides": {}}
    for name, results in rounds.items():
        rows = {}
        for pc in per_class:
            parts = {part: statistics.median(res[str(pc)][part] for res in results) for part in PARTS}
            total = statistics.median(sum(res[str(pc)][part] for part in PARTS) for res in results)
            rows[str(pc)] = {**parts, "total": total, "runs_per_hour": 3600 / total,
                             "test_accuracy": results[0][str(pc)]["test_accuracy"]}
        out["sides"][name] = rows
    return out


def table(result: dict) -> str:
    """The readable table of a :func:`compare` result: parts in seconds, runs per hour, and the speed-up."""
    steps = result.get("steps")
    lines = [f"whole student runs (cpu profile, {result['method']}, "
             f"{f'{steps} steps' if steps else 'the profile steps'}, {result['threads']} thread(s), median of "
             f"{result['repeats']} round-robin rounds): seconds per part"]
    head = f"  {'side':9s} {'per_class':>9s} " + " ".join(f"{p:>15s}" for p in PARTS) + f" {'total':>7s} {'runs/h':>7s}"
    lines.append(head)
    for name, rows in result["sides"].items():
        for pc, row in rows.items():
            lines.append(f"  {name:9s} {pc:>9s} " + " ".join(f"{row[p]:15.2f}" for p in PARTS)
                         + f" {row['total']:7.2f} {row['runs_per_hour']:7.0f}")
    if "baseline" in result["sides"]:
        lines.append("  runs per hour, this / baseline: " + ", ".join(
            f"per_class {pc} {result['sides']['this'][pc]['runs_per_hour'] / row['runs_per_hour']:.2f}x"
            for pc, row in result["sides"]["baseline"].items()))
    return "\n".join(lines)


def plot(result: dict):
    """Seconds of each part of a run, one stacked bar per side and per_class size, runs per hour at the end."""
    from .bench import pyplot

    plt = pyplot()
    sides = list(result["sides"])
    sizes = list(result["sides"][sides[-1]])
    labels, rows = [], []
    for pc in sizes:
        for side in sides:
            labels.append(f"per_class {pc}, {side}")
            rows.append(result["sides"][side][pc])
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.6))
    left = [0.0] * len(rows)
    for part in PARTS:
        widths = [r[part] for r in rows]
        ax.barh(range(len(rows)), widths, left=left, label=part.replace("_", " "))
        left = [a + b for a, b in zip(left, widths)]
    for i, r in enumerate(rows):
        ax.text(left[i], i, f"  {r['runs_per_hour']:.0f} runs/h", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.25 * max(left))
    ax.set_xlabel("seconds per student run (median)")
    h, steps = result.get("host", {}), result.get("steps")
    ax.set_title(f"python -m jkt bench --runs: {result['method']}, "
                 f"{f'{steps} steps' if steps else 'profile steps'}, {result['threads']} thread(s), "
                 f"baseline {result.get('baseline') or '-'}; {h.get('processor', '?')} x{h.get('cpu_count', '?')}, "
                 f"{h.get('date', '')[:10]}", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)  # the short per_class 1 bars leave it free
    fig.tight_layout()
    return fig
