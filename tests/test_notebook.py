"""The notebook runs end to end in its quick setting (nbclient), so it cannot rot, and what it prints holds up:
the quick subset has every class, and the quickly trained network is better than chance and not perfect."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, SHARED_ARCHIVE
from nbclient import NotebookClient

from alexnet_cifar10 import CLASSES


def test_notebook_quick_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache: Path) -> None:
    monkeypatch.setenv("ALEXNET_CIFAR10_CACHE", str(shared_cache))
    monkeypatch.setenv("ALEXNET_CIFAR10_QUICK", "1")
    monkeypatch.setenv("ALEXNET_CIFAR10_DATA", str(SHARED_ARCHIVE))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(REPO / "notebooks" / "AlexNet_CIFAR10.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "run folder:" in outputs and "example.png" in outputs
    assert "ship.png [('ship', " in outputs  # the shipped best weights, before any training, get the ship right
    assert (tmp_path / "runs" / "notebook-quick" / "report.html").is_file()
    assert (tmp_path / "runs" / "notebook-quick" / "gradcam.png").is_file()  # the report's Grad-CAM panel
    [panel] = [c for c in nb.cells if c.cell_type == "code" and "gradcam_panel(model" in c.source]
    assert [o["output_type"] for o in panel.outputs] == ["execute_result"]  # the figure, not the install hint
    assert "Figure" in panel.outputs[0]["data"]["text/plain"]
    counts = dict(re.findall(r"^(train|val) +\d+ images, per class: (\[[\d, ]+\])$", outputs, re.M))
    assert counts == {"train": str([200] * 10), "val": str([50] * 10)}, outputs
    per_class = dict(re.findall(r"^(\w+) +(\S+)% +50$", outputs, re.M))  # the validation table: 50 of each class
    assert list(per_class) == list(CLASSES), outputs
    overall = float(re.search(r"^all +(\S+)% +500$", outputs, re.M).group(1))
    assert 15 < overall < 100, outputs  # chance is 10 %; the quick run trains one epoch of a tiny network
