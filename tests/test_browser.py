"""The notebooks in a real browser: JupyterLab on localhost, driven by Playwright in Debian's Chromium.

What a student does, checked end to end: open notebook 01, run all cells, see the sigma slider and the network
dropdown as widgets (not their text fallback), move the slider and see the figure redrawn; run notebook 03 and
see a progress bar. No cell may show an error. Everything runs on copies of the notebooks in pytest's
``tmp_path`` with ``JKT_PROFILE=smoke`` and the data, records and figures folders there too, so nothing of the
repository is written. Screenshots go to ``<tmp_path>/screenshots`` and are copied to ``runs/browser/``.

Needs Chromium (``apt-get install chromium``: ``/usr/bin/chromium``, or ``$JKT_CHROMIUM``) and the Python
package ``playwright`` (``pip install playwright``; its own browser download is not needed); skipped without.
``.ci/run`` installs both.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHOTS_COPY = REPO / "runs" / "browser"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROGRESS = ".jp-OutputArea .widget-hprogress, .jp-OutputArea progress"


def chromium_path() -> str | None:
    """``$JKT_CHROMIUM``, else Debian's ``/usr/bin/chromium``, else ``chromium`` or ``chromium-browser`` on PATH."""
    for candidate in (os.environ.get("JKT_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser():
    """(sync_playwright, chromium path), or skip with what is missing and how to get it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is missing: .venv/bin/pip install playwright "
                    "(.ci/run does it; Playwright's own browser download is not needed)")
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no Chromium found (/usr/bin/chromium, $JKT_CHROMIUM or chromium on PATH): "
                    "apt-get install chromium (.ci/run does it)")
    return sync_playwright, chromium


def launch(p, chromium: str):
    """Chromium through Playwright with this machine's flags (Playwright gives it a fresh --user-data-dir);
    skip when it cannot start (a broken or half-installed browser is the set-up's problem, not the notebooks')."""
    from playwright.sync_api import Error

    try:
        return p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
    except Error as e:
        pytest.skip(f"Chromium at {chromium} did not start under Playwright ({str(e).splitlines()[0]}): "
                    "reinstall it with apt-get install --reinstall chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(proc: subprocess.Popen, grace: float = 15):
    """SIGTERM to JupyterLab (it shuts its kernels down), then SIGKILL to whatever of it is left."""
    if proc.poll() is None:
        family = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def write_settings(settings: Path):
    """JupyterLab user settings for a headless check: every cell in the DOM, no autosave, no news."""
    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free port of 127.0.0.1 with a random token, serving copies of the notebooks."""
    require_browser()
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    root.mkdir()
    for name in ("01_taylor_equivalence.ipynb", "03_distill.ipynb"):
        shutil.copy(REPO / "notebooks" / name, root / name)
    write_settings(tmp / "settings")
    env = {**os.environ, "JKT_PROFILE": "smoke", "JKT_RESULTS": str(tmp / "results"),
           "JKT_DATA": str(tmp / "data"), "JKT_FIGURES": str(tmp / "figures"), "OMP_NUM_THREADS": "1",
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
           "JUPYTER_DATA_DIR": str(tmp / "jupyter-data"), "IPYTHONDIR": str(tmp / "ipython"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces")}
    env.pop("JKT_PROGRESS", None)  # progress bars on: notebook 03 must show one
    port, token = free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(tmp / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"url": url, "token": token, "root": root, "tmp": tmp}
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="module")
def page(lab):
    """One Chromium page (a fresh profile from Playwright, the flags this machine needs), closed after."""
    sync_playwright, chromium = require_browser()
    shots = lab["tmp"] / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = launch(p, chromium)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            pg = context.new_page()
            pg.shots = shots
            yield pg
        finally:
            browser.close()
    SHOTS_COPY.mkdir(parents=True, exist_ok=True)
    for shot in sorted(shots.glob("*.png")):
        shutil.copy(shot, SHOTS_COPY / shot.name)
        print(f"screenshot: {shot}  (copy: {SHOTS_COPY / shot.name})")


def screenshot(page, name: str, element=None):
    path = page.shots / f"{name}.png"
    (element or page).screenshot(path=str(path))
    return path


def kernel_state(lab, name: str) -> str | None:
    """The execution state of ``name``'s kernel as the server reports it (``/api/sessions``), None if none."""
    try:
        with urllib.request.urlopen(f"{lab['url']}/api/sessions?token={lab['token']}", timeout=5) as r:
            sessions = json.load(r)
    except OSError:
        return None
    for s in sessions:
        if Path(s.get("path", "")).name == name and s.get("kernel"):
            return s["kernel"].get("execution_state")
    return None


def lab_log(lab, chars: int = 2500) -> str:
    return (lab["tmp"] / "jupyterlab.log").read_text()[-chars:]


def answer_select_kernel(page) -> bool:
    """Accept JupyterLab's "Select Kernel" dialog (the notebook's own kernel) if it is open; True if it was."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if not dialog.count():
        return False
    dialog.get_by_role("button", name="Select").click()
    return True


def wait_for_kernel(page, lab, name: str, timeout: float = 120):
    """Until the server reports the notebook's kernel idle and the page shows it idle; answers JupyterLab's
    "Select Kernel" dialog whenever it appears (it does when the kernel does not start by itself)."""
    deadline = time.monotonic() + timeout
    while True:
        answer_select_kernel(page)
        idle_on_page = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if kernel_state(lab, name) == "idle" and idle_on_page:
            return
        if time.monotonic() > deadline:
            screenshot(page, f"{Path(name).stem}_no_kernel")
            pytest.fail(f"{name}: no idle kernel after {timeout:.0f} s (server: {kernel_state(lab, name)}, "
                        f"page idle: {idle_on_page}); JupyterLab's log ends:\n{lab_log(lab)}")
        page.wait_for_timeout(500)


def run_all(page):
    """Click into the notebook (so it is JupyterLab's current widget), then Run > Run All Cells once enabled."""
    page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']:not(.lm-mod-disabled)").click(timeout=30_000)


def open_notebook(page, lab, name: str):
    """Open ``name`` in JupyterLab (a reset workspace) and wait until its kernel is idle."""
    page.goto(f"{lab['url']}/lab/tree/{name}?reset&token={lab['token']}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    wait_for_kernel(page, lab, name)


def open_and_run_all(page, lab, name: str, timeout: float = 150, watch=None):
    """Open a notebook, wait for its kernel, Run > Run All Cells, and wait until every cell has run (or an error
    stopped the run), calling ``watch()`` meanwhile. Returns the notebook as saved by Ctrl+S (the copy in
    tmp_path, never the repository's)."""
    open_notebook(page, lab, name)
    prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt")
    run_all(page)
    started = time.monotonic()
    retried = False
    deadline = started + timeout
    page.wait_for_timeout(1000)
    while True:
        if watch:
            watch()
        if answer_select_kernel(page):  # Run All without a kernel asks for one; cells run once it is answered
            warnings.warn(f"{name}: JupyterLab asked for a kernel after Run All; answered Select")
        texts = [t.strip() for t in prompts.all_inner_texts()]
        busy = any("*" in t for t in texts)
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if not busy and idle and texts and (all(t not in ("[ ]:", "") for t in texts) or error_shown(page)):
            break
        if not retried and time.monotonic() - started > 30 and all(t in ("[ ]:", "") for t in texts):
            # Run All did not take (not one cell queued in 30 s): record it and do what a person would, reload
            # the page (a fresh connection to the kernel) and run all again. The warning and the screenshot say so.
            screenshot(page, f"{Path(name).stem}_run_all_not_taken")
            warnings.warn(f"{name}: Run All queued no cell in 30 s (kernel {kernel_state(lab, name)}); "
                          "reloaded the page and ran all again")
            retried = True
            open_notebook(page, lab, name)
            run_all(page)
            started = time.monotonic()
            deadline = started + timeout
        if time.monotonic() > deadline:
            screenshot(page, f"{Path(name).stem}_timeout")
            pytest.fail(f"{name}: not finished after {timeout:.0f} s; prompts {texts}; kernel "
                        f"{kernel_state(lab, name)}; JupyterLab's log ends:\n{lab_log(lab)}")
        page.wait_for_timeout(500)
    saved = lab["root"] / name
    before = saved.stat().st_mtime_ns
    page.keyboard.press("Control+s")
    for _ in range(100):
        if saved.stat().st_mtime_ns != before:
            break
        page.wait_for_timeout(100)
    page.wait_for_timeout(500)
    return json.loads(saved.read_text())


def error_shown(page) -> bool:
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                        has_text="Traceback").count() > 0


def assert_no_errors(nb: dict, name: str):
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{name}: error output in cells (index, name, message): {errors}"
    unrun = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and c.get("execution_count") is None]
    assert not unrun, f"{name}: cells not executed: {unrun}"


def test_notebook_01_widgets_in_jupyterlab(lab, page):
    name = "01_taylor_equivalence.ipynb"
    nb = open_and_run_all(page, lab, name)
    screenshot(page, "01_after_run_all")
    assert_no_errors(nb, name)
    assert not error_shown(page)

    slider = page.locator(".jp-OutputArea .widget-slider").first
    slider.wait_for(state="visible", timeout=30_000)
    dropdown = page.locator(".jp-OutputArea .widget-dropdown select")
    assert dropdown.count() == 1, "the network dropdown did not render as a widget"
    assert page.locator(".jp-OutputArea-output", has_text="HBox(children=").count() == 0, \
        "a widget showed its text fallback instead of rendering"
    cell = page.locator(".jp-CodeCell", has=page.locator(".widget-slider")).first
    cell.scroll_into_view_if_needed()
    image = cell.locator(".widget-output img").first
    image.wait_for(state="visible", timeout=60_000)
    before = image.get_attribute("src")
    readout = cell.locator(".widget-readout").first.inner_text()
    screenshot(page, "01_widget_before", cell)

    # Move the slider as a person would: drag its handle to the right (continuous_update=False: one redraw).
    handle = cell.locator(".widget-slider .noUi-handle").first
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 25, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    page.wait_for_function(
        "([cell, before]) => { const img = cell.querySelector('.widget-output img');"
        " return img && img.getAttribute('src') !== before; }",
        arg=[cell.element_handle(), before], timeout=90_000)
    after_readout = cell.locator(".widget-readout").first.inner_text()
    assert after_readout != readout, f"the slider's value did not change ({readout})"
    assert cell.locator(".widget-output img").first.get_attribute("src") != before
    screenshot(page, "01_widget_after_slider", cell)
    assert not error_shown(page)


def test_notebook_03_progress_bar_in_jupyterlab(lab, page):
    name = "03_distill.ipynb"
    # tqdm's bars close when done (leave=False): record any that appears while the notebook runs.
    page.goto("about:blank")
    page.add_init_script(
        "window.__jktProgress = 0; new MutationObserver(() => {"
        f" const bars = document.querySelectorAll({json.dumps(PROGRESS)});"
        " if (bars.length) window.__jktProgress = Math.max(window.__jktProgress, bars.length);"
        "}).observe(document, {childList: true, subtree: true});")
    shot_taken = {}

    def watch():  # a picture of the first bar seen, scrolled into view (it may vanish at any moment)
        bar = page.locator(PROGRESS).first
        if shot_taken or not bar.count():
            return
        try:
            cell = page.locator(".jp-CodeCell", has=page.locator(PROGRESS)).first
            cell.scroll_into_view_if_needed(timeout=2000)
            cell.screenshot(path=str(page.shots / "03_progress_bar.png"), timeout=3000)
            shot_taken["path"] = page.shots / "03_progress_bar.png"
        except Exception:  # gone before the picture: try on the next one
            pass

    nb = open_and_run_all(page, lab, name, watch=watch)
    screenshot(page, "03_after_run_all")
    assert_no_errors(nb, name)
    seen = page.evaluate("window.__jktProgress")
    assert seen > 0, "no tqdm progress bar (.widget-hprogress / <progress>) rendered while notebook 03 ran"
    assert not error_shown(page)

