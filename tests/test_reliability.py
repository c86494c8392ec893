"""Crash safety for real: SIGKILL at several moments, resume, and compare with an uninterrupted run."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet_cifar10 import make_config, train
from alexnet_cifar10.errors import AlexNetCifarError

FLAGS = ("--val-size", "20", "--batch-size", "8", "--epochs", "2", "--threads", "1", "--no-progress",
         "--checkpoint-every", "1", "--model", "alexnet_tiny")


def start(data: Path, run: Path, resume: bool, *extra: str) -> subprocess.Popen[str]:
    args = (["--resume", str(run), "--no-progress", *extra] if resume
            else ["--data", str(data), "--out", str(run), *FLAGS, *extra])
    return subprocess.Popen([sys.executable, "-m", "alexnet_cifar10", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(data: Path, run: Path) -> None:
    """Resume (or start afresh when no checkpoint was written yet): one call, which must complete the run."""
    proc = start(data, run, resume=(run / "last.pt").exists())
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "last.pt", weights_only=True)
    tensors = dict(state["model"])
    optimizers = state["optimizer"].get("optimizers", [state["optimizer"]])  # --optimizer muon keeps two
    for j, optimizer in enumerate(optimizers):
        for i, s in optimizer["state"].items():
            tensors |= {f"opt{j}.{i}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)}
    for average in ("ema_model", "lookahead_model"):
        tensors |= {f"{average}.{k}": v for k, v in (state.get(average) or {}).items()}
    return tensors


def assert_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert torch.load(b / "last.pt", weights_only=True)["epoch"] == 2


@pytest.fixture(scope="module")
def reference(tiny_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    proc = start(tiny_png, run, resume=False)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return run


def global_step(run: Path) -> int:
    try:
        return torch.load(run / "last.pt", weights_only=True)["global_step"]
    except Exception:  # noqa: BLE001 - not written yet
        return 0


def wait_for(predicate, timeout: float = 120) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.02)


IN_CREATE = 0x100


def freeze_during_a_write(proc: subprocess.Popen[str], run: Path, name: str = "last.pt", timeout: float = 120) -> str:
    """SIGSTOP ``proc`` while it writes ``name``: inotify reports each temporary file of the atomic write as it is
    created, the process is stopped at once, and it counts only when the file is still there with the process
    stopped (else it goes on to the next write). Returns the temporary file's name."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        wait_for(run.is_dir)
        assert libc.inotify_add_watch(fd, os.fsencode(run), IN_CREATE) >= 0, os.strerror(ctypes.get_errno())
        end = time.monotonic() + timeout
        while time.monotonic() < end and proc.poll() is None:
            if not select.select([fd], [], [], 0.5)[0]:
                continue
            events, offset = os.read(fd, 1 << 16), 0
            while offset < len(events):
                _, _, _, length = struct.unpack_from("iIII", events, offset)
                created = events[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                if created.startswith(f".{name}.") and created.endswith(".tmp"):
                    proc.send_signal(signal.SIGSTOP)
                    if (run / created).exists():
                        return created
                    proc.send_signal(signal.SIGCONT)
        raise AssertionError(f"no write of {name} was caught under way")
    finally:
        os.close(fd)


@pytest.mark.parametrize("moment", ["first-checkpoint", "mid-epoch-1", "epoch-2", "during-write", "twice"])
def test_sigkill_then_resume_is_bit_identical(moment: str, reference: Path, tiny_png: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start(tiny_png, run, resume=False)
    step = {"first-checkpoint": 1, "mid-epoch-1": 3, "epoch-2": 7, "during-write": 4, "twice": 2}[moment]

    wait_for(lambda: global_step(run) >= step)
    if moment == "during-write":
        temporary = freeze_during_a_write(proc, run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if moment == "during-write":  # killed with its write half done: the half-written file is left behind
        assert (run / temporary).exists() and global_step(run) >= step
    if moment == "twice":
        proc = start(tiny_png, run, resume=True)
        wait_for(lambda: global_step(run) >= 6)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finish(tiny_png, run)
    assert_identical(reference, run)
    assert not list(run.glob(".*.tmp"))  # the resume removed what the killed write left


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_sigterm_checkpoint_and_exit(sig: int, code: int, reference: Path, tiny_png: Path,
                                            tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start(tiny_png, run, resume=False)
    wait_for(lambda: (run / "last.pt").exists())
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"--resume {run}" in lines[0] and "Traceback" not in err
    finish(tiny_png, run)
    assert_identical(reference, run)


WEIGHT_AVERAGES = ("--lookahead", "--ema", "0.9", "--no-decay-norm-bias", "--optimizer", "sgd", "--weight-decay",
                   "5e-4", "--norm-bias-lr-scale", "8", "--dirac-init", "--bn-momentum", "0.4")
MUON = ("--optimizer", "muon", "--muon-weight-decay", "0.05", "--freeze-bn-scale", "--whiten", "--lookahead",
        "--model", "alexnet_narrow_bn")  # a network with BatchNorm, for its frozen scales


@pytest.mark.parametrize("extra", [WEIGHT_AVERAGES, MUON], ids=["weight-averages", "muon"])
def test_sigkill_then_resume_keeps_the_optimizer_and_averages_bit_identical(extra: tuple[str, ...], tiny_png: Path,
                                                                           tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    proc = start(tiny_png, reference, False, *extra)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    state = torch.load(reference / "last.pt", weights_only=True)
    assert state["lookahead_model"] is not None
    if "muon" in extra:  # Muon's momentum buffers: the five filter banks and the two hidden linear weights
        muon_state = state["optimizer"]["optimizers"][1]["state"]
        assert sorted(s["momentum_buffer"].ndim for s in muon_state.values()) == [2, 2, 4, 4, 4, 4]  # 1st frozen
        assert torch.equal(state["model"]["features.1.weight"], torch.ones(32))  # BatchNorm scale frozen at 1
    run = tmp_path / "run"
    proc = start(tiny_png, run, False, *extra)
    wait_for(lambda: global_step(run) >= 6)
    proc.send_signal(signal.SIGKILL)  # after the first lookahead pull at step 5
    proc.wait()
    finish(tiny_png, run)
    assert_identical(reference, run)


@pytest.mark.parametrize("checkpoint_every", ["1", "0"])  # a checkpoint after step 1; none before epoch 1 ends
def test_non_finite_loss_stops_with_a_clear_message(tiny_png: Path, tmp_path: Path, checkpoint_every: str) -> None:
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "alexnet_cifar10", "train", "--data", str(tiny_png), "--out",
                           str(run), *FLAGS, "--optimizer", "sgd", "--lr", "100", "--precision", "fp32",
                           "--checkpoint-every", checkpoint_every], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "NaN or infinite in epoch 1" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    if checkpoint_every == "1":  # the message names it, and it is still a loadable one
        assert f"the last good checkpoint is {run / 'last.pt'}" in proc.stderr
        torch.load(run / "last.pt", weights_only=True)
    else:  # never a checkpoint that was not written
        assert not (run / "last.pt").exists()
        assert "no checkpoint was written before it" in proc.stderr and "last.pt" not in proc.stderr


def test_failed_checkpoint_write_keeps_the_previous_one(tiny_png: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(data=str(tiny_png), val_size=20, batch_size=8, epochs=2, threads=1, progress=False,
                         model="alexnet_tiny", out=str(tmp_path / "run"))
    real_save = torch.save
    checkpoints = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if isinstance(obj, dict) and "optimizer" in obj:
            checkpoints["n"] += 1
            if checkpoints["n"] > 2:  # epoch 1 wrote best.pt and last.pt; then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(AlexNetCifarError, match="No space left on device.*previous checkpoint is intact"):
        train(config)
    monkeypatch.setattr(torch, "save", real_save)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_a_full_disk_during_torch_save_keeps_the_previous_checkpoint(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The temp file is /dev/full, so torch.save meets a real ENOSPC and raises what real torch raises."""
    from alexnet_cifar10 import io as atomic_io
    from alexnet_cifar10.checkpoint import save_checkpoint
    from alexnet_cifar10.errors import CheckpointError

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(4)}, "model_name": "alexnet_tiny"})
    before = path.read_bytes()
    monkeypatch.setattr(atomic_io.tempfile, "mkstemp",
                        lambda **_: (os.open("/dev/full", os.O_WRONLY), str(tmp_path / ".last.pt.x.tmp")))
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        save_checkpoint(path, {"model": {"w": torch.zeros(1 << 20)}, "model_name": "alexnet_tiny"})
    assert path.read_bytes() == before


def test_a_second_training_on_a_run_folder_in_use_is_refused(tiny_png: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fp32 = ("--precision", "fp32")  # stderr must hold the one error line, not also bf16's emulation warning
    first = start(tiny_png, run, False, "--epochs", "200", *fp32)
    try:
        wait_for(lambda: (run / "last.pt").exists())
        for proc in (start(tiny_png, run, resume=True), start(tiny_png, run, False, *fp32)):
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            assert str(run) in err and ("in use by another training" in err or "already holds a run" in err)
        resumed = start(tiny_png, run, resume=True)
        _, err = resumed.communicate(timeout=120)
        assert "in use by another training" in err
        assert first.poll() is None  # the first run trains on, undisturbed
    finally:
        first.kill()
        first.wait()
    # the lock dies with its process: the killed run resumes (to the end of the epoch it was in)
    epoch = torch.load(run / "last.pt", weights_only=True)["epoch"]
    resumed = start(tiny_png, run, True, "--epochs", str(epoch + 1))
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(tiny_png: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    proc = start(tiny_png, run, resume=False)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "symbolic link" in err and "Traceback" not in err, err
    assert victim.read_text() == "the user's file\n" and sorted(p.name for p in run.iterdir()) == [".lock"]


@pytest.fixture(params=["tmpfs", "file-size-limit"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201 - yields (folder, mounted)
    """A folder on a real 8 MiB tmpfs (where this process may mount one: root), or a plain folder whose writers
    run under RLIMIT_FSIZE; either way a checkpoint write meets a real ENOSPC or EFBIG."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = request.param == "tmpfs"
    if mounted and (os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs",
                                                          str(folder)], capture_output=True).returncode != 0):
        pytest.skip("mounting a tmpfs needs root")
    yield folder, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


ROOM = 128 << 10  # what the full disk has left: room for config.json (~2 KiB), not for a checkpoint (~1 MiB)
_LIMITED = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({ROOM}, {ROOM})); sys.argv[0] = 'alexnet-cifar10'; "
            "runpy.run_module('alexnet_cifar10', run_name='__main__')")  # EFBIG past ROOM instead of a kill


def test_a_full_disk_ends_in_one_line_and_keeps_the_checkpoint(tiny_png: Path, small_disk) -> None:  # noqa: ANN001
    """The disk fills during the checkpoint write itself: the resumed run rewrites its config.json (which fits),
    trains an epoch, and its checkpoint write meets ENOSPC (EFBIG without a tmpfs): one line, the previous
    checkpoint intact, no temporary file left."""
    folder, mounted = small_disk
    run = folder / "run"
    proc = start(tiny_png, run, False, "--epochs", "1", "--checkpoint-every", "0")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    before = (run / "last.pt").read_bytes()
    assert len(before) > ROOM
    launch = [sys.executable, "-m", "alexnet_cifar10"]
    if mounted:  # fill the file system up to ROOM
        with open(folder / "filler", "wb", buffering=0) as f:
            while (lambda st: st.f_bavail * st.f_frsize)(os.statvfs(folder)) > ROOM:
                f.write(b"\0" * 4096)
    else:  # no file of the resumed run may grow past ROOM
        launch = [sys.executable, "-c", _LIMITED]
    resumed = subprocess.run([*launch, "train", "--resume", str(run), "--epochs", "2", "--no-progress"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr, resumed.stderr
    lines = resumed.stderr.strip().splitlines()
    assert len(lines) == 1, resumed.stderr
    reason = "No space left on device" if mounted else "File too large"
    assert f"cannot write checkpoint {run}" in lines[0] and f"{reason}; the previous checkpoint is intact" in lines[0]
    assert '"epochs_done": 1' in (run / "config.json").read_text()  # the resume got past its config.json
    assert (run / "last.pt").read_bytes() == before
    assert not list(run.glob(".last.pt.*.tmp")) and not list(run.glob(".best.pt.*.tmp"))
