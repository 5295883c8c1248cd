"""The book: the executed notebooks of a reproduction as a static web site that reads offline.

``python -m jkt.book runs/cpu --out docs`` (``make book``) renders every executed notebook under the run folder
(``taylor/`` 01, ``jacobians/`` 02, ``distill/`` 03, ``robustness/`` 04, ``transfer/`` 05 and
``06_reproduce.ipynb``) with nbconvert's JupyterLab look, and writes an index page listing them in order.

Offline by construction: nothing is fetched from a CDN. Equations are converted to MathML when the book is built
(latex2mathml), which browsers draw natively; figures are PNG files beside the pages, not base64 inside them;
the JupyterLab style sheet is one shared file; widgets (the sigma slider of notebook 01) are drawn as their
values at run time, with the figure of their output, since a static page has no kernel to move them.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
MARKER = ".jkt-book"  # in a folder the book wrote; the only kind of folder it cleans before writing
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

# (number, where the executed notebooks are, what the notebook is, in one line)
CHAPTERS = [
    ("01", "taylor", "Propositions 1-2 and Eqs. 2-3 derived to second order and checked by Monte Carlo; "
                     "the local affine approximation; the sigma slider."),
    ("02", "jacobians", "Input Jacobians computed every way (one output, top-1, full, random projections), checked "
                        "against finite differences, timed, and drawn."),
    ("03", "distill", "Tables 1-2: low-data distillation, VGG-9 teacher to VGG-4 students, the six methods; "
                      "one notebook per training-set size and seed."),
    ("04", "robustness", "Table 3: the Jacobian-norm penalty against Gaussian input noise, beside noise training "
                         "and the random-projection penalty."),
    ("05", "transfer", "The transfer table: LwF, + Jacobians, + attention, from one half of the classes to the other."),
    ("06", "06_reproduce.ipynb", "The report: every record of the run in the paper's tables, the paper's claims "
                                 "with verdicts from a test across seeds, the figures."),
]

PAGE_TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block notebook_css -%}
<link rel="stylesheet" href="book.css">
{%- endblock notebook_css -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block data_png scoped -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="{{ output.metadata.filenames['image/png'] | posix_path | escape_html }}" alt="figure: an output of this cell">
</div>
{%- endblock data_png -%}
{%- block data_jpg scoped -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="{{ output.metadata.filenames['image/jpeg'] | posix_path | escape_html }}" alt="figure: an output of this cell">
</div>
{%- endblock data_jpg -%}
{%- block body_header -%}
{{ super() }}
{{ resources.book_nav }}
{%- endblock body_header -%}
{%- block body_footer -%}
{{ resources.book_nav }}
{{ super() }}
{%- endblock body_footer -%}
"""

BOOK_CSS = """
/* jkt book: additions to JupyterLab's style */
body.jp-Notebook { max-width: 1100px; margin: 0 auto; padding: 0 16px; }
nav.book-nav { display: flex; gap: 1.5em; padding: 10px 0; margin: 4px 0 8px;
  border-bottom: 1px solid #ddd; font: 14px system-ui, sans-serif; }
nav.book-nav:last-of-type { border-bottom: none; border-top: 1px solid #ddd; margin-top: 16px; }
nav.book-nav .book-here { color: #555; margin-left: auto; }
math { font-family: "Latin Modern Math", "STIX Two Math", "Cambria Math", math; font-size: 1.08em; }
math[display="block"] { margin: 0.6em 0; }
menclose[notation="box"] { border: 1px solid currentColor; padding: 2px 4px; }
code.book-tex { color: #a33; }
.book-widget { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: center; padding: 6px 0;
  font: 13px system-ui, sans-serif; }
.book-widget .book-control { background: #f3f3f3; border: 1px solid #ddd; border-radius: 3px; padding: 2px 8px; }
.book-widget-note { color: #666; font: italic 12px system-ui, sans-serif; }
"""

INDEX_CSS = """
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 860px;
  margin: 2.5em auto; padding: 0 1.2em; }
h1 { font-size: 1.7em; line-height: 1.25; margin-bottom: 0.2em; }
.sub { color: #555; margin-top: 0; }
ol.chapters { list-style: none; padding: 0; }
ol.chapters > li { padding: 0.7em 0; border-top: 1px solid #e4e4e4; }
.num { display: inline-block; min-width: 2.2em; font-weight: 600; color: #777; }
.title a { font-weight: 600; text-decoration: none; color: #0b5cad; }
.title a:hover { text-decoration: underline; }
.what { margin: 0.15em 0 0 2.2em; color: #444; }
.jobs { margin: 0.25em 0 0 2.2em; font-size: 0.92em; }
.jobs a { margin-right: 0.9em; white-space: nowrap; }
.failed { color: #b00; }
.missing { color: #888; font-style: italic; }
footer { margin-top: 2em; color: #777; font-size: 0.85em; border-top: 1px solid #e4e4e4; padding-top: 0.8em; }
code { background: #f4f4f4; padding: 1px 4px; border-radius: 3px; }
"""


@dataclass
class Page:
    number: str
    source: Path
    name: str  # the html file's name
    job: str  # the job's label, from its file name
    title: str = ""
    failed: bool = False
    images: int = 0
    meta: dict = field(default_factory=dict)


def natural_key(text: str):
    """``per_class5`` before ``per_class10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def job_label(stem: str) -> str:
    """``fashion-mnist-per_class10-seed0`` -> ``fashion-mnist, per_class 10, seed 0``."""
    stem = stem.removesuffix(".failed")
    parts = re.split(r"-(?=per_class|seed|routes|sigma)", stem)
    return ", ".join(re.sub(r"^(per_class|seed|sigma)(\d)", r"\1 \2", p) for p in parts)


# The one job per experiment that the book shows unless asked for every job (its name contains this; else the first)
REPRESENTATIVES = {"distill": "per_class10-seed0", "robustness": "routes-seed0", "transfer": "seed0"}


def find_notebooks(runs: Path, everything: bool = False) -> list[Page]:
    """The executed notebooks of a run folder, in the book's order (chapter, then natural order of the job): one
    representative job per experiment (REPRESENTATIVES), or with ``everything`` every job."""
    pages = []
    for number, where, _ in CHAPTERS:
        if where.endswith(".ipynb"):
            found = [runs / where] if (runs / where).is_file() else []
        else:
            found = sorted((p for p in (runs / where).glob("*.ipynb") if not p.name.startswith(".")),
                           key=lambda p: natural_key(p.name))  # .name.tmp.ipynb: a notebook still running
            if not everything and len(found) > 1:
                found = [next((p for p in found if REPRESENTATIVES.get(where, "") in p.name), found[0])]
        for path in found:
            stem = path.name.removesuffix(".ipynb")
            name = stem if stem.startswith(number) else f"{number}_{where}_{stem}"
            pages.append(Page(number, path, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".html",
                              job_label(stem) if not stem.startswith(number) else "",
                              failed=stem.endswith(".failed")))
    return pages


# --- equations: TeX to MathML when the book is built --------------------------------------------------------

def tex_to_mathml(tex: str, display: bool) -> str:
    """MathML for a TeX formula; the formula as code when latex2mathml cannot convert it."""
    from latex2mathml.converter import convert

    try:
        return convert(tex.strip(), display="block" if display else "inline")
    except Exception:  # a construct latex2mathml does not know: show the TeX rather than nothing
        delim = "$$" if display else "$"
        return f'<code class="book-tex">{html.escape(delim + tex + delim)}</code>'


def math_exporter_class():
    """nbconvert's HTMLExporter whose Markdown renders math as MathML (instead of leaving it to MathJax)."""
    from jinja2 import pass_context
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    class MathMLRenderer(IPythonRenderer):
        def block_math(self, body):
            return tex_to_mathml(body, True)

        def multiline_math(self, text):
            return tex_to_mathml(text, True)

        def latex_environment(self, name, body):
            return tex_to_mathml(rf"\begin{{{name}}}{body}\end{{{name}}}", True)

        def inline_math(self, body):
            return tex_to_mathml(body, False)

    class BookExporter(HTMLExporter):
        @pass_context
        def markdown2html(self, context, source):
            cell = context.get("cell", {})
            renderer = MathMLRenderer(escape=False, attachments=cell.get("attachments", {}), embed_images=False,
                                      path="", anchor_link_text=self.anchor_link_text,
                                      exclude_anchor_links=self.exclude_anchor_links, **self.lexer_options)
            return MarkdownWithMath(renderer=renderer).render(source)

    return BookExporter


# --- widgets: their values at run time, and the outputs of Output widgets -----------------------------------

def _widget_html(model_id: str, state: dict, extra: list) -> str:
    model = state.get(model_id)
    if model is None:
        return ""
    name, s = model.get("model_name", ""), model.get("state", {})
    label = html.escape(str(s.get("description", "")))
    if name in ("HBoxModel", "VBoxModel", "BoxModel", "GridBoxModel"):
        return "".join(_widget_html(c.removeprefix("IPY_MODEL_"), state, extra) for c in s.get("children", []))
    if name == "OutputModel":
        extra.extend(s.get("outputs", []))
        return ""
    if name in ("FloatProgressModel", "IntProgressModel"):
        return f'<progress value="{s.get("value", 0)}" max="{s.get("max", 100)}"></progress>'
    if name in ("HTMLModel", "HTMLMathModel"):
        return f"<span>{s.get('value', '')}</span>"
    if name == "LabelModel":
        return f"<span>{html.escape(str(s.get('value', '')))}</span>"
    if "index" in s and "_options_labels" in s:
        labels, index = s["_options_labels"], s["index"]
        value = labels[index] if isinstance(index, int) and 0 <= index < len(labels) else index
    elif name == "FloatLogSliderModel":
        value = f"{s.get('value', '')}"
    else:
        value = s.get("value", "")
    return f'<span class="book-control">{label} <b>{html.escape(str(value))}</b></span>'


def static_widgets(nb: nbformat.NotebookNode) -> int:
    """Replace every widget view by its state as HTML (and the outputs an Output widget holds); drop the widget
    state, so no widget script is loaded. Returns how many views were replaced."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW) if out.get("output_type") in ("display_data", "execute_result") else None
            if view is None:
                outputs.append(out)
                continue
            replaced += 1
            extra: list = []
            body = _widget_html(view.get("model_id", ""), state, extra)
            if body:
                note = ('<span class="book-widget-note">(a widget: the values this notebook ran with; '
                        "open the notebook in JupyterLab to move it)</span>")
                outputs.append(nbformat.v4.new_output("display_data", data={
                    "text/html": f'<div class="book-widget">{body}{note}</div>'}))
            elif view.get("model_id") not in state:
                plain = out.get("data", {}).get("text/plain")
                if plain:
                    outputs.append(nbformat.v4.new_output("display_data", data={"text/plain": plain}))
            outputs.extend(nbformat.from_dict(o) for o in extra)
        cell.outputs = outputs
    nb.metadata.pop("widgets", None)
    return replaced


# --- figures as files -------------------------------------------------------------------------------------------

def extract_images(nb: nbformat.NotebookNode, folder: str) -> dict[str, bytes]:
    """PNG/JPEG outputs to files under ``folder`` (relative to the page): {path: bytes}; the outputs point at them."""
    files = {}
    for ci, cell in enumerate(nb.cells):
        for oi, out in enumerate(cell.get("outputs", []) if cell.cell_type == "code" else []):
            for mime, ext in (("image/png", ".png"), ("image/jpeg", ".jpg")):
                data = out.get("data", {}).get(mime)
                if not data:
                    continue
                path = f"{folder}/cell{ci:02d}_{oi}{ext}"
                files[path] = base64.b64decode(data if isinstance(data, str) else "".join(data))
                out.setdefault("metadata", {}).setdefault("filenames", {})[mime] = path
    return files


# --- pages and the index ----------------------------------------------------------------------------------------

def first_heading(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, flags=re.M)
            if m:
                return m.group(1).strip()
    return ""


def nav_html(pages: list[Page], i: int) -> str:
    prev = f'<a href="{pages[i - 1].name}">&larr; {html.escape(pages[i - 1].number)} {html.escape(pages[i - 1].job)}</a>' if i else ""
    nxt = (f'<a href="{pages[i + 1].name}">{html.escape(pages[i + 1].number)} {html.escape(pages[i + 1].job)} &rarr;</a>'
           if i + 1 < len(pages) else "")
    here = f"{pages[i].number} {pages[i].job}".strip()
    return (f'<nav class="book-nav"><a href="index.html">Contents</a>{prev}{nxt}'
            f'<span class="book-here">{html.escape(here)}</span></nav>')


def render_page(page: Page, pages: list[Page], i: int, out: Path, exporter) -> None:
    nb = nbformat.read(page.source, as_version=4)
    page.title = first_heading(nb) or page.source.stem
    page.meta = nb.metadata.get("papermill", {})
    page.failed = page.failed or any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code"
                                     for o in c.get("outputs", []))
    static_widgets(nb)
    folder = page.name.removesuffix(".html") + "_files"
    files = extract_images(nb, folder)
    page.images = len(files)
    nb.metadata["title"] = f"{page.title}" + (f" — {page.job}" if page.job else "")
    body, _ = exporter.from_notebook_node(nb, resources={"book_nav": nav_html(pages, i)})
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    (out / page.name).write_text(body, encoding="utf-8")


def index_html(pages: list[Page], runs: Path, title: str) -> str:
    profiles = sorted({str(p.meta.get("parameters", {}).get("profile", "")) for p in pages} - {""})
    ends = sorted(str(p.meta.get("end_time", ""))[:10] for p in pages if p.meta.get("end_time"))
    when = f", executed {ends[0]}" + (f" to {ends[-1]}" if ends[-1] != ends[0] else "") if ends else ""
    try:
        shown = runs.resolve().relative_to(REPO)
    except ValueError:
        shown = runs.name
    items = []
    for number, where, what in CHAPTERS:
        mine = [p for p in pages if p.number == number]
        if not mine:
            items.append(f'<li><span class="num">{number}</span><span class="missing">{html.escape(where)}: '
                         f"no executed notebook in this run</span><p class=\"what\">{html.escape(what)}</p></li>")
            continue
        head = mine[0]
        shown_title = re.sub(rf"^{number}\s*[·.:-]?\s*", "", head.title)
        link = f'<span class="title"><a href="{head.name}">{html.escape(shown_title)}</a></span>'
        jobs = ""
        if len(mine) > 1 or not re.fullmatch(r"(seed \d+)?", head.job):
            jobs = '<div class="jobs">' + "".join(
                f'<a href="{p.name}"{" class=failed" if p.failed else ""}>{html.escape(p.job or p.title)}'
                f'{" (failed)" if p.failed else ""}</a>' for p in mine) + "</div>"
        items.append(f'<li><span class="num">{number}</span>{link}<p class="what">{html.escape(what)}</p>{jobs}</li>')
    made = dt.date.today().isoformat()
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(title)}</title>
<style>{INDEX_CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="sub">Srinivas &amp; Fleuret, <em>Knowledge Transfer with Jacobian Matching</em> (ICML 2018), taught and
reproduced by the <code>jkt</code> notebooks.</p>
<p>These pages are the notebooks exactly as the reproduction executed them ({len(pages)} notebooks from
<code>{html.escape(str(shown))}</code>{', profile ' + html.escape(', '.join(profiles)) if profiles else ''}{when}),
with their numbers, tables and figures. Notebooks 01 and 02 derive and check the mathematics; 03 to 05 run the
paper's experiments (one representative job each, or every job with <code>--all</code>); 06 gathers every run
into the paper's tables and
judges its claims. To run or change a notebook, open <code>notebooks/</code> in JupyterLab (<code>make lab</code>).</p>
<ol class="chapters">
{chr(10).join(items)}
</ol>
<footer>Built {made} by <code>python -m jkt.book</code> (<code>make book</code>): nbconvert pages, equations as
MathML, no network needed to read them.</footer>
</body>
</html>
"""


def prepare_out(out: Path) -> None:
    """Create ``out``, or empty it of a previous book; refuse a non-empty folder the book did not write."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"{out} is not empty and holds no book ({MARKER} missing): choose an empty or new "
                             f"folder with --out, or remove {out} first")
        for item in out.iterdir():
            if item.name == MARKER:
                continue
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m jkt.book; emptied and rewritten by every build\n")


def book_css() -> str:
    """JupyterLab's style sheet as nbconvert's lab template inlines it in every page, here once for all pages."""
    from nbconvert.exporters.templateexporter import TemplateExporter

    for base in TemplateExporter().template_paths:
        lab = Path(base) / "lab" / "static"
        if (lab / "index.css").exists():
            return "\n".join((lab / f).read_text() for f in ("index.css", "theme-light.css")) + BOOK_CSS
    return BOOK_CSS


def build(runs, out, title: str = "Knowledge Transfer with Jacobian Matching: the executed notebooks",
          everything: bool = False) -> list[Page]:
    """Render the run folder's executed notebooks into ``out``: one page each, ``index.html``, ``book.css``."""
    import jinja2

    runs, out = Path(runs), Path(out)
    pages = find_notebooks(runs, everything)
    if not pages:
        raise SystemExit(f"no executed notebooks under {runs} (expected taylor/, jacobians/, distill/, robustness/, "
                         f"transfer/ or 06_reproduce.ipynb, as python -m jkt reproduce writes them)")
    prepare_out(out)
    exporter = math_exporter_class()(template_name="lab", template_file="jkt_book.html.j2",
                                     extra_loaders=[jinja2.DictLoader({"jkt_book.html.j2": PAGE_TEMPLATE})],
                                     exclude_anchor_links=True)
    for i, page in enumerate(pages):
        render_page(page, pages, i, out, exporter)
    (out / "book.css").write_text(book_css(), encoding="utf-8")
    (out / "index.html").write_text(index_html(pages, runs, title), encoding="utf-8")
    return pages


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jkt.book", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="?", default="runs/cpu", help="the run folder (default runs/cpu)")
    parser.add_argument("--out", default="docs", help="where the site goes (default docs; emptied first)")
    parser.add_argument("--title", default="Knowledge Transfer with Jacobian Matching: the executed notebooks")
    parser.add_argument("--all", action="store_true",
                        help="every job of 03-05 (default: one representative each: per_class 10 seed 0, the "
                             "three routes, seed 0)")
    args = parser.parse_args(argv)
    pages = build(args.runs, args.out, args.title, args.all)
    failed = [p.source.name for p in pages if p.failed]
    print(f"{len(pages)} pages ({sum(p.images for p in pages)} figures) in {args.out}/, "
          f"{folder_size(Path(args.out)) / 1e6:.1f} MB: open {Path(args.out) / 'index.html'}")
    if failed:
        print(f"with errors (shown as failed in the index): {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
