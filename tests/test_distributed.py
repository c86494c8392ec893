"""torchrun on CPU with gloo, two processes on 127.0.0.1: same result as one process, rank 0 writes,
DDP and single-process checkpoints resume each other, and a dead rank ends the job."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

# fp32 pinned: two ranks' averaged gradients match one process's to fp32 tolerance, not to bf16's
FLAGS = ("--val-size", "20", "--batch-size", "8", "--dropout", "0", "--model", "alexnet_tiny", "--threads", "1",
         "--precision", "fp32", "--no-progress")


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """--standalone: the rendezvous store binds a port the system picks (localhost:0) and keeps it, where a port
    found free beforehand could be taken by another test before torchrun binds it."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "alexnet_cifar10", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "ALEXNET_CIFAR10_DIST_TIMEOUT": "30"}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tiny_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("single") / "run"
    result = run_cli("train", "--data", str(tiny_png), "--epochs", "2", "--out", str(run), *FLAGS)
    assert result.returncode == 0, result.stderr
    return run


def assert_same(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
    assert losses(a) == pytest.approx(losses(b), rel=1e-5)


def test_two_ranks_match_one_process(single: Path, tiny_png: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    result = subprocess.run(torchrun("train", "--data", str(tiny_png), "--epochs", "2", "--out", str(run), *FLAGS),
                            capture_output=True, text=True, env=env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same(single, run)
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    names = sorted(p.name for p in run.iterdir())
    assert names == sorted(p.name for p in single.iterdir())  # one writer: no duplicates, no leftovers
    assert result.stdout.count("test accuracy") == 1  # only rank 0 reports


def test_checkpoints_move_between_ddp_and_single_process(single: Path, tiny_png: Path, tmp_path: Path) -> None:
    ddp_then_single = tmp_path / "a"
    first = subprocess.run(torchrun("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(ddp_then_single),
                                    *FLAGS), capture_output=True, text=True, env=env(), timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("train", "--resume", str(ddp_then_single), "--epochs", "2", "--no-progress")
    assert second.returncode == 0, second.stderr
    assert_same(single, ddp_then_single)

    single_then_ddp = tmp_path / "b"
    assert run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(single_then_ddp),
                   *FLAGS).returncode == 0
    resumed = subprocess.run(torchrun("train", "--resume", str(single_then_ddp), "--epochs", "2", "--no-progress"),
                             capture_output=True, text=True, env=env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(single, single_then_ddp)


def test_a_dead_rank_ends_the_job(tiny_png: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    proc = subprocess.Popen(torchrun("train", "--data", str(tiny_png), "--epochs", "500", "--out", str(run), *FLAGS),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "training never started"
            time.sleep(0.2)
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(children) == 2
        os.kill(children[1], signal.SIGKILL)
        start = time.monotonic()
        _, err = proc.communicate(timeout=90)
        # rank 0 meets the dead peer in its next collective and says so in its own line, long before the 30 s
        # distributed timeout (env()) would end it; torchrun's report then lists rank 0 with exit code 1
        assert time.monotonic() - start < 30, err[-3000:]
        assert proc.returncode != 0
        ours = [line for line in err.splitlines() if line.startswith("alexnet-cifar10: ")]
        assert len(ours) == 1 and ours[0].startswith("alexnet-cifar10: error: a distributed peer failed"), err[-3000:]
        assert ours[0].endswith("; the job stops") and len(ours[0]) <= 300
        assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s*exitcode\s*: 1 ", err), err[-3000:]
        torch.load(run / "last.pt", weights_only=True)  # the last checkpoint survives
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_rank_whose_peers_never_come_ends_the_job_after_the_distributed_timeout(tiny_png: Path,
                                                                                  tmp_path: Path) -> None:
    """Rank 1 of two, with no rank 0 to host the rendezvous: it gives up after ALEXNET_CIFAR10_DIST_TIMEOUT seconds
    (3 here, where the default 120 would outlast the test) and says so in one line. The port is held bound, not
    listening, by this test, so no other process can answer on it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        environment = {**env(), "ALEXNET_CIFAR10_DIST_TIMEOUT": "3", "WORLD_SIZE": "2", "RANK": "1",
                       "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(held.getsockname()[1])}
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "alexnet_cifar10", "train", "--data", str(tiny_png),
                               "--epochs", "1", "--out", str(tmp_path / "run"), *FLAGS],
                              capture_output=True, text=True, env=environment, timeout=60)
        elapsed = time.monotonic() - start
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("alexnet-cifar10: ")]  # besides c10d's log
    assert len(ours) == 1 and ours[0].startswith("alexnet-cifar10: error: a distributed peer failed or timed out")
    assert "3000ms" in ours[0] and elapsed < 40, proc.stderr
