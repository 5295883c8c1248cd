"""Notebook hygiene: committed clean, python3 kernel, a papermill-readable parameters cell with help."""
import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "stored outputs"
        assert "injected-parameters" not in cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_is_literal_and_fully_listed_by_papermill(path):
    import papermill

    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    source = "".join(cells[0]["source"])
    names = []
    for node in ast.parse(source).body:
        assert isinstance(node, (ast.Assign, ast.AnnAssign)), "only assignments in the parameters cell"
        target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        ast.literal_eval(node.value)  # literals only
        names.append(target.id)
    listed = papermill.inspect_notebook(str(path))
    assert set(listed) == set(names), f"papermill cannot read {set(names) - set(listed)}"
    assert all(p["help"] for p in listed.values()), "every parameter needs a # help comment"


def parameters_of(path: Path) -> dict:
    """The parameters cell of a notebook as {name: literal value}, in order."""
    nb = json.loads(path.read_text())
    cell, = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    out = {}
    for node in ast.parse("".join(cell["source"])).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        out[target.id] = ast.literal_eval(node.value)
    return out


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("experiment", ["distill", "robustness", "transfer"])
def test_a_notebooks_parameters_are_its_plans_arguments_with_the_same_defaults(experiment):
    """The notebook calls ``plan`` with its parameters cell and the batch calls it with the grid's values: both
    make the same plan only while the names, their order and their defaults agree."""
    import inspect

    from jkt.experiments import EXPERIMENTS, NOTEBOOKS as EXPERIMENT_NOTEBOOKS

    parameters = parameters_of(NOTEBOOKS[0].parent / EXPERIMENT_NOTEBOOKS[experiment])
    signature = inspect.signature(EXPERIMENTS[experiment].plan).parameters.values()
    positional = {p.name: p.default for p in signature if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}
    assert list(positional) == list(parameters), "the notebook's parameters, in order, are plan's positional arguments"
    for name, value in parameters.items():
        assert _plain(positional[name]) == _plain(value), f"{name}: plan's default {positional[name]!r}, notebook's {value!r}"
