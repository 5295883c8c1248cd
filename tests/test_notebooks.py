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
