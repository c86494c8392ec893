"""The README's two pictures from the shipped weights: a Grad-CAM contact sheet and a screenshot of the demo page.

    python scripts/docs_images.py --data PATH [--weights best] [--out docs/images]

Takes one validation image of each of eight classes (the split `train` holds out), runs `alexnet-cifar10 explain`
on them into a temporary folder (its sheet.png becomes gradcam.png), then serves the weights, uploads four of the
images to the page in headless chromium (Debian's package; Playwright drives it) and keeps serve.png.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from alexnet_cifar10 import CLASSES, load_cifar10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", default="best")
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    val = load_cifar10(args.data).val
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for c, name in enumerate(CLASSES[:8]):
            i = int((val.labels == c).nonzero()[3])
            Image.fromarray(val.images[i].permute(1, 2, 0).numpy()).save(folder / f"{c}-{name}.png")
        cli = [sys.executable, "-m", "alexnet_cifar10"]
        subprocess.run([*cli, "explain", "--weights", args.weights, str(folder), "--out", f"{tmp}/explain"],
                       check=True)
        shutil.copyfile(f"{tmp}/explain/sheet.png", out / "gradcam.png")
        server = subprocess.Popen([*cli, "serve", "--weights", args.weights, "--port", "0"], stdout=subprocess.PIPE,
                                  text=True)
        try:
            url = re.search(r"http://\S+/", server.stdout.readline()).group(0)
            from playwright.sync_api import sync_playwright

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 900, "height": 700})
                page.goto(url)
                for path in sorted(folder.iterdir())[:4]:
                    page.set_input_files("#files", str(path))
                    page.wait_for_function(f"document.querySelectorAll('img.gradcam').length >= "
                                           f"{sorted(folder.iterdir()).index(path) + 1}")
                page.screenshot(path=str(out / "serve.png"), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {out / 'gradcam.png'} and {out / 'serve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
