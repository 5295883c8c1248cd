"""The book (``jkt.book``, ``make book``): executed notebooks to a static site that reads offline.

Two tiny "executed" notebooks are written by hand (outputs included, no kernel), laid out as the reproduction
lays out its run folder, and built into a book in ``tmp_path``.
"""
import base64
import io
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from jkt import book

REPO = Path(__file__).resolve().parents[1]
STATE = "application/vnd.jupyter.widget-state+json"


def tiny_png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5, 1))
    ax.plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    plt.close(fig)
    return buf.getvalue()


def executed_notebook(title: str, text: str, png: bytes | None = None, widget: bool = False):
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"parameters": {"profile": "smoke"}, "end_time": "2026-12-05T10:00:00+00:00"}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {title}\n\nThe lemma: $\\mathbb{{E}}[g(x+\\xi)] = g(x) + "
                                                  f"\\tfrac{{\\sigma^2}}{{2}}\\operatorname{{tr}} H_g(x)$.\n\n"
                                                  f"$$\\lVert \\nabla_x f \\rVert^2$$"))
    code = nbformat.v4.new_code_cell("print('hello')", execution_count=1)
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    if png:
        code.outputs.append(nbformat.v4.new_output("display_data", data={
            "image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"}))
    nb.cells.append(code)
    if widget:
        view = lambda mid: nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": mid, "version_major": 2, "version_minor": 0},
            "text/plain": "HBox(children=(FloatLogSlider(...)))"})
        cell = nbformat.v4.new_code_cell("display(...)", execution_count=2)
        cell.outputs = [view("box"), view("out")]
        nb.cells.append(cell)
        nb.metadata["widgets"] = {STATE: {"version_major": 2, "version_minor": 0, "state": {
            "box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_s", "IPY_MODEL_d"]}},
            "s": {"model_name": "FloatLogSliderModel", "state": {"description": "sigma", "value": 0.125}},
            "d": {"model_name": "DropdownModel", "state": {"description": "network", "index": 1,
                                                          "_options_labels": ["tanh", "relu"]}},
            "out": {"model_name": "OutputModel", "state": {"outputs": [
                {"output_type": "stream", "name": "stdout", "text": "drawn by the widget\n"}]}},
        }}}
    return nb


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs" / "cpu"
    (runs / "taylor").mkdir(parents=True)
    nbformat.write(executed_notebook("01 · The Taylor equivalences", "taylor says 42\n", tiny_png(), widget=True),
                   runs / "taylor" / "seed0.ipynb")
    nbformat.write(executed_notebook("The paper, reproduced", "report says 7\n"), runs / "06_reproduce.ipynb")
    return runs


def test_book_index_links_pages_in_order_and_pages_hold_the_outputs(runs, tmp_path):
    out = tmp_path / "docs"
    png = tiny_png()
    pages = book.build(runs, out)
    assert [p.number for p in pages] == ["01", "06"]
    index = (out / "index.html").read_text()
    links = re.findall(r'<a href="([^"]+\.html)"', index)
    assert links == ["01_taylor_seed0.html", "06_reproduce.html"]
    assert all((out / link).is_file() for link in links)
    assert "The Taylor equivalences" in index and "no executed notebook in this run" in index  # 02-05 missing

    page = (out / "01_taylor_seed0.html").read_text()
    assert "taylor says 42" in page  # a text output
    images = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert images == ["01_taylor_seed0_files/cell01_1.png"]  # a figure, as a file beside the page
    assert (out / images[0]).read_bytes() == png
    assert "data:image/png;base64" not in page
    assert page.count("<math") == 2 and "$" not in re.sub(r"<code.*?</code>|<pre.*?</pre>", "", page, flags=re.S)
    assert 'href="book.css"' in page and (out / "book.css").stat().st_size > 10_000
    # Offline: no script or style sheet from the network, no widget manager; the widget as its values.
    assert not re.search(r'<(script|link)[^>]+(src|href)="(https?:)?//', page)
    assert STATE not in page and "HBox(children=" not in page
    assert "sigma <b>0.125</b>" in page and "network <b>relu</b>" in page and "drawn by the widget" in page
    assert "report says 7" in (out / "06_reproduce.html").read_text()


def test_book_rebuilds_its_own_folder_and_refuses_any_other(runs, tmp_path):
    out = tmp_path / "docs"
    book.build(runs, out)
    (out / "stale.html").write_text("old")
    book.build(runs, out)
    assert not (out / "stale.html").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match="holds no book"):
        book.build(runs, other)
    assert (other / "notes.txt").read_text() == "keep"
    with pytest.raises(SystemExit, match="no executed notebooks"):
        book.build(tmp_path / "empty", tmp_path / "docs2")


def test_job_order_and_labels(tmp_path):
    runs = tmp_path / "cpu"
    (runs / "distill").mkdir(parents=True)
    for pc in (10, 1, 100, 5):
        nbformat.write(executed_notebook("03 · Low-data distillation", "x\n"),
                       runs / "distill" / f"fashion-mnist-per_class{pc}-seed0.ipynb")
    nbformat.write(executed_notebook("03", "x\n"), runs / "distill" / ".fashion-mnist-per_class2-seed0.1a2b.tmp.ipynb")
    pages = book.find_notebooks(runs, everything=True)
    assert [p.job for p in pages] == [f"fashion-mnist, per_class {pc}, seed 0" for pc in (1, 5, 10, 100)]
    assert pages[0].name == "03_distill_fashion-mnist-per_class1-seed0.html"
    representative, = book.find_notebooks(runs)  # by default one job per experiment: per_class 10, seed 0
    assert representative.job == "fashion-mnist, per_class 10, seed 0"


def test_book_in_a_browser(runs, tmp_path):
    """The built index and a page in Chromium: links work, the figure loads, the equations are laid out."""
    from test_browser import launch, require_browser

    sync_playwright, chromium = require_browser()
    out = tmp_path / "docs"
    book.build(runs, out)
    shots = REPO / "runs" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p, chromium)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto((out / "index.html").as_uri())
            page.screenshot(path=str(tmp_path / "book_test_index.png"))
            page.click("text=The Taylor equivalences")
            page.wait_for_load_state()
            assert page.url.endswith("01_taylor_seed0.html")
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            assert page.evaluate("document.images.length") == 1
            widths = page.evaluate("Array.from(document.querySelectorAll('math')).map(m => m.getBoundingClientRect().width)")
            assert len(widths) == 2 and all(w > 20 for w in widths)
            page.screenshot(path=str(tmp_path / "book_test_page.png"), full_page=True)
        finally:
            browser.close()
    for name in ("book_test_index.png", "book_test_page.png"):
        shutil.copy(tmp_path / name, shots / name)
        print(f"screenshot: {tmp_path / name}  (copy: {shots / name})")
