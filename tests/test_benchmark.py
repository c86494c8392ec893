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


def test_sweep_script_trains_each_entry_and_records_every_evaluation(tiny_png: Path, tmp_path: Path) -> None:
    """benchmarks/sweep.py runs on a lent GPU with no chance to debug it there: one tiny sweep here."""
    import subprocess
    import sys

    from conftest import REPO

    spec = tmp_path / "spec.json"
    common = {"epochs": 1, "batch_size": 16, "threads": 1, "tta": True}
    spec.write_text(json.dumps([
        {"name": "plain", "config": {**common, "model": "alexnet_tiny"}},
        {"name": "adhoc", "arch": {"convs": [[16, 3, 1], [32, 3, 1], [32, 3, 1], [32, 3, 1], [32, 3, 1]],
                                   "pool_after": [0, 1, 4], "hidden": 64, "batch_norm": True},
         "config": {**common, "recipe": "best", "whiten": True, "alternate_flip": True,
                                                 "lookahead": True, "decay_norm_bias": False,
                                                 "dirac_init": True, "norm_bias_lr_scale": 64.0,
                                                 "bn_momentum": 0.4}},
    ]))
    out = tmp_path / "sweep.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sweep.py"), str(spec), "--data",
                             str(tiny_png), "--out", str(out), "--val-size", "20", "--device", "cpu",
                             "--precision", "fp32"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["plain", "adhoc"] and all("error" not in r for r in rows)
    for r in rows:
        assert len(r["val_acc"]) == 1 and 0 <= r["final_val_acc"] <= 1
        assert 0 <= r["final_val_acc_without_tta"] <= 1 and 0 <= r["final_val_acc_with_tta_shift1"] <= 1
