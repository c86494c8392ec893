"""The notebook runs end to end in its quick setting (nbclient), so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import REPO, SHARED_ARCHIVE
from nbclient import NotebookClient


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
