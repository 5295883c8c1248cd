"""The design card's commands as a terminal user sees them: papermill with --log-output shows one line per
finished run and no kernel transport warning; a reproduction that needs what this machine lacks says so once,
up front, and writes nothing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jkt import kernels
from jkt.__main__ import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not kernels.config_path().exists(), reason="the environment's kernel config is not installed "
                    "(make setup installs it: python -c 'import jkt.kernels; jkt.kernels.install()')")
def test_papermill_log_output_prints_one_line_per_run_and_no_transport_warning(tmp_path):
    env = {**os.environ, "JKT_RESULTS": str(tmp_path / "results"), "JKT_DATA": str(tmp_path / "data"),
           "JKT_FIGURES": str(tmp_path / "figures"), "OMP_NUM_THREADS": "1"}
    env.pop("JKT_PROGRESS", None)
    env.pop("JKT_PROFILE", None)
    done = subprocess.run([sys.executable, "-m", "papermill", str(REPO / "notebooks" / "03_distill.ipynb"),
                           str(tmp_path / "out.ipynb"), "-p", "profile", "smoke", "-y", "methods: [ce, act, act+jac]",
                           "--log-output"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    lines = [ln for ln in text.splitlines() if ln.startswith("distill digits per_class=5: ") and "test accuracy" in ln]
    assert [ln.split(": ")[1] for ln in lines] == ["ce, seed 0", "act, seed 0", "act+jac, seed 0"]
    assert lines[-1].endswith("0 run(s) left")
    assert "without encryption" not in text


def test_a_paper_reproduction_without_its_data_stops_before_writing_anything(tmp_path, monkeypatch, capsys):
    for name in ("results", "data", "figures"):
        monkeypatch.setenv(f"JKT_{name.upper()}", str(tmp_path / name))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rc = main(["reproduce", "--profile", "paper", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("error:") == 1
    for thing in ("dataset cifar10", "dataset cifar100", "dataset imagefolder:mit-indoor-67", "weights resnet34"):
        assert f"* {thing}:" in err, thing
    assert "apt-get" not in err and "indoorCVPR_09.tar" in err  # each with its own remedy
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_list_marks_the_jobs_that_cannot_run_here(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JKT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["reproduce", "--profile", "paper", "--only", "transfer", "--list", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    jobs = [ln for ln in out if ln.startswith("transfer/")]
    assert jobs and all("CANNOT RUN HERE: missing dataset imagefolder:mit-indoor-67, weights resnet34" in ln
                        for ln in jobs)
    assert not (tmp_path / "paper").exists()
