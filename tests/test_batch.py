"""The batch reproduction (jkt.batch, ``python -m jkt reproduce``): the grid, a smoke run end to end through
papermill, resuming without redoing work, and the same grid on a Dask LocalCluster on loopback after a simulated
kill, with a failing notebook reported while the others run.

Everything is written under one temporary folder (JKT_RESULTS, JKT_DATA, JKT_FIGURES and --out)."""
import json
import os
from pathlib import Path

import pytest

from jkt import batch, grid, profiles, store, workers
from jkt.losses import PAPER_METHODS
from jkt.__main__ import main

SMOKE_RUN = ["reproduce", "--profile", "smoke", "--only", "distill", "curves", "--workers", "1"]


# ---- the grid (no execution) ------------------------------------------------------------------------------

def test_cpu_grid_is_the_papers_tables_on_fashion_mnist(tmp_path):
    jobs = grid.plan("cpu", out=tmp_path)
    distill = [j for j in jobs if j.experiment == "distill" and "steps" not in j.parameters]
    p = profiles.get("cpu")
    assert sorted((j.parameters["per_class"], s) for j in distill for s in j.parameters["seeds"]) == \
        sorted((pc, s) for pc in (1, 5, 10, 100) for s in p.seeds_for(pc))  # seeds per per_class (the budget's)
    assert all(j.parameters["methods"][:6] == list(PAPER_METHODS) for j in distill)  # Tables 1-2's rows, + extras
    assert {m for j in distill if j.parameters["per_class"] <= 10 for m in j.parameters["methods"]} >= \
        {"noisy", "hinton", "act+jacn", "soft+softjac"}
    assert {j.parameters["dataset"] for j in distill} == {"fashion-mnist"}
    assert [j.parameters["seeds"] for j in jobs if j.parameters.get("routes") == ["penalty"]] == [[0], [1], [2]]
    assert len([j for j in jobs if j.experiment == "transfer"]) == 3
    figures = [j for j in jobs if j.figures == str(tmp_path / "cpu" / "figures")]
    assert [(j.experiment, j.parameters.get("routes")) for j in figures] == \
        [("taylor", None), ("jacobians", None), ("robustness", None)]  # 01, 02, and 04 with its default three routes
    with pytest.raises(ValueError, match="paper profile has no learning curves"):
        grid.plan("paper", only=["curves"], out=tmp_path)
    assert figures[0].parameters["widgets"] is False  # no ipywidgets in a headless batch kernel (nbclient #312 hangs)
    for j in jobs:
        assert j.parameters["profile"] == "cpu" and Path(j.notebook).exists()
        assert Path(j.output).parent == tmp_path / "cpu" / j.experiment and j.output.endswith(f"{j.name}.ipynb")
    assert len({j.output for j in jobs}) == len(jobs)
    assert grid.report_job("cpu", tmp_path).output == str(tmp_path / "cpu" / "06_reproduce.ipynb")


def test_paper_grid_covers_tables_1_2_and_the_posters_columns(tmp_path):
    jobs = grid.plan("paper", out=tmp_path)
    cells = {(j.parameters["dataset"], j.parameters["per_class"]) for j in jobs if j.experiment == "distill"}
    assert cells == {("cifar10", pc) for pc in (5, 10, 50, 100, 500, 1000, "full")} | \
        {("cifar100", pc) for pc in (1, 5, 10, 50, 100, "full")}
    transfer = {(j.parameters["setting"], j.parameters["per_class"]) for j in jobs if j.experiment == "transfer"}
    assert transfer == {("paper", 25), ("paper", 50), ("paper", "full")}


def test_only_and_seeds_narrow_the_grid(tmp_path):
    jobs = grid.plan("cpu", only=["transfer"], seeds=2, out=tmp_path)
    assert {j.experiment for j in jobs} == {"transfer"} and {j.parameters["seeds"][0] for j in jobs} == {0, 1}


@pytest.mark.parametrize("kwargs, name", [(dict(profile="laptop"), "profile"), (dict(only=["tables"]), "only"),
                                          (dict(seeds=0), "seeds")])
def test_bad_grid_options_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=name):
        grid.plan(**{"profile": "cpu", **kwargs})


def test_a_jobs_plan_is_the_registered_plan_of_its_parameters(tmp_path):
    job, = grid.plan("smoke", only=["distill"], out=tmp_path)
    plan = grid.job_plan(grid.Job("distill", "x", job.notebook, dict(job.parameters, per_class=3, seeds=[4]), "x"))
    assert (plan.profile.name, plan.dataset, plan.per_class, plan.seeds) == ("smoke", "digits", 3, [4])
    assert grid.pending_runs(grid.Job("taylor", "01", "01.ipynb", {"profile": "smoke"}, "01")) == 0


def test_the_committed_figures_are_written_only_by_a_default_reproduction(tmp_path):
    from jkt.plots import COMMITTED

    assert grid.figures_out("cpu") == COMMITTED and grid.figures_out("paper") == COMMITTED
    assert grid.figures_out("smoke") == grid.default_out().resolve() / "smoke" / "figures"
    assert grid.figures_out("cpu", tmp_path) == tmp_path.resolve() / "cpu" / "figures"


# ---- running it ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("results", "data", "figures"):
            mp.setenv(f"JKT_{name.upper()}", str(root / name))
        mp.delenv("JKT_PROFILE", raising=False)
        mp.setenv("OMP_NUM_THREADS", "1")  # one torch thread per notebook: tiny nets, and bit-exact reruns
        yield root


def snapshot(*folders):
    """{path: (size, mtime)} of every file under ``folders``."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in Path(f).rglob("*") if p.is_file()}


def accuracies(root):
    df = store.load_records(root / "results", kind="distill")
    return dict(zip(zip(df["method"], df["seed"], df["epochs"]), df["test_accuracy"]))


@pytest.fixture(scope="module")
def first_run(sandbox):
    rc = main([*SMOKE_RUN, "--out", str(sandbox / "runs")])
    return rc, sandbox / "runs" / "smoke"


def test_smoke_reproduce_runs_the_notebook_and_the_report(sandbox, first_run):
    rc, runs = first_run
    assert rc == 0
    executed = runs / "distill" / "digits-per_class5-seed0.ipynb"
    nb = json.loads(executed.read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
    assert not list(runs.rglob("*.failed.ipynb")) and not list(runs.rglob(".*.tmp.ipynb"))
    records = store.load_records(sandbox / "results", kind="distill", profile="smoke")
    grid = profiles.get("smoke").methods_for(5)
    assert len(records) == len(grid) + 1  # the grid's methods and the learning curve's longer act run
    assert set(records["per_class"]) == {5} and records["test_accuracy"].between(0, 100).all()
    assert records["validation_accuracy"].between(0, 100).all()
    report = json.loads((runs / "06_reproduce.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                   for c in report["cells"] if c["cell_type"] == "code" for o in c["outputs"])
    assert "No robustness records" in text and "No transfer records" in text  # said, not crashed
    assert "levelled off" in text or "still improving" in text  # the learning curve's verdict on act
    assert (runs / "figures" / "06_curves_smoke.png").exists()
    assert (runs / "figures" / "06_distill_smoke.png").exists()  # the report's figures: beside its notebook
    assert list((runs / "distill" / "figures").rglob("03_distill_smoke.png"))  # a job's figures stay beside it


def test_a_second_run_does_no_work(sandbox, first_run):
    before = snapshot(sandbox / "results", first_run[1] / "distill", sandbox / "figures")
    summary, report = batch.reproduce("smoke", only=["distill", "curves"], workers=1, out=sandbox / "runs")
    assert (summary.ran, summary.count("skipped"), report["status"]) == (0, 2, "skipped")
    assert snapshot(sandbox / "results", first_run[1] / "distill", sandbox / "figures") == before


def test_the_report_is_made_again_when_its_records_or_its_code_are_newer(tmp_path):
    source, out, results = tmp_path / "06.ipynb", tmp_path / "runs" / "06_reproduce.ipynb", tmp_path / "results"
    source.write_text("{}")
    results.mkdir()
    job = grid.Job("report", "06_reproduce", str(source), {}, str(out))
    assert batch.report_stale(job, results, [source]) == "no report yet"
    out.parent.mkdir()
    out.write_text("{}")
    record = results / "abc.json"
    record.write_text("{}")
    for path, when in ((source, 1_000), (record, 2_000), (out, 3_000)):
        os.utime(path, (when, when))
    assert batch.report_stale(job, results, [source]) is None
    os.utime(record, (4_000, 4_000))
    assert batch.report_stale(job, results, [source]) == "records newer than the report"
    os.utime(record, (2_000, 2_000))
    os.utime(source, (5_000, 5_000))  # a git pull that changed the report's notebook or the package
    assert batch.report_stale(job, results, [source]) == f"changed since the report: {source}"
    default = batch.report_sources(grid.report_job("cpu", tmp_path))
    assert default[0].name == "06_reproduce.ipynb" and batch.REPO / "jkt" / "report.py" in default


def test_on_a_dask_cluster_a_killed_grid_resumes_and_a_failing_notebook_does_not_stop_it(sandbox, first_run,
                                                                                         monkeypatch, capsys):
    """The same grid through a Dask LocalCluster on loopback, after what kill -9 in the middle of its job leaves
    (no executed notebook, one run's record not yet written, a half-written temporary notebook), plus a job
    with a bad parameter: the killed job finishes with the same records, the bad one is reported with the path
    of its executed notebook, and the exit code says that something failed."""
    from distributed import LocalCluster

    runs = first_run[1]
    job, = grid.plan("smoke", only=["distill"], out=sandbox / "runs")
    before = accuracies(sandbox)
    Path(job.output).unlink()
    victim = next(p for p in (sandbox / "results").glob("*.json")
                  if json.loads(p.read_text())["config"]["method"] == "act+jac+ce")
    victim.unlink()
    (runs / "distill" / ".digits-per_class5-seed0.deadbeef.tmp.ipynb").write_text("{")
    bad = grid.Job("distill", "bad-per_class", job.notebook, dict(job.parameters, per_class=-1),
                    str(Path(job.output).with_name("bad-per_class.ipynb")))
    monkeypatch.setattr(batch, "plan", lambda *a, **k: [bad, job])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        rc = main([*SMOKE_RUN, "--out", str(sandbox / "runs"), "--scheduler", cluster.scheduler_address,
                   "--no-report"])
    err = capsys.readouterr().err
    assert rc == 1
    assert str(bad.failed_output) in err and "per_class=-1" in err
    failed = json.loads(bad.failed_output.read_text())
    assert any(o["output_type"] == "error" for c in failed["cells"] if c["cell_type"] == "code" for o in c["outputs"])
    assert not Path(bad.output).exists()
    assert Path(job.output).exists() and victim.exists() and not list(runs.rglob(".*.tmp.ipynb"))
    assert accuracies(sandbox) == before  # the same table as the uninterrupted run (CPU runs are bit-exact)
    assert len(list((sandbox / "results").glob("*.json"))) == len(before)  # nothing duplicated


# ---- workers -------------------------------------------------------------------------------------------------

def test_each_local_worker_gets_its_own_gpu_and_a_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert workers.threads_per_job(1) == workers.available_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert workers.threads_per_job(1) == 1
    envs = [workers.worker_env(slot, ["3", "5"], 4) for slot in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["3", "5", "3"]
    assert all(e["OMP_NUM_THREADS"] == "4" for e in envs)
    assert "CUDA_VISIBLE_DEVICES" not in workers.worker_env(0, [], 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")
    assert workers.gpu_ids() == ["2", "7"] and workers.default_workers() == 2


# ---- the report's statistics -------------------------------------------------------------------------------

def test_distillation_table_puts_the_paper_beside_ours_and_says_when_it_is_another_dataset():
    import pandas as pd

    from jkt.report import claims, distillation_table
    from jkt.stats import VERDICTS

    rows = [{"dataset": "fashion-mnist", "per_class": pc, "method": m, "seed": s, "n_train": 10 * pc,
             "test_accuracy": 60 + pc / 10 + (3 if "jac" in m else 0) + s / 10}
            for pc in (1, 100) for m in ("ce", "act+ce", "act+jac+ce") for s in (0, 1, 2)]
    table = distillation_table(pd.DataFrame(rows), "fashion-mnist")
    assert list(table.index) == ["ce", "act+ce", "act+jac+ce"]
    assert table[(1, "ours")]["ce"] == "60.20 ± 0.10"
    assert table[(1, "paper CIFAR-100 (different dataset)")]["ce"] == "5.69"  # Table 2 shares our per_class
    verdicts = claims(pd.DataFrame(rows))[0].set_index("paper")["verdict"]
    assert set(verdicts) <= set(VERDICTS)
    assert claims()[0]["verdict"].eq("no data").all()


def test_in_a_log_the_batch_prints_a_line_per_job_and_a_status_line_at_most_every_interval(monkeypatch):
    """stderr is not a terminal (pytest captures it): no redrawn bar, one line per finished job, status lines."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    def fake_run(job, env, check):
        time.sleep(0.3)
        return {"job": job.describe(), "name": job.name, "experiment": job.experiment, "status": "done",
                "notebook": job.output, "error": None, "seconds": 0.3}

    class Pool:
        capacity, executor = 1, ThreadPoolExecutor(1)

    monkeypatch.setattr(batch, "run_job", fake_run)
    monkeypatch.setattr(batch, "STATUS_EVERY", 0.0)
    monkeypatch.delenv("JKT_PROGRESS", raising=False)
    jobs = [grid.Job("taylor", f"nb{i}", "x.ipynb", {"profile": "smoke"}, f"/nonexistent/nb{i}.ipynb")
            for i in range(3)]
    lines = []
    summary = batch.execute(jobs, Pool(), progress=True, log=lines.append)
    Pool.executor.shutdown()
    assert summary.count("done") == 3
    assert [ln.split()[1] for ln in lines if ln.startswith("done")] == ["taylor/nb0", "taylor/nb1", "taylor/nb2"]
    status = [ln for ln in lines if "notebooks; running" in ln]
    assert status and all("left ~" in ln for ln in status)
    assert not any("|" in ln for ln in lines)  # no progress bar drawn into the log
