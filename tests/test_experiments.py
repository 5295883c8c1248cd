"""The distillation plan: validation before any work, resumable records, the CLI."""
import json

import pytest

from jkt import profiles, store
from jkt.__main__ import main
from jkt.experiments.distill import method_objective
from jkt.experiments.distill import plan as plan_distillation
from jkt.losses import PAPER_METHODS


@pytest.mark.parametrize("kwargs, name", [
    (dict(profile="laptop"), "profile"),
    (dict(dataset="mnist"), "dataset"),
    (dict(methods=["ce", "magic"]), "methods"),
    (dict(methods="[ce"), "methods"),
    (dict(per_class=0), "per_class"),
    (dict(per_class=-3), "per_class"),
    (dict(per_class=10_000), "per_class"),
    (dict(per_class="ten"), "per_class"),
    (dict(seeds=[0, 0]), "seeds"),
    (dict(seeds=["a"]), "seeds"),
    (dict(epochs=0), "epochs"),
    (dict(batch_size="64"), "batch_size"),
    (dict(jacobian_output="largest"), "jacobian_output"),
    (dict(jacobian_loss="cosine"), "jacobian_loss"),
    (dict(sigma=-0.1), "sigma"),
    (dict(sigma=float("nan")), "sigma"),
    (dict(temperature=0), "temperature"),
])
def test_bad_parameters_are_rejected_before_any_file_is_written(tmp_path, kwargs, name):
    args = dict(profile="smoke", results=tmp_path / "results", progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        plan_distillation(**args)
    assert not (tmp_path / "results").exists()


def test_per_class_above_the_class_size_names_the_range():
    with pytest.raises(ValueError, match=r"per_class.*1 to 1"):  # digits' smallest training class has 1xx
        plan_distillation("smoke", per_class=100_000, progress=False)


def test_lists_given_as_text_by_papermill_are_read_back():
    plan = plan_distillation("smoke", methods='["ce", "act"]', seeds="[3, 4]", progress=False)
    assert plan.methods == ["ce", "act"] and plan.seeds == [3, 4]
    assert plan_distillation("smoke", methods="act+jac", progress=False).methods == ["act+jac"]


def test_unused_options_do_not_change_a_runs_key():
    assert method_objective("ce", jacobian_loss="normalized", sigma=0.3) == method_objective("ce")
    assert method_objective("jac+ce", jacobian_loss="normalized") != method_objective("jac+ce")
    assert method_objective("noisy+ce", sigma=0.3).sigma == 0.3


def test_plan_runs_once_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("JKT_DATA", str(tmp_path / "data"))
    plan = plan_distillation("smoke", methods=["ce", "act+jac+ce"], results=tmp_path / "r", progress=False)
    assert plan.pending() == [("ce", 0), ("act+jac+ce", 0)]
    df = plan.run()
    assert list(df["method"]) == ["ce", "act+jac+ce"]
    assert df["test_accuracy"].between(0, 100).all()
    assert (df["seconds"] > 0).all() and (df["peak_memory_mb"] > 0).all()
    assert plan.pending() == []
    files = sorted((tmp_path / "r").glob("*.json"))
    assert len(files) == 2 and not list((tmp_path / "r").glob("*.tmp"))
    before = [f.read_text() for f in files]
    plan.run()  # nothing to do: records untouched, teacher not retrained
    assert [f.read_text() for f in files] == before
    record = json.loads(files[0].read_text())
    assert record["key"] == store.config_hash(record["config"])
    assert len(list((tmp_path / "data" / "checkpoints").glob("*.pt"))) == 1


def test_cli_distill_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JKT_DATA", str(tmp_path / "data"))
    code = main(["distill", "--profile", "smoke", "--methods", "ce", "act", "--results", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0
    assert "Regular Cross-Entropy (CE) training" in out and "Match Activations only" in out


def test_cli_reports_bad_input_with_exit_code_2(capsys):
    assert main(["distill", "--profile", "smoke", "--methods", "nope"]) == 2
    assert "methods" in capsys.readouterr().err


def test_profiles():
    assert profiles.get("cpu").dataset == "fashion-mnist"
    assert profiles.get("paper").student_epochs == 500 and profiles.get("paper").teacher_epochs == 500
    cpu = profiles.get("cpu")
    assert cpu.student_epochs_for(100, 128, per_class=10) == cpu.student_steps[10]  # one batch per epoch
    assert cpu.student_epochs_for(1000, 128, per_class=100, first_order=True) == cpu.jacobian_steps[100] // 8
    with pytest.raises(ValueError, match="profile"):
        profiles.get("gpu")
    assert list(PAPER_METHODS) == ["ce", "act+ce", "jac+ce", "act+jac+ce", "act", "act+jac"]


def test_profile_override_from_env(monkeypatch):
    monkeypatch.setenv("JKT_PROFILE", "smoke")
    assert profiles.from_env("cpu") == "smoke"
    monkeypatch.setenv("JKT_PROFILE", "huge")
    with pytest.raises(ValueError, match="JKT_PROFILE"):
        profiles.from_env("cpu")
