"""The benchmark command end to end: the table, the JSON it promises, and --compile. Speeds are never
asserted (they are measured and written down in BENCHMARKS.md), only that each number was measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

FLAGS = ("--val-size", "20", "--model", "alexnet_tiny", "--batch-size", "8", "--steps", "2", "--repeats", "1",
         "--threads", "1")


@pytest.mark.parametrize("extra", [(), ("--compile", "--no-seed-style")], ids=["eager", "compiled"])
def test_benchmark_writes_its_table_and_json(tiny_png: Path, tmp_path: Path, extra: tuple[str, ...]) -> None:
    out = tmp_path / "bench.json"
    result = run_cli("benchmark", "--data", str(tiny_png), *FLAGS, *extra, "--json", str(out), timeout=600)
    assert result.returncode == 0, result.stderr
    assert "end-to-end / compute-only" in result.stdout and "MFU" in result.stdout
    r = json.loads(out.read_text())
    assert r["model"] == "alexnet_tiny" and r["precision"] == "fp32" and r["batch_size"] == 8
    assert r["compile"] == ("--compile" in extra)
    assert ("torch.compile" in result.stdout) == ("--compile" in extra)
    assert r["end_to_end_ips"] > 0 and r["compute_only_ips"] > 0
    assert r["end_to_end_over_compute"] == pytest.approx(r["end_to_end_ips"] / r["compute_only_ips"])
    assert r["train_flops_per_image"] > 0 and r["matmul_flops_per_s"] > 0 and 0 < r["mfu"] < 1
    if "--no-seed-style" in extra:
        assert r["seed_style_ips"] is None and r["end_to_end_over_seed_style"] is None
    else:
        assert r["seed_style_ips"] > 0
        assert r["end_to_end_over_seed_style"] == pytest.approx(r["end_to_end_ips"] / r["seed_style_ips"])
