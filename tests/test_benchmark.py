"""The benchmark command end to end: the table, the JSON it promises, and --compile. Speeds are never
asserted (they are measured and written down in BENCHMARKS.md), only that each number was measured."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

from alexnet_cifar10 import models

FLAGS = ("--val-size", "20", "--model", "alexnet_tiny", "--batch-size", "8", "--steps", "2", "--repeats", "1",
         "--threads", "1", "--precision", "fp32")


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
    assert r["train_flops_per_image"] > 0 and r["matmul_flops_per_s"] > 0
    # MFU against the measured matmul rate, not a datasheet peak: it can pass 100 % (BENCHMARKS.md says why)
    assert r["mfu"] == pytest.approx(r["end_to_end_ips"] * r["train_flops_per_image"] / r["matmul_flops_per_s"])
    if "--no-seed-style" in extra:
        assert r["seed_style_ips"] is None and r["end_to_end_over_seed_style"] is None
    else:
        assert r["seed_style_ips"] > 0
        assert r["end_to_end_over_seed_style"] == pytest.approx(r["end_to_end_ips"] / r["seed_style_ips"])


def sweep_command(spec: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "benchmarks" / "sweep.py"), str(spec), "--data", str(data), "--out", str(out),
            "--val-size", "20", "--device", "cpu", "--precision", "fp32", *extra]


@pytest.mark.parametrize("spec", sorted((REPO / "benchmarks").glob("*.json")), ids=lambda p: p.name)
def test_every_published_sweep_entry_builds_its_config_and_network(spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in a spec would surface only minutes into a sweep: build every entry here."""
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))  # the entries' ad-hoc networks stay local
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sweep = importlib.import_module("sweep")
    runs = json.loads(spec.read_text())
    assert runs and len({run["name"] for run in runs}) == len(runs)
    for run in runs:
        config = sweep.entry_config(run, "cpu", "bf16")
        model = models.create_model(config.model, dropout=config.dropout)
        with torch.no_grad():
            assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10), run["name"]


def test_sweep_script_trains_each_entry_and_records_every_evaluation(tiny_png: Path, tmp_path: Path) -> None:
    """benchmarks/sweep.py end to end: one tiny sweep."""
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
    result = subprocess.run(sweep_command(spec, tiny_png, out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["plain", "adhoc"] and all("error" not in r for r in rows)
    for r in rows:
        assert len(r["val_acc"]) == 1 and 0 <= r["final_val_acc"] <= 1
        assert 0 <= r["final_val_acc_without_tta"] <= 1 and 0 <= r["final_val_acc_with_tta_shift1"] <= 1


def test_a_sweep_run_stopped_by_its_time_limit_is_finished_by_the_next_sweep(tiny_png: Path, tmp_path: Path) -> None:
    """A sweep stopped with SIGTERM (e.g. by timeout(1)) keeps last.pt, and the next sweep with the same --keep
    finishes it; a stopped run with other settings or other proxy data sizes is refused, never resumed."""
    spec, keep = tmp_path / "spec.json", tmp_path / "keep"
    entry = {"name": "long", "config": {"epochs": 30, "batch_size": 8, "threads": 1, "model": "alexnet_tiny"}}
    spec.write_text(json.dumps([entry, {**entry, "name": "next"}]))
    first = subprocess.Popen(sweep_command(spec, tiny_png, tmp_path / "1.json", "--keep", str(keep)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    end = time.monotonic() + 300
    while not (keep / "long" / "last.pt").exists() and first.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    first.send_signal(signal.SIGTERM)  # what timeout(1) sends
    out, err = first.communicate(timeout=300)
    assert first.returncode == 143, err  # the sweep stops: the next entry is not started
    [stopped] = json.loads((tmp_path / "1.json").read_text())
    assert "interrupted" in stopped["error"] and (keep / "long" / "last.pt").is_file()
    assert err.strip().splitlines()[-1].startswith("sweep stopped: ") and not (keep / "next").exists()
    done = len((keep / "long" / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 30

    other = tmp_path / "other"
    shutil.copytree(keep, other)
    spec.write_text(json.dumps([{**entry, "config": {**entry["config"], "lr": 0.5}}]))
    refused = subprocess.run(sweep_command(spec, tiny_png, tmp_path / "2.json", "--keep", str(other)),
                             capture_output=True, text=True, timeout=300)
    row = json.loads((tmp_path / "2.json").read_text())[0]
    assert refused.returncode == 0 and "other settings (lr)" in row["error"], refused.stdout
    smaller = tmp_path / "smaller"  # the same recipe as a proxy on part of the data is another run too
    shutil.copytree(keep, smaller)
    spec.write_text(json.dumps([entry]))
    refused = subprocess.run(sweep_command(spec, tiny_png, tmp_path / "2.json", "--keep", str(smaller),
                                           "--train-size", "20"), capture_output=True, text=True, timeout=300)
    row = json.loads((tmp_path / "2.json").read_text())[0]
    assert refused.returncode == 0 and "other settings (train_size)" in row["error"], refused.stdout

    spec.write_text(json.dumps([entry]))
    second = subprocess.run(sweep_command(spec, tiny_png, tmp_path / "3.json", "--keep", str(keep)),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "resumes its stopped run" in second.stdout
    row = json.loads((tmp_path / "3.json").read_text())[0]
    assert "error" not in row and len(row["val_acc"]) == 30 and 0 <= row["final_val_acc"] <= 1
    epochs = [json.loads(line)["epoch"] for line in (keep / "long" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 31)) and not list((keep / "long").glob("*.pt"))


def test_a_proxy_sweep_trains_on_part_of_the_data_and_scores_the_whole_validation_split(
        tiny_png: Path, tmp_path: Path) -> None:
    """--train-size and --epoch-val-size make a CPU ablation affordable; its final numbers must still be on every
    validation image, or proxy rows could not be set beside full runs."""
    from alexnet_cifar10 import evaluate, load_cifar10, load_model
    from alexnet_cifar10.data.splits import stratified_split

    spec, keep = tmp_path / "spec.json", tmp_path / "keep"
    spec.write_text(json.dumps([{"name": "proxy", "config": {"epochs": 1, "batch_size": 4, "threads": 1,
                                                             "model": "alexnet_tiny"}}]))
    result = subprocess.run(sweep_command(spec, tiny_png, tmp_path / "out.json", "--train-size", "20",
                                          "--epoch-val-size", "10", "--keep", str(keep)),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    row = json.loads((tmp_path / "out.json").read_text())[0]
    assert row["train_size"] == 20 and row["epoch_val_size"] == 10
    epoch = json.loads((keep / "proxy" / "metrics.jsonl").read_text())
    assert round(epoch["images_per_s"] * epoch["seconds"]) == 20  # 20 of the 40 training images were seen

    val = load_cifar10(str(tiny_png), val_size=20, seed=0).split("val")
    model = load_model(keep / "proxy" / "model.safetensors")
    whole = evaluate(model, val.images, val.labels)
    assert row["final_val_acc"] == pytest.approx(whole.accuracy)  # plain: the entry has no --tta
    _, part = stratified_split(val.labels, 10, seed=0)
    assert epoch["val_loss"] == pytest.approx(evaluate(model, val.images[part], val.labels[part]).loss, rel=1e-6)
    assert epoch["val_loss"] != pytest.approx(whole.loss, rel=1e-6)  # the epochs saw the part, not the whole
