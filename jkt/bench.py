"""``python -m jkt bench``: what each way of matching Jacobians costs, as a multiple of one cross-entropy step.

Every case is one real optimisation step (jkt.train.training_step: the objective's terms, backward,
Adam) of the VGG-4 student on one fixed batch, with the VGG-9 teacher either cached (its logits, input
gradients or full Jacobians computed once, as jkt.teachers.teacher_targets does for training) or run
online. The cases are timed round-robin (one step of each per round, ``repeats`` rounds after
``warmup`` rounds), so a burst of load from elsewhere hits every case alike; the table reports medians.
"""
from __future__ import annotations

import copy
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from . import models
from .jacobian import full_jacobian, output_and_input_gradient
from .losses import Objective
from .timing import sync
from .train import resolve_device, training_step
from .validate import check_choices, check_positive_int


# name -> (objective, teacher: "cached" or "online", student path: "fast" or "plain", what it is)
CASES = {
    "ce": (dict(alpha=1.0), "cached", "fast", "cross-entropy step (the unit)"),
    "act": (dict(alpha=1.0, beta=1.0), "cached", "fast", "activation matching + CE"),
    "jac/online": (dict(alpha=1.0, gamma=1.0), "online", "fast",
                   "Jacobian matching (one output) + CE, teacher run every step"),
    "jac/cached": (dict(alpha=1.0, gamma=1.0), "cached", "fast",
                   "Jacobian matching (one output) + CE, teacher cached (jkt's path)"),
    "jac/cached/plain": (dict(alpha=1.0, gamma=1.0), "cached", "plain",
                         "the same, straightforward: PyTorch's BatchNorm and layout, backward into the input too"),
    "full/loop": (dict(alpha=1.0, gamma=1.0, jacobian_output="all", projections=0), "cached", "fast",
                  "full Jacobian (all K outputs) + CE: loop over outputs"),
    "full/batched": (dict(alpha=1.0, gamma=1.0, jacobian_output="all"), "cached", "fast",
                     "full Jacobian + CE: one vmapped pass (is_grads_batched)"),
    "full/projection": (dict(alpha=1.0, gamma=1.0, jacobian_output="all", projections=1), "cached", "fast",
                        "full Jacobian + CE: 1 random projection (unbiased estimate)"),
    "noisy/1": (dict(alpha=1.0, noisy=1.0, samples=1), "online", "fast",
                "Monte-Carlo noisy-input distillation + CE, 1 sample (teacher online)"),
    "noisy/4": (dict(alpha=1.0, noisy=1.0, samples=4), "online", "fast",
                "Monte-Carlo noisy-input distillation + CE, 4 samples (teacher online)"),
}
WIDTHS = {"cpu": None, "full": (1.0, 1.0)}  # "cpu": the cpu profile's (student, teacher) widths


@dataclass
class Setup:
    """One benchmark configuration: the networks' widths and the batch."""
    width: str
    student_width: float
    teacher_width: float
    batch_size: int = 128
    image_size: int = 32
    channels: int = 3
    num_classes: int = 10


def widths(name: str) -> tuple[float, float]:
    if name == "cpu":
        from .profiles import get

        p = get("cpu")
        return p.student_width, p.teacher_width
    return WIDTHS[name]


class _Case:
    """One case's own student copy, optimizer and inputs: a zero-argument ``step()``."""

    def __init__(self, name, student_fast, student_plain, teacher, x, y, cache, device, seed):
        options, self.teacher_mode, path, self.label = CASES[name]
        full = options.get("jacobian_output") == "all"
        self.batched_full = name == "full/batched"
        self.objective = Objective(**options)
        # jkt's path trains in channels-last memory format, as jkt.train.fit does; the plain path in PyTorch's default
        layout = torch.channels_last if path == "fast" else torch.contiguous_format
        self.student = copy.deepcopy(student_fast if path == "fast" else student_plain).train().to(memory_format=layout)
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=1e-3)
        self.params = list(self.student.parameters()) if path == "fast" else None
        self.teacher, self.x, self.y, self.device = teacher, x.contiguous(memory_format=layout), y, device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.targets = (cache["logits"], cache["jacobian"] if full else cache["grad"], y)

    def step(self):
        if self.batched_full:
            return self._batched_full_step()
        targets = self.targets
        if self.teacher_mode == "online" and self.objective.gamma > 0:
            logits, grad, index = output_and_input_gradient(self.teacher, self.x, self.y)
            targets = (logits, grad, index)
        teacher = self.teacher if self.objective.noisy > 0 else None
        training_step(self.student, self.optimizer, self.objective, self.x, self.y, targets, teacher,
                      self.generator, self.params)

    def _batched_full_step(self):
        from .jacobian import full_jacobian_matching
        from .losses import cross_entropy

        logits, d = full_jacobian_matching(self.student, self.x, self.targets[1], "batched")
        loss = cross_entropy(logits, self.y) + d.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=self.params)
        self.optimizer.step()


def run(width: str = "cpu", cases=None, batch_size: int = 128, image_size: int = 32, channels: int = 3,
        repeats: int = 5, warmup: int = 1, device="auto", seed: int = 0, progress=None) -> dict:
    """Time ``cases`` (default all of CASES) at one ``width`` ("cpu" or "full"); returns a JSON-able dict with
    the median milliseconds of each case, its multiple of the "ce" case, and every raw timing."""
    cases = check_choices("cases", list(cases or CASES), CASES)
    if "ce" not in cases:
        cases = ["ce"] + cases
    check_positive_int("repeats", repeats)
    device = resolve_device(device)
    sw, tw = widths(width)
    setup = Setup(width, sw, tw, batch_size, image_size, channels)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student = models.build("vgg4", channels, setup.num_classes, sw).to(device)
    plain = models.build("vgg4", channels, setup.num_classes, sw, fast_batchnorm=False).to(device)
    plain.load_state_dict(student.state_dict())
    teacher = models.build("vgg9", channels, setup.num_classes, tw).to(device).eval()
    x = torch.randn(batch_size, channels, image_size, image_size, generator=gen).to(device)
    y = torch.randint(0, setup.num_classes, (batch_size,), generator=gen).to(device)
    output_and_input_gradient(teacher, x, y)  # warm-up
    sync(device)
    start = time.perf_counter()
    logits, grad, _ = output_and_input_gradient(teacher, x, y)
    sync(device)
    teacher_ms = 1000 * (time.perf_counter() - start)
    cache = {"logits": logits, "grad": grad, "jacobian": None}
    if any(CASES[c][0].get("jacobian_output") == "all" for c in cases):
        cache["jacobian"] = full_jacobian(teacher, x)
    runners = {c: _Case(c, student, plain, teacher, x, y, cache, device, seed) for c in cases}
    times = {c: [] for c in cases}
    errors = {}
    for r in range(warmup + repeats):
        for c, runner in runners.items():
            if c in errors:
                continue
            try:
                sync(device)
                t0 = time.perf_counter()
                runner.step()
                sync(device)
                if r >= warmup:
                    times[c].append(1000 * (time.perf_counter() - t0))
            except RuntimeError as e:  # a case this torch cannot run is reported, not fatal
                errors[c] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if progress:
            progress(f"{width}: round {r + 1}/{warmup + repeats}" + (" (warm-up)" if r < warmup else ""))
    ce = statistics.median(times["ce"])
    rows = []
    for c in cases:
        row = {"case": c, "what": CASES[c][3]}
        if c in errors:
            row.update(error=errors[c])
        else:
            med = statistics.median(times[c])
            row.update(ms=med, x_ce=med / ce, ms_min=min(times[c]), ms_max=max(times[c]), ms_all=times[c])
        rows.append(row)
    return {"setup": vars(setup), "teacher_targets_ms_once": teacher_ms, "rows": rows}


def seed_stacking(seeds: int = 3, width: str = "cpu", batch_size: int = 128, image_size: int = 32,
                  channels: int = 3, repeats: int = 5, device="auto", progress=None) -> dict:
    """Training ``seeds`` students of one configuration together (torch.func: stack_module_state, then vmap
    of the per-seed gradient; Adam on the stacked weights is Adam per seed) against one after another.

    torch.func cannot update BatchNorm's running statistics inside the input-gradient vjp that Jacobian
    matching needs, so both sides here use BatchNorm without running statistics (same cost per step):
    a measurement of the batching, not a training path. Returns the median ms per round of ``seeds``
    steps for each side and objective, and the speed-up (sequential / stacked)."""
    import torch.nn.functional as F
    from torch.func import functional_call, grad, stack_module_state, vjp, vmap

    check_positive_int("seeds", seeds)
    device = resolve_device(device)
    sw, _ = widths(width)
    nets = []
    for s in range(seeds):
        torch.manual_seed(s)
        net = models.build("vgg4", channels, 10, sw, fast_batchnorm=False).to(device).train()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.track_running_stats, m.running_mean, m.running_var, m.num_batches_tracked = False, None, None, None
        nets.append(net)
    base = copy.deepcopy(nets[0]).to("meta")
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(seeds, batch_size, channels, image_size, image_size, generator=gen).to(device)
    ys = torch.randint(0, 10, (seeds, batch_size), generator=gen).to(device)
    targets = 0.01 * torch.randn(xs.shape, generator=gen).to(device)
    out = {"seeds": seeds, "width": width, "batch_size": batch_size, "image_size": image_size}
    for name, options in (("ce", dict(alpha=1.0)), ("jac", dict(alpha=1.0, gamma=1.0))):
        objective = Objective(**options)

        def loss(params, x, y, t):
            logits, pull = vjp(lambda xx: functional_call(base, params, (xx,)), x)
            loss = F.cross_entropy(logits, y)
            if objective.gamma > 0:
                (g,) = pull((y[:, None] == torch.arange(10, device=y.device)).to(logits.dtype))
                loss = loss + (g - t).flatten(1).pow(2).sum(1).mean()
            return loss

        stacked_params = {k: v.detach().requires_grad_(True) for k, v in stack_module_state(nets)[0].items()}
        stacked_opt = torch.optim.Adam(stacked_params.values(), lr=1e-3)
        per_seed_grad = vmap(grad(loss))
        opts = [torch.optim.Adam(n.parameters(), lr=1e-3) for n in nets]

        def stacked():
            grads = per_seed_grad(stacked_params, xs, ys, targets)
            for k, v in stacked_params.items():
                v.grad = grads[k]
            stacked_opt.step()

        def sequential():
            for i, n in enumerate(nets):
                training_step(n, opts[i], objective, xs[i], ys[i], (ys[i][:, None] * 0.0, targets[i], ys[i]),
                              params=list(n.parameters()))

        times = {"sequential": [], "stacked": []}
        for r in range(1 + repeats):
            for side, fn in (("sequential", sequential), ("stacked", stacked)):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                if r:
                    times[side].append(1000 * (time.perf_counter() - t0))
            if progress:
                progress(f"seeds x{seeds} {name}: round {r + 1}/{1 + repeats}")
        seq, stk = statistics.median(times["sequential"]), statistics.median(times["stacked"])
        out[name] = {"sequential_ms": seq, "stacked_ms": stk, "speedup": seq / stk}
    return out


def host() -> dict:
    import os

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def table(result: dict) -> str:
    """The readable table of a :func:`benchmark` result."""
    lines = []
    h = result["host"]
    lines.append(f"jkt bench: {h['processor']} x{h['cpu_count']}, torch {h['torch']}, {h['torch_threads']} thread(s)"
                 f"{', ' + h['cuda'] if h['cuda'] else ''}, device {result['device']}, "
                 f"median of {result['repeats']} rounds after {result['warmup']} warm-up")
    for w in result["widths"]:
        s = w["setup"]
        lines.append(f"\nVGG-4 student (width {s['student_width']:g}) / VGG-9 teacher (width {s['teacher_width']:g}), "
                     f"batch {s['batch_size']}, {s['channels']}x{s['image_size']}x{s['image_size']}: "
                     f"[{s['width']}]")
        lines.append(f"  {'case':18s} {'ms':>9s} {'x CE':>6s}  what")
        for row in w["rows"]:
            if "error" in row:
                lines.append(f"  {row['case']:18s} {'-':>9s} {'-':>6s}  {row['what']}: {row['error']}")
            else:
                lines.append(f"  {row['case']:18s} {row['ms']:9.1f} {row['x_ce']:6.2f}  {row['what']}")
        lines.append(f"  (teacher outputs + input gradients for the batch, computed once when cached: "
                     f"{w['teacher_targets_ms_once']:.1f} ms)")
        st = w.get("seed_stacking")
        if st:
            lines.append(f"  {st['seeds']} seeds trained together (torch.func vmap) vs one after another, ms per "
                         f"round of {st['seeds']} steps (BatchNorm without running statistics on both sides):")
            for name in ("ce", "jac"):
                r = st[name]
                lines.append(f"    {name:4s} sequential {r['sequential_ms']:8.1f}  stacked {r['stacked_ms']:8.1f}  "
                             f"speed-up {r['speedup']:.2f}x")
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot, on the Agg backend unless a notebook's backend is already chosen."""
    import matplotlib

    if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget", "ipympl")):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(result: dict):
    """Each case's multiple of a CE step, one bar group per width (log scale; the line marks 1x)."""
    plt = pyplot()
    widths_ = result["widths"]
    cases = [r["case"] for r in widths_[0]["rows"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(cases) + 1.2))
    height = 0.8 / len(widths_)
    for i, w in enumerate(widths_):
        rows = {r["case"]: r for r in w["rows"]}
        ys = [j + i * height for j in range(len(cases))]
        xs = [rows[c].get("x_ce", float("nan")) for c in cases]
        s = w["setup"]
        bars = ax.barh(ys, xs, height, label=f"{s['width']} widths (student {s['student_width']:g}, "
                                               f"teacher {s['teacher_width']:g}), batch {s['batch_size']}")
        ax.bar_label(bars, labels=[f"{x:.2f}" for x in xs], padding=2, fontsize=8)
    ax.set_yticks([j + height * (len(widths_) - 1) / 2 for j in range(len(cases))], cases)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 3, 5, 10, 20, 50, 100, 200) if t <= 1.5 * max(
        r.get("x_ce", 1.0) for w in widths_ for r in w["rows"])]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.axvline(1.0, color="k", lw=0.8)
    h = result["host"]
    ax.set_xlabel("time of one training step / time of one cross-entropy step (log scale)")
    ax.set_title(f"python -m jkt bench: {h['processor']} x{h['cpu_count']}, "
                 f"{h['torch_threads']} thread(s), {result['device']}, {h['date'][:10]}", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)  # beside the short CE bars
    fig.tight_layout()
    return fig


def benchmark(widths_=("cpu", "full"), cases=None, batch_sizes=(128,), image_size: int = 32, channels: int = 3,
              repeats: int = 5, warmup: int = 1, device="auto", seeds: int = 3, progress=None) -> dict:
    """:func:`run` and (``seeds`` >= 2) :func:`seed_stacking` at each width and batch size, with the host
    recorded. The low-data cells of the grid train on batches of 10 to 100 (per_class 1 to 10 of 10 classes)."""
    check_choices("widths", list(widths_), WIDTHS)
    batch_sizes = [check_positive_int("batch size", b) for b in ([batch_sizes] if isinstance(batch_sizes, int)
                                                                  else batch_sizes)]
    out = {"host": host(), "device": str(resolve_device(device)), "repeats": repeats, "warmup": warmup,
           "widths": []}
    for w in widths_:
        for b in batch_sizes:
            result = run(w, cases, b, image_size, channels, repeats, warmup, device, progress=progress)
            if seeds >= 2:
                result["seed_stacking"] = seed_stacking(seeds, w, b, image_size, channels, repeats, device, progress)
            out["widths"].append(result)
    return out


def main(args) -> int:
    from . import bench_run

    if args.load:
        result = json.loads(open(args.load).read())
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if not args.quiet else None
        if args.runs:
            result = bench_run.compare(args.per_class, repeats=args.repeats, baseline=args.baseline,
                                       threads=args.threads or 1, steps=args.run_steps or None, progress=say)
        else:
            result = benchmark(args.widths, args.cases, args.batch_size, args.image_size, args.channels,
                               args.repeats, args.warmup, args.device, args.seeds, progress=say)
    runs = "sides" in result  # a --runs result (whole student runs), else single steps
    text = bench_run.table(result) if runs else table(result)
    if args.out:  # the measurement first: a figure that fails must not lose it
        from .store import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=1))
        print(text)
        print(f"\nJSON written to {args.out}")
    elif runs:
        print(text)
    else:
        print(text, file=sys.stderr)
        print(json.dumps(result, indent=1))
    if args.figure:
        from .plots import write

        fig = bench_run.plot(result) if runs else plot(result)
        print(f"figure written to {write(fig, args.figure)}", file=sys.stderr)
    return 0
