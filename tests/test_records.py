"""Records that never mix: every record carries what made it, and the report reads one profile's records only.

The sequence that once broke the cpu report: the test suite leaves smoke records in results/, then the cpu
reproduction's report reads the folder. Here a stand-in for the cpu profile (the smoke recipe under the name
"cpu", with narrower robustness networks) keeps it to seconds."""
from dataclasses import replace

import pandas as pd
import pytest

from jkt import profiles, records, report, store
from jkt.experiments import distill, robustness

SMALL = dict(strengths=[0, 0.1], routes=["penalty"], progress=False)


@pytest.fixture
def cpu_standin(monkeypatch):
    standin = replace(profiles.PROFILES["smoke"], name="cpu", robust_width=1 / 16, robust_epochs=3)
    monkeypatch.setitem(profiles.PROFILES, "cpu", standin)
    return standin


def test_every_record_carries_its_experiment_profile_recipe_and_dataset(tmp_path):
    plan = distill.plan("smoke", methods=["ce"], results=tmp_path, progress=False)
    config = plan.run_config("ce", 0)
    smoke = profiles.get("smoke")
    assert {k: config[k] for k in ("kind", "profile", "recipe", "dataset")} == \
        {"kind": "distill", "profile": "smoke", "recipe": smoke.recipe_hash(), "dataset": "digits"}
    net = robustness.plan("smoke", results=tmp_path, **SMALL).networks()[0]
    assert robustness.plan("smoke", results=tmp_path, **SMALL).run_config(net)["recipe"] == smoke.recipe_hash()
    assert replace(smoke, student_steps=13).recipe_hash() != smoke.recipe_hash()


def test_a_cpu_report_after_smoke_runs_reads_cpu_networks_only(tmp_path, cpu_standin):
    smoke = robustness.plan("smoke", results=tmp_path, **SMALL)
    smoke.run()
    cpu = robustness.plan("cpu", results=tmp_path, **SMALL)
    assert cpu.pending() == cpu.networks()  # the smoke networks are not taken for cpu ones
    cpu.run()
    assert len(store.load_records(tmp_path, kind="robustness")) == 4  # two of each profile in one folder

    tables, notes = records.profile_records("cpu", results=tmp_path)
    ours = tables["robustness"].query("route == 'penalty'").drop(columns="dataset").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, cpu.curves().reset_index(drop=True))  # the cpu networks' measurements
    assert not ours["accuracy"].equals(smoke.curves()["accuracy"])  # which differ from the smoke networks'
    assert "not run" not in report.robustness_table(tables["robustness"], "digits", "cpu").to_string()
    assert notes == []


def test_records_of_an_earlier_recipe_are_left_out_and_said(tmp_path, cpu_standin, monkeypatch):
    distill.plan("cpu", methods=["ce"], results=tmp_path, progress=False).run()
    monkeypatch.setitem(profiles.PROFILES, "cpu", replace(cpu_standin, student_steps=6))
    tables, notes = records.profile_records("cpu", results=tmp_path)
    assert len(tables["distill"]) == 0 and notes == ["distill: 1 record(s) of an earlier cpu recipe are left out"]


def test_an_unreadable_record_stops_the_report_naming_it(tmp_path):
    (tmp_path / "0123456789abcdef.json").write_text('{"key": "0123')
    with pytest.raises(store.UnreadableRecord, match="0123456789abcdef.json"):
        records.profile_records("smoke", results=tmp_path)
