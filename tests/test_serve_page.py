"""The demo page in a real headless browser (Debian's chromium, driven by Playwright): pick an image, see its
label and the Grad-CAM overlay appear; a screenshot is kept in test-artifacts/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO, png, served

from alexnet_cifar10 import CLASSES

ARTIFACTS = REPO / "test-artifacts"


def chromium() -> str:
    """The browser binary: $CHROMIUM, else chromium on PATH; without one the test skips, except on CI."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("no chromium on PATH, and CI=true: .ci/run installs Debian's chromium package")
    pytest.skip("no chromium on PATH (apt-get install chromium)")


def test_pick_an_image_and_see_its_label_and_heatmap(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api") if os.environ.get("CI") != "true" else __import__(
        "playwright.sync_api", fromlist=["_"])
    browser_path = chromium()
    image = tmp_path / "red.png"
    image.write_bytes(png((64, 48), (220, 40, 30)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    with served("--weights", "seed") as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(server.url)
            page.wait_for_function("document.getElementById('model').textContent.includes('seed')")
            page.set_input_files("#files", str(image))
            page.wait_for_selector(".result img.gradcam", timeout=60_000)
            labels = page.eval_on_selector_all(".result li.label", "items => items.map(i => i.dataset.label)")
            assert len(labels) == 3 and set(labels) <= set(CLASSES)
            size = page.eval_on_selector(".result img.gradcam",
                                         "img => [img.complete, img.naturalWidth, img.naturalHeight]")
            assert size == [True, 256, 256]  # the overlay decoded in the browser
            page.set_input_files("#files", str(broken))
            error = page.wait_for_selector(".result .error", timeout=60_000).inner_text()
            assert error.startswith("broken.png: the uploaded file: not a readable PNG or JPEG image")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 10_000
