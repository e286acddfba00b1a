"""The guidance panel as a learner meets it: JupyterLab from this environment on 127.0.0.1, a notebook
that shows `GuidancePanel` for the `ci` checkpoint, driven in headless Chromium with Playwright.

Playwright's own browser download is not reachable here, so it drives the system's `chromium`
(Debian's package; `.ci/run` installs it). Without a browser this test fails: it never skips.
"""
import base64
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from lib_cfg.sampling import load_pipeline
from lib_cfg.widgets import images_to_png

PROMPT, STEPS = "a red circle on a black background", 10
WAIT_MS = 180_000  # the first render waits for the kernel to start and import torch


def notebook(checkpoint: str) -> dict:
    source = ("from lib_cfg.sampling import load_pipeline\nfrom lib_cfg.widgets import GuidancePanel\n\n"
              f"pipe = load_pipeline({checkpoint!r}, 'cpu')\n"
              f"panel = GuidancePanel(pipe, prompt={PROMPT!r}, steps={STEPS})\npanel.widget")
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": "panel", "metadata": {}, "outputs": [],
                       "source": source}],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(ci_run, tmp_path_factory):
    """(base URL, token, folder): JupyterLab serving a folder that holds panel.ipynb."""
    _, _, checkpoint = ci_run
    root = tmp_path_factory.mktemp("lab")
    (root / "panel.ipynb").write_text(json.dumps(notebook(os.path.abspath(checkpoint))))
    port, token = free_port(), secrets.token_hex(16)
    # Its own runtime and config folders: nothing from (or left in) the user's ~/.jupyter.
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(root / ".runtime"), "JUPYTER_CONFIG_DIR": str(root / ".config")}
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise RuntimeError(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield base, token, root
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def shown_png(page) -> bytes:
    """The bytes behind the panel's <img> (ipywidgets serves them as a blob: URL)."""
    data = page.evaluate("""async () => {
        const img = document.querySelector('.jp-OutputArea .widget-image');
        const buffer = await (await fetch(img.src)).arrayBuffer();
        let s = ''; for (const b of new Uint8Array(buffer)) s += String.fromCharCode(b);
        return btoa(s);
    }""")
    return base64.b64decode(data)


def wait_for_new_image(page, old_src: str) -> str:
    page.wait_for_function("src => { const img = document.querySelector('.jp-OutputArea .widget-image');"
                           " return img && img.src && img.src !== src; }", arg=old_src, timeout=WAIT_MS)
    return page.eval_on_selector(".jp-OutputArea .widget-image", "img => img.src")


def wait_for_status(page, text: str) -> None:
    """Until the panel's status line starts with `text` (it is set after the image)."""
    page.wait_for_function("text => [...document.querySelectorAll('.jp-OutputArea .widget-label')]"
                           ".some(e => e.textContent.startsWith(text))", arg=text, timeout=WAIT_MS)


def assert_shows(page, pipe, prompt: str, scale: float):
    png, expected = shown_png(page), pipe([prompt] * 4, scale, STEPS, seed=0)
    if png != images_to_png(expected):  # same pixels, in case the bytes were re-encoded on the way
        shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        wanted = np.asarray(Image.open(io.BytesIO(images_to_png(expected))).convert("RGB"))
        assert shown.shape == wanted.shape and np.array_equal(shown, wanted), \
            f"the panel shows other pixels than pipe({prompt!r}, s={scale}) samples"
    return png


def test_panel_follows_the_slider_and_the_prompt_in_a_browser(lab, ci_run, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "no chromium on PATH: install it (apt-get install chromium; .ci/run does this)"
    base, token, _ = lab
    _, _, checkpoint = ci_run
    pipe = load_pipeline(checkpoint, "cpu")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            page.goto(f"{base}/lab/tree/panel.ipynb?token={token}", timeout=WAIT_MS)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=WAIT_MS)
            # The status bar says "Python 3 (ipykernel) | Idle" once the kernel is up; a cell run before that is lost.
            page.wait_for_function("() => document.querySelector('.jp-StatusBar-Widget')"
                                   " && document.body.innerText.includes('| Idle')", timeout=WAIT_MS)
            page.click(".jp-Notebook .jp-Cell .jp-InputArea-editor")
            page.keyboard.press("Shift+Enter")  # run the cell: the panel appears under it

            src = wait_for_new_image(page, "")
            wait_for_status(page, f"s = 3, seed 0, {STEPS} steps")
            first = assert_shows(page, pipe, PROMPT, 3.0)

            # The guidance-scale slider: its readout is editable, as a learner would type into it.
            readout = page.locator(".jp-OutputArea .widget-hslider").filter(has_text="guidance scale s") \
                .locator(".widget-readout")
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("7.5")
            page.keyboard.press("Enter")
            src = wait_for_new_image(page, src)
            wait_for_status(page, f"s = 7.5, seed 0, {STEPS} steps")
            at_75 = assert_shows(page, pipe, PROMPT, 7.5)
            assert at_75 != first, "moving the slider did not change the image"

            # Then the prompt.
            box = page.locator(".jp-OutputArea .widget-text input")
            box.fill("a blue square on a black background")
            box.press("Enter")
            wait_for_new_image(page, src)
            blue = assert_shows(page, pipe, "a blue square on a black background", 7.5)
            assert blue != at_75, "a new prompt did not change the image"
        finally:
            page.screenshot(path=str(tmp_path / "panel.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'panel.png'}")
            browser.close()
    assert (tmp_path / "panel.png").stat().st_size > 10_000
