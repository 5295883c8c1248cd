"""Command line: ``python -m jkt reproduce|distill|data ...``.

    python -m jkt reproduce --profile cpu                     # the whole paper: notebooks 03-05 on the grid, then 06
    python -m jkt reproduce --profile paper --scheduler tcp://host:8786   # the same on a Dask cluster
    python -m jkt distill --profile cpu --per-class 10        # Tables 1-2 analog for one per-class size
    python -m jkt data fashion-mnist [--download]              # find (or fetch) a dataset and say where
    python -m jkt bench --out bench.json                       # cost of each Jacobian-matching path vs a CE step
"""
from __future__ import annotations

import argparse
import os
import sys


def _per_class(text: str):
    return "full" if text == "full" else int(text)


def cmd_distill(args) -> int:
    from .experiments import distill

    plan = distill.plan(args.profile, args.dataset, args.per_class, args.methods, args.seeds, args.epochs,
                        args.steps, args.batch_size, args.jacobian_output, args.jacobian_loss, device=args.device,
                        results=args.results)
    pending = plan.pending()
    print(f"profile={plan.profile.name} dataset={plan.dataset} per_class={plan.per_class} device={plan.device}: "
          f"{len(plan.methods) * len(plan.seeds)} runs, {len(pending)} to do", flush=True)
    records = plan.run()
    teacher = records["teacher_test_accuracy"].iloc[0] if len(records) else float("nan")
    table = plan.table(records)
    print(f"\nteacher {plan.profile.teacher_arch} test accuracy: {teacher:.2f}%")
    print(table.drop(columns=["mean", "std"]).to_string())
    return 0


def cmd_reproduce(args) -> int:
    from . import batch, grid, resources

    if args.list:
        jobs = grid.plan(args.profile, args.only, args.seeds, args.out, args.device)
        missing = resources.missing_resources(jobs)
        for job in jobs:
            lacks = sorted(f"{kind} {name}" for kind, name in resources.job_needs(job) & set(missing))
            mark = f"  CANNOT RUN HERE: missing {', '.join(lacks)}" if lacks else ""
            print(f"{job.describe():48s} {job.output}  {job.parameters}{mark}")
        print(f"{len(jobs)} notebooks, then {grid.report_job(args.profile, args.out).output}")
        if missing:
            print(f"{len(missing)} missing here: {', '.join(f'{k} {n}' for k, n in missing)} "
                  f"(python -m jkt reproduce says how to get each)")
        return 0
    try:
        summary, report = batch.reproduce(args.profile, args.only, args.seeds, args.workers, args.scheduler, args.out,
                                          args.results, args.device, report=not args.no_report)
    except batch.BatchBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; the same command resumes the grid", file=sys.stderr)
        return 130
    failed = bool(summary.failed) or (report is not None and report["status"] == "failed")
    return 1 if failed else 0


def cmd_data(args) -> int:
    from . import data

    ds = data.load(args.name, download=args.download)
    print(f"{ds.name}: {len(ds.train)} training and {len(ds.test)} test images, {ds.num_classes} classes, "
          f"{ds.in_channels}x{ds.image_size[0]}x{ds.image_size[1]}")
    return 0


def main(argv=None) -> int:
    from .bench import CASES
    from .bench import main as bench_main
    from .bench_run import BASELINE_STEPS

    parser = argparse.ArgumentParser(prog="python -m jkt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true",
                        help="no progress bars and no progress lines (the same as JKT_PROGRESS=0); results and "
                             "errors are still printed")

    d = sub.add_parser("distill", parents=[common], help="low-data distillation (Tables 1-2) for one per-class size")
    d.add_argument("--profile", default="cpu", help="smoke, cpu or paper (default cpu)")
    d.add_argument("--dataset", default=None, help="default: the profile's")
    d.add_argument("--per-class", type=_per_class, default=None, help="examples per class, or 'full'")
    d.add_argument("--methods", nargs="+", default=None, help="method presets (default: the six of Tables 1-2)")
    d.add_argument("--seeds", nargs="+", type=int, default=None)
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--steps", type=int, default=None, help="optimisation steps per student (default: the profile's)")
    d.add_argument("--batch-size", type=int, default=None)
    d.add_argument("--jacobian-output", default="target", help="target, top1 or all (full Jacobians, projections)")
    d.add_argument("--jacobian-loss", default=None, help="squared or normalized (default: the paper's)")
    d.add_argument("--device", default="auto")
    d.add_argument("--results", default=None, help="records folder (default results/ or $JKT_RESULTS)")
    d.set_defaults(func=cmd_distill)

    r = sub.add_parser("reproduce", parents=[common], help="the paper's grid: notebooks 03-05 through papermill, then report notebook 06",
                       description="Run every unfinished notebook of the grid (executed copies in OUT/PROFILE/), "
                                   "then notebooks/06_reproduce.ipynb. Resumable: run it again after any interruption. "
                                   "Exit code 1 when any notebook failed.")
    r.add_argument("--profile", default="cpu", help="smoke, cpu or paper (default cpu)")
    r.add_argument("--only", nargs="+", choices=["distill", "curves", "robustness", "transfer", "figures"],
                   default=None, help="run only these parts (default all; curves: the learning curves that check the "
                                      "students' steps; figures: notebooks 01, 02 and 04's three routes); the report "
                                      "still covers every record")
    r.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="seeds 0..N-1 everywhere (default: the profile's, per per_class for distillation)")
    r.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: one per GPU, else one per core within memory)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a Dask scheduler (tcp://host:8786): run the notebooks on its workers instead")
    r.add_argument("--out", default=None, metavar="DIR", help="executed notebooks go to DIR/PROFILE/ (default runs/)")
    r.add_argument("--results", default=None, metavar="DIR", help="records folder (default results/ or $JKT_RESULTS)")
    r.add_argument("--device", default="auto", help="passed to every notebook (default auto: the worker's GPU or CPU)")
    r.add_argument("--no-report", action="store_true", help="do not run notebook 06 at the end")
    r.add_argument("--list", action="store_true", help="print the planned notebooks and exit")
    r.set_defaults(func=cmd_reproduce)

    g = sub.add_parser("data", parents=[common], help="find a dataset offline (or download it) and describe it")
    g.add_argument("name")
    g.add_argument("--download", action="store_true", help="let torchvision download it if not found")
    g.set_defaults(func=cmd_data)

    b = sub.add_parser("bench", parents=[common], help="time every way of matching Jacobians as a multiple of one cross-entropy step",
                       description="One real training step of each case (VGG-4 student, VGG-9 teacher), timed "
                                   "round-robin; medians and multiples of the CE step. Table to the terminal, JSON "
                                   "to --out (or to stdout, with the table on stderr).")
    b.add_argument("--widths", nargs="+", default=["cpu", "full"], choices=["cpu", "full"],
                   help="cpu: the cpu profile's widths; full: the paper's (default both)")
    b.add_argument("--cases", nargs="+", default=None, metavar="CASE",
                   help="a subset of: " + ", ".join(CASES))
    b.add_argument("--batch-size", type=int, nargs="+", default=[128], metavar="B",
                   help="one or more batch sizes (the low-data cells train on 10 to 100; default 128)")
    b.add_argument("--runs", action="store_true",
                   help="instead of single steps: whole cpu-profile student runs in parts (set-up, teacher targets, "
                        "training, evaluation) and runs per hour, at --per-class sizes")
    b.add_argument("--per-class", type=int, nargs="+", default=[1, 5, 10, 50], metavar="N")
    b.add_argument("--run-steps", type=int, default=BASELINE_STEPS, metavar="S",
                   help=f"with --runs: optimisation steps per run on every side (default {BASELINE_STEPS}, the cpu "
                        "profile's when the performance work began; 0: each side's own profile steps)")
    b.add_argument("--baseline", default=None, metavar="REV",
                   help="with --runs: also time git revision REV (a worktree under runs/), round-robin with this tree")
    b.add_argument("--image-size", type=int, default=32)
    b.add_argument("--channels", type=int, default=3)
    b.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    b.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    b.add_argument("--seeds", type=int, default=3, metavar="N",
                   help="also time N seeds trained together (torch.func) vs one after another; 0: skip (default 3)")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    b.add_argument("--device", default="auto")
    b.add_argument("--out", default=None, metavar="FILE", help="write the JSON here (the table goes to stdout)")
    b.add_argument("--figure", default=None, metavar="PATH", help="also plot to PATH (e.g. figures/bench.png): the multiples, or with --runs the parts of a run")
    b.add_argument("--load", default=None, metavar="FILE",
                   help="do not time anything: show (and with --figure plot) the JSON of an earlier run")
    b.set_defaults(func=bench_main)

    args = parser.parse_args(argv)
    if args.quiet:
        os.environ["JKT_PROGRESS"] = "0"
    args.quiet = args.quiet or os.environ.get("JKT_PROGRESS", "1") in ("0", "false", "False", "")
    if getattr(args, "methods", 0) is None:
        from .losses import PAPER_METHODS
        args.methods = list(PAPER_METHODS)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
