"""Figures by profile: a run by hand writes under runs/, never over a committed figure."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from jkt import plots
from jkt.store import REPO


def test_a_figure_is_named_by_its_profile_and_kept_out_of_the_committed_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("JKT_FIGURES", raising=False)
    assert plots.figures_dir() == REPO / "runs" / "figures" != plots.COMMITTED
    monkeypatch.setenv("JKT_FIGURES", str(tmp_path))
    fig, _ = plt.subplots()
    assert plots.save(fig, "01_demo", "smoke") == [tmp_path / "01_demo_smoke.png"]
    assert (tmp_path / "01_demo_smoke.png").stat().st_size > 0 and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="profile"):
        plots.save(fig, "01_demo", "laptop")
    plt.close(fig)
