"""The noise-robustness plan (Table 3): validation before any work, resumable records, re-testing from saved weights."""
import json
import math

import pytest

from jkt import store
from jkt.losses import Objective
from jkt.experiments.robustness import noise_sigma, paper_cell, route_objective
from jkt.experiments.robustness import plan as plan_robustness

# A tiny grid: every route, one penalised strength, a quick schedule (digits, VGG-9 at width 1/8).
TINY = dict(profile="smoke", routes=["penalty", "noise", "projection"], strengths=[0, 0.5], sigmas=[0, 0.2],
            noise_draws=2, epochs=3, width=0.125, per_class=10, progress=False)


@pytest.mark.parametrize("kwargs, name", [
    (dict(profile="laptop"), "profile"),
    (dict(dataset="mnist"), "dataset"),
    (dict(dataset=3), "dataset"),
    (dict(strengths=[-1]), "strengths"),
    (dict(strengths="[-1]"), "strengths"),           # what papermill's -p strengths '[-1]' passes
    (dict(strengths=["a"]), "strengths"),
    (dict(strengths="0.1, oops"), "strengths"),
    (dict(strengths=[0.1, 0.1]), "strengths"),
    (dict(strengths=[]), "strengths"),
    (dict(sigmas=[-0.1]), "sigmas"),
    (dict(sigmas=[float("nan")]), "sigmas"),
    (dict(sigmas=[True]), "sigmas"),
    (dict(noise_draws=0), "noise_draws"),
    (dict(noise_draws="3"), "noise_draws"),
    (dict(seeds=[0, 0]), "seeds"),
    (dict(seeds=["a"]), "seeds"),
    (dict(routes=["penalty", "magic"]), "routes"),
    (dict(routes=[]), "routes"),
    (dict(width=0), "width"),
    (dict(epochs=0), "epochs"),
    (dict(per_class=0), "per_class"),
    (dict(per_class=100_000), "per_class"),
    (dict(test_per_class="half"), "test_per_class"),
    (dict(batch_size="64"), "batch_size"),
    (dict(projections=0), "projections"),
    (dict(device="gpu"), "device"),
])
def test_bad_parameters_are_rejected_before_any_file_is_written(tmp_path, kwargs, name):
    args = dict(profile="smoke", results=tmp_path / "results", progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        plan_robustness(**args)
    assert not (tmp_path / "results").exists()


def test_lists_given_as_text_by_papermill_are_read_back(tmp_path):
    plan = plan_robustness("smoke", strengths="[0, 0.5]", sigmas=0.2, seeds="[1]", routes="noise",
                           results=tmp_path, progress=False)
    assert plan.strengths == [0.0, 0.5] and plan.sigmas == [0.2] and plan.seeds == [1] and plan.routes == ["noise"]
    assert not any(tmp_path.iterdir())


def test_route_objectives_follow_proposition_2():
    assert {route_objective(r, 0) for r in ("penalty", "noise", "projection")} == {Objective()}
    assert route_objective("penalty", 0.1) == Objective(penalty=0.1, jacobian_output="target", projections=0)
    assert route_objective("noise", 0.5).input_noise == pytest.approx(math.sqrt(0.5)) == noise_sigma(0.5)
    assert route_objective("projection", 1, projections=3) == Objective(penalty=1.0, projections=3)
    # an int and a float strength are the same network (the same record key)
    assert route_objective("penalty", 1).to_dict() == route_objective("penalty", 1.0).to_dict()


def test_paper_numbers_are_the_published_table():
    assert paper_cell("penalty", 0.1, 0.2) == "53.57 ± 0.23"
    assert paper_cell("penalty", 0.0, 0.0) == "64.78"
    assert paper_cell("penalty", 0.2, 0.2) == "" and paper_cell("noise", 0.1, 0.2) == ""


def test_plan_runs_once_resumes_and_retests_from_saved_weights(tmp_path):
    results = tmp_path / "r"
    plan = plan_robustness(results=results, **TINY)
    todo = plan.pending()
    assert len(todo) == 4 and todo[0].strength == 0  # plain CE is trained once for all three routes
    records = plan.run()
    assert len(records) == 6 and records["key"].nunique() == 4
    assert records["test_accuracy"].between(0, 100).all()
    assert (records["train_seconds"] > 0).all() and (records["peak_memory_mb"] > 0).all()
    assert (records["frobenius_sq"] >= records["label_jacobian_sq"]).all()
    assert plan.pending() == []
    files = sorted(results.glob("*.json"))
    assert len(files) == 4 and len(list((results / "checkpoints").glob("*.pt"))) == 4
    assert not list(results.rglob("*.tmp"))
    record = json.loads(files[0].read_text())
    assert record["key"] == store.config_hash(record["config"])
    assert {"train_seconds", "eval_seconds", "peak_memory_mb", "threads", "torch"} <= set(record["metrics"])

    table = plan.table()
    assert list(table.index) == [(r, s) for r in TINY["routes"] for s in (0.0, 0.5)]
    assert not table.isin(["not run"]).any().any() and "paper σ=0.2" not in table
    means = table[["mean σ=0", "mean σ=0.2"]]
    assert means.notna().all().all() and ((means >= 0) & (means <= 100)).all().all()
    assert (table["std σ=0"] == 0).all() and (table["std σ=0.2"] >= 0).all()
    curves = plan.curves()
    assert len(curves) == 6 * (1 + 2) and curves["accuracy"].between(0, 100).all()

    def snapshot():
        return {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in results.rglob("*") if f.is_file()}

    before = snapshot()
    plan.run()  # nothing to do: no file written, changed or added
    assert snapshot() == before

    # A new sigma and more draws: the saved networks are re-tested, not retrained.
    wider = plan_robustness(results=results, **dict(TINY, sigmas=[0, 0.2, 0.3], noise_draws=3))
    assert [wider.status(n) for n in wider.pending()] == ["evaluate"] * 4
    again = wider.run()
    assert list(again["train_seconds"]) == list(records["train_seconds"])
    assert wider.pending() == [] and plan.pending() == []  # three draws cover a plan that asks for two
    assert (wider.table()["mean σ=0.3"].between(0, 100)).all()
