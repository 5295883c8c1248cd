"""The environment's pins: exact, and the same in pyproject.toml and environment.yml."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"torch": "2.14.1", "torchvision": "0.29.1"}
PINNED = ["papermill", "nbval", "jupyterlab", "ipykernel", "ipywidgets", "matplotlib", "seaborn", "pandas",
          "scikit-learn", "tqdm", "pytest"]


def _pyproject_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==") for d in deps)


def _conda_pins():
    text = (ROOT / "environment.yml").read_text()
    return dict(re.findall(r"^\s*-\s*([A-Za-z0-9_.-]+)==(\S+)\s*$", text, flags=re.M))


def test_every_dependency_is_pinned_exactly():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in d for d in deps), deps
    pins = _pyproject_pins()
    for name, version in REQUIRED.items():
        assert pins[name] == version
    for name in PINNED:
        assert name in pins, f"{name} is not pinned in pyproject.toml"


def test_environment_yml_has_the_same_pins():
    assert _conda_pins() == _pyproject_pins()
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*-\s*python=3\.11\s*$", text, flags=re.M)
    assert re.search(r"^\s*-\s*-e \.\s*$", text, flags=re.M), "the pip section must install the package"


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for name, pinned in _pyproject_pins().items():
        assert version(name).split("+")[0] == pinned, name
