"""The web page at ``/`` in a real browser (issue 26, item 3): Debian's headless Chromium driven
by Playwright (``executable_path`` set: Playwright never downloads a browser of its own) against
``deltapatch serve`` run as a process on 127.0.0.1. Any console error or page error fails it.

Skips with a reason where the ``playwright`` package or a ``chromium`` binary is missing
(``.ci/run`` installs both). ``DELTAPATCH_PAGE_SCREENSHOT=path.png`` saves a screenshot of the
page with its answers (how docs/serve-page.png was made).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import save_patch
from PIL import Image
from safetensors.torch import save_file

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the browser test needs the 'playwright' package")
CHROMIUM = os.environ.get("DELTAPATCH_CHROMIUM") or shutil.which("chromium") \
    or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (apt-get install "
                                "chromium, or set DELTAPATCH_CHROMIUM)")

SRC = Path(__file__).resolve().parents[2] / "src"
KEY = "page-test-key-0123456789"
UNAUTHORIZED = "status of 401"  # Chromium's console line for the one refusal the test provokes


def photo(path: Path) -> Path:
    """A smooth 96×96 picture (rings and a gradient): easier on the eye in the screenshot."""
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    r = np.hypot(xx - 0.4, yy - 0.55)
    rgb = np.stack([0.5 + 0.5 * np.sin(14 * r), xx, 1 - yy * 0.8], -1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def server(tmp_path, backbone):
    save_file(backbone.state_dict(), str(tmp_path / "w.safetensors"))
    root = tmp_path / "patches"
    save_patch(backbone, root, "digits", 10, 1)
    save_patch(backbone, root, "shapes", 4, [0, 2])
    save_patch(backbone, root, "linear-probe", 3, [], method="linear")
    save_patch(backbone, tmp_path / "more", "uploaded", 5, 2)
    (tmp_path / "key.txt").write_text(KEY + "\n")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "deltapatch", "--threads", "1", "serve", "--backbone",
         "cifar_resnet20", "--weights", str(tmp_path / "w.safetensors"), "--patches", str(root),
         "--port", str(port), "--api-key-file", str(tmp_path / "key.txt")],
        env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/ready", timeout=5) as r:
                    if json.load(r)["status"] == "ready":
                        break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the server did not become ready in 90 s"
                time.sleep(0.3)
        yield url, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_page_predicts_draws_lambda_and_uploads_and_deletes(server):
    url, tmp = server
    image = photo(tmp / "rings.png")
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(20_000)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            answer = page.goto(url + "/")
            assert answer.ok and "script-src 'self'" in answer.headers["content-security-policy"]
            rows = page.locator("#patches tbody tr[data-patch]")
            rows.first.wait_for()
            assert rows.evaluate_all("rs => rs.map(r => r.dataset.patch)") == [
                "digits", "linear-probe", "shapes"]
            assert "cifar_resnet20" in page.inner_text("#backbone")
            assert "head only" in page.inner_text("#patches tr[data-patch=linear-probe]")

            # choose an image; every task is checked by default: one fan-out request
            page.set_input_files("#image", str(image))
            page.fill("#top-k", "3")
            with page.expect_response("**/v1/predict") as predicted:
                page.click("#run")
            assert predicted.value.status == 200
            cards = page.locator("#results article.card")
            cards.nth(3).wait_for()
            assert cards.evaluate_all("cs => cs.map(c => c.dataset.task)") == [
                "digits", "linear-probe", "shapes", "__base__"]
            for task in ("digits", "linear-probe", "shapes", "__base__"):
                card = page.locator(f"article[data-task='{task}']")
                assert card.locator("tr").count() == 3, task  # top 3
            # Λ maps: digits patches the last stage, shapes stages 0 and 2 (k = 3: 6 cells)
            maps = {t: page.locator(f"article[data-task='{t}'] figure.map")
                    for t in ("digits", "shapes", "linear-probe", "__base__")}
            assert maps["digits"].count() == 1 and maps["shapes"].count() == 2
            assert maps["linear-probe"].count() == 0 and maps["__base__"].count() == 0
            for fig in (maps["digits"].first, maps["shapes"].nth(0), maps["shapes"].nth(1)):
                values = fig.locator("rect.cell").evaluate_all(
                    "rs => rs.map(r => Number(r.dataset.value))")
                assert len(values) == 6 and all(0 <= v <= 1 for v in values)
            assert page.locator("article[data-task=digits] .legend").count() == 1
            if os.environ.get("DELTAPATCH_PAGE_SCREENSHOT"):
                page.screenshot(path=os.environ["DELTAPATCH_PAGE_SCREENSHOT"], full_page=True)

            # admin without the key: refused, and the page says so in words
            page.click("button[data-delete=digits]")
            page.locator("#error").wait_for(state="visible")
            assert "401" in page.inner_text("#error") and "Bearer" in page.inner_text("#error")
            refused = [p for p in problems if UNAUTHORIZED in p]
            assert len(refused) == 1, problems
            problems.remove(refused[0])

            # with the key: upload a patch folder's two files, then delete it
            page.fill("#key", KEY)
            folder = tmp / "more" / "uploaded"
            page.set_input_files("#patch-files", [str(folder / "config.json"),
                                                  str(folder / "patch.safetensors")])
            page.click("#upload")
            page.locator("#patches tr[data-patch=uploaded]").wait_for()
            assert page.locator("#error").is_hidden()
            assert page.locator("#task-list input[value=uploaded]").is_checked()
            page.click("button[data-delete=uploaded]")
            page.locator("#patches tr[data-patch=uploaded]").wait_for(state="detached")
            assert "deleted" in page.inner_text("#status")
            assert page.locator("#patches tbody tr[data-patch]").count() == 3
        finally:
            browser.close()
    assert problems == [], problems  # no console error, no page error
