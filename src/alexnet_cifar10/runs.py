"""The run folder: claiming it, the config a resume continues with, where a run was made, metrics files."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from alexnet_cifar10.config import MAX_CONFIG_BYTES, PROVENANCE, Config, flag, load_config
from alexnet_cifar10.errors import CheckpointError, ConfigError, TrainingError
from alexnet_cifar10.io import atomic_write_text, check_replaceable, foreign_files, read_json, remove_stale_temps
from alexnet_cifar10.version import __version__

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second run on one folder is not detected there
    fcntl = None  # type: ignore[assignment]

RUN_FILES = ("last.pt", "best.pt", "config.json", "metrics.jsonl", "curves.png", "confusion.png", "samples.png",
             "reliability.png", "gradcam.png", "report.html", "final.json", "model.safetensors")
LOCK_FILE = ".lock"  # held (flock) by the process training into the folder; the kernel frees it when that ends
RESUME_OVERRIDES = ("epochs", "device", "progress", "threads", "checkpoint_every", "data", "deterministic")


def run_dir_of(config: Config) -> Path:
    if config.out:
        return Path(config.out)
    return Path("runs") / (config.name or f"{config.recipe}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a folder that holds a finished or stopped run (unless resuming it), files that are not a run's, or
    a run file that is not a regular file (a FIFO, a device: never replaced by the run's own)."""
    check_replaceable(run_dir, RUN_FILES, ConfigError)
    if not resume and (run_dir / "last.pt").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --out/--name"
        )
    if not resume and run_dir.is_dir():  # never write over a user's own files
        foreign = foreign_files(run_dir, (*RUN_FILES, "tensorboard"))
        if foreign:
            raise ConfigError(f"{run_dir} holds files that are not a run's ({foreign}); give --out a new or empty "
                              "folder")
        named_like_a_run = [f for f in (*RUN_FILES, "tensorboard") if (run_dir / f).exists()]
        if named_like_a_run and not (run_dir / LOCK_FILE).is_file():  # every folder a training used has one
            raise ConfigError(f"{run_dir} holds {', '.join(named_like_a_run[:3])}, not written by a training (no "
                              f"{LOCK_FILE}); give --out a new or empty folder")


@contextmanager
def claimed(run_dir: Path, resume: bool) -> Iterator[Path]:
    """The run folder, created and locked for as long as the block runs: a second training on it is refused,
    and temp files of writes that a crash interrupted are removed once the folder is ours."""
    check_run_dir(run_dir, resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # the lock file is also the write probe; O_NOFOLLOW: a planted symlink is refused, never written through
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        reason = "its .lock is a symbolic link" if e.errno == errno.ELOOP else e.strerror or e
        raise TrainingError(f"cannot write to run folder {run_dir}: {reason}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{run_dir} is in use by another training (it holds the folder's lock); wait "
                                  "for it to end or pick another --out/--name") from None
        check_run_dir(run_dir, resume)  # a run that finished between the first check and the lock
        for name in RUN_FILES:
            remove_stale_temps(run_dir / name, older_than=0)  # the lock is ours: no other writer is at work
        yield run_dir
    finally:
        os.close(fd)  # releases the lock


def resumed_config(resume: Path, overrides: dict[str, Any]) -> Config:
    """The config a resumed run continues with: the config.json of ``resume`` (a run folder or a checkpoint in
    one), with the few ``overrides`` a resume allows."""
    run_dir = resume if resume.is_dir() else resume.parent
    bad = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if bad:
        raise ConfigError(f"--resume keeps the run's config; only {', '.join(map(flag, RESUME_OVERRIDES))} "
                          f"may change, not {', '.join(map(flag, bad))}")
    return Config.from_dict({**load_config(run_dir / "config.json").to_dict(), **overrides, "out": str(run_dir)})


def check_resume_model(config: Config, state: dict[str, Any], checkpoint_file: Path) -> None:
    """The run's config.json must describe the network its last.pt holds (a hand-edited or older config.json
    would otherwise rebuild another network, or silently train on with another dropout or first layer)."""
    trained = state.get("config") or {}
    saved = {"model": state.get("model_name", config.model),
             "dropout": (state.get("model_kwargs") or {}).get("dropout", config.dropout),
             "whiten": trained.get("whiten", False),
             "lookahead": trained.get("lookahead", False)}
    for name, value in saved.items():
        if getattr(config, name) != value:
            raise CheckpointError(f"{checkpoint_file} holds a run with --{name} {value}, but its config.json says "
                                  f"{getattr(config, name)}; fix config.json or start a new run")


def git_commit(folder: Path = Path(__file__).parent) -> str:
    """HEAD of the checkout holding ``folder`` (the package), with "+dirty" when tracked files under
    ``folder`` differ from HEAD; "unknown" outside a git checkout."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=5)

    try:
        out = git("rev-parse", "HEAD")
        commit = out.stdout.strip()
        if out.returncode != 0 or len(commit) != 40:
            return "unknown"
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
        return commit + ("+dirty" if changed.returncode == 0 and changed.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple-silicon GPU (MPS)"
    return f"cpu ({os.cpu_count()} cores)"


def provenance(run_dir: Path, resumed_at: dict[str, int] | None, device: torch.device, world: int,
               precision_choice: str = "set by --precision") -> dict[str, Any]:
    """Where the run was made and why it computes in its precision, for config.json. A resumed run
    (``resumed_at``: its epochs and steps done) keeps where it started and adds one entry per resume to
    ``resumes`` (the code or machine may have changed)."""
    now = {"version": __version__, "git_commit": git_commit(), "torch": torch.__version__,
           "device_name": device_name(device), "world_size": world, "precision_choice": precision_choice}
    if resumed_at is None:
        return now
    try:
        before = read_json(run_dir / "config.json", MAX_CONFIG_BYTES, ConfigError, "a config file may be")
    except ConfigError:  # resume() has read it already; a file gone since keeps only this start
        before = {}
    if not isinstance(before, dict):
        before = {}
    started = {k: before.get(k, now[k]) for k in PROVENANCE}
    earlier = before.get("resumes")
    resumes = [r for r in earlier if isinstance(r, dict)] if isinstance(earlier, list) else []
    return {**started, "resumes": [*resumes, {**resumed_at, **now}]}


def write_run_file(path: Path, text: str) -> None:
    """A text file of the run folder, atomically; a failed write (a full disk) is one line, the file as it was."""
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise TrainingError(f"cannot write {path}: {e.strerror or e}; the checkpoints are intact") from None


def write_config(run_dir: Path, config: Config, provenance: dict[str, Any]) -> None:
    write_run_file(run_dir / "config.json", json.dumps({**config.to_dict(), **provenance}, indent=2))


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    write_run_file(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def open_tensorboard(run_dir: Path):  # noqa: ANN201 - SummaryWriter when installed
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: "
                          "pip install 'alexnet-cifar10[tensorboard]'") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
