"""End-to-end: the CLI in subprocesses on a tiny data set — train, resume, evaluate, predict."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from alexnet_cifar10.config import RECIPES, make_config
from alexnet_cifar10.data import CLASSES
from alexnet_cifar10.models import create_model

TRAIN_FLAGS = ("--val-size", "20", "--batch-size", "16", "--no-progress", "--threads", "1")


def one_error_line(result) -> str:  # noqa: ANN001
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("alexnet-cifar10")
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tiny_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "r1"
    # fp32 pinned: tests compare its final evaluation with `evaluate`, which computes in fp32
    result = run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(run), *TRAIN_FLAGS,
                     "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    return run


def test_train_writes_the_run_folder(trained_run: Path) -> None:
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "confusion.png",
                 "samples.png", "reliability.png", "gradcam.png", "report.html", "final.json"):
        assert (trained_run / name).is_file(), name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["recipe"] == "seed" and config["optimizer"] == "adam" and config["epochs"] == 1
    assert config["version"] and "git_commit" in config
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    row = rows[0]
    assert 0 < row["train_loss"] < 20 and 0 <= row["train_acc"] <= 1 and 0 <= row["val_acc"] <= 1
    assert row["lr"] == pytest.approx(make_config().lr) and row["seconds"] > 0 and row["images_per_s"] > 0
    html = (trained_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "per" not in html[:20]  # curves, confusion, reliability,
    assert "expected calibration error" in html and "<th>F1 %</th>" in html      # samples, Grad-CAM
    assert 'Grad-CAM)</h2><img alt="gradcam.png"' in html
    final = json.loads((trained_run / "final.json").read_text())
    assert final["split"] == "test" and final["images"] == 20
    # the training compute, recorded three times: seed's network (157.0 MFLOPs) x 3 x 40 images x 1 epoch
    assert config["training_pflop"] == final["training_pflop"] == pytest.approx(157.0e6 * 3 * 40 / 1e15, rel=1e-3)
    assert f"{config['training_pflop']:.3g} PFLOP (forward FLOPs x 3 x 40 images x 1 epochs)" in html


def test_checkpoint_loads_weights_only(trained_run: Path) -> None:
    state = torch.load(trained_run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["model_name"] == make_config().model


def test_resume_continues_the_epoch_count(trained_run: Path, tmp_path: Path) -> None:
    started = "0" * 40  # where the run began; the resume runs this checkout's code
    run = copy_run(trained_run, tmp_path / "copy", git_commit=started, device_name="the first machine")
    for epochs in (2, 3):
        result = run_cli("train", "--resume", str(run), "--epochs", str(epochs), "--no-progress")
        assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3
    config = json.loads((run / "config.json").read_text())
    assert (config["git_commit"], config["device_name"], config["epochs"]) == (started, "the first machine", 3)
    assert [(r["epochs_done"], r["steps_into_epoch"]) for r in config["resumes"]] == [(1, 0), (2, 0)]
    assert all(r["git_commit"] != started and r["device_name"].startswith("cpu") for r in config["resumes"])


def copy_run(trained_run: Path, run: Path, **config_changes: object) -> Path:
    run.mkdir()
    for f in trained_run.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    cfg = {**json.loads((run / "config.json").read_text()), "out": str(run), **config_changes}
    (run / "config.json").write_text(json.dumps(cfg))
    return run


@pytest.mark.parametrize("change", [{"dropout": 0.1}, {"model": "alexnet"}, {"whiten": True}, {"lookahead": True}])
def test_resume_refuses_a_config_that_does_not_match_its_checkpoint(trained_run: Path, tmp_path: Path,
                                                                     change: dict) -> None:
    run = copy_run(trained_run, tmp_path / "edited", **change)
    before = (run / "last.pt").read_bytes()
    result = run_cli("train", "--resume", str(run), "--epochs", "2", "--no-progress")
    name = next(iter(change))
    assert f"holds a run with --{name}" in one_error_line(result)
    assert (run / "last.pt").read_bytes() == before


@pytest.mark.parametrize("text", ["[1, 2]", "null", "{not json", '{"lr": "fast"}'])
def test_resume_refuses_a_hostile_config_json_in_one_line(trained_run: Path, tmp_path: Path, text: str) -> None:
    run = copy_run(trained_run, tmp_path / "hostile")
    (run / "config.json").write_text(text)
    before = (run / "last.pt").read_bytes()
    result = run_cli("train", "--resume", str(run), "--no-progress")
    assert "config" in one_error_line(result)
    assert (run / "last.pt").read_bytes() == before and (run / "config.json").read_text() == text


def test_whitened_first_layer_stays_frozen_through_training_and_resume(tiny_png: Path, tmp_path: Path) -> None:
    run = tmp_path / "w"
    # without lookahead: with it, a run of under five steps ends on its starting weights (airbench's rule)
    first = run_cli("train", "--recipe", "best", "--model", "alexnet_narrow_bn", "--no-lookahead", "--whiten",
                    "--epochs", "1", "--data", str(tiny_png), "--out", str(run), *TRAIN_FLAGS)
    assert first.returncode == 0, first.stderr
    one = torch.load(run / "last.pt", weights_only=True)["model"]
    assert torch.equal(one["features.0.weight"][16:], -one["features.0.weight"][:16])  # the +/- pairs
    again = run_cli("train", "--resume", str(run), "--epochs", "2", "--no-progress", "--threads", "1")
    assert again.returncode == 0, again.stderr
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and torch.equal(state["model"]["features.0.weight"], one["features.0.weight"])
    assert not torch.equal(state["model"]["features.4.weight"], one["features.4.weight"])  # the rest trained


def test_lookahead_warns_when_the_run_is_too_short_to_average(tiny_png: Path, tmp_path: Path) -> None:
    """Under five steps, airbench's lookahead lands on weights it never updated: the user is told."""
    short = run_cli("train", "--lookahead", "--epochs", "1", "--data", str(tiny_png), "--out", str(tmp_path / "s"),
                    "--model", "alexnet_tiny", *TRAIN_FLAGS)  # 40 images in full batches of 16: 2 steps
    assert short.returncode == 0, short.stderr
    assert "ends on its starting weights; add --no-lookahead" in short.stderr
    long = run_cli("train", "--lookahead", "--epochs", "3", "--data", str(tiny_png), "--out", str(tmp_path / "l"),
                   "--model", "alexnet_tiny", *TRAIN_FLAGS)
    assert long.returncode == 0 and "warning" not in long.stderr, long.stderr


def test_existing_run_is_not_overwritten(trained_run: Path, tiny_png: Path) -> None:
    before = (trained_run / "last.pt").read_bytes()
    result = run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(trained_run), *TRAIN_FLAGS)
    assert "--resume" in one_error_line(result)
    assert (trained_run / "last.pt").read_bytes() == before


def test_evaluate_matches_the_final_evaluation(trained_run: Path, tiny_png: Path, tmp_path: Path) -> None:
    result = run_cli("evaluate", str(trained_run / "last.pt"), "--data", str(tiny_png), "--val-size", "20",
                     "--json", "--out", str(tmp_path / "ev"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    final = json.loads((trained_run / "final.json").read_text())
    assert report["split"] == "test" and report["accuracy"] == pytest.approx(final["accuracy"])
    assert np.array(report["confusion"]).sum() == 20 and len(report["per_class"]) == 10
    assert (tmp_path / "ev" / "confusion.png").is_file() and (tmp_path / "ev" / "samples.png").is_file()
    val = run_cli("evaluate", str(trained_run / "best.pt"), "--data", str(tiny_png), "--val-size", "20",
                  "--split", "val")
    assert val.returncode == 0 and "val split (20 images)" in val.stdout
    shifted = run_cli("evaluate", str(trained_run / "best.pt"), "--data", str(tiny_png), "--val-size", "20",
                      "--json", "--tta", "--tta-shift", "2")
    assert shifted.returncode == 0, shifted.stderr
    assert json.loads(shifted.stdout)["images"] == 20


def test_evaluate_and_export_write_over_nothing_of_the_users(trained_run: Path, tiny_png: Path,
                                                              tmp_path: Path) -> None:
    """evaluate --out takes a new or empty folder or an earlier evaluation's; export --out never an existing file."""
    checkpoint = trained_run / "best.pt"
    evaluate = ("evaluate", str(checkpoint), "--data", str(tiny_png), "--val-size", "20")
    run_files = {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    assert "not an evaluation's (best.pt, config.json, curves.png, ...)" in one_error_line(
        run_cli(*evaluate, "--out", str(trained_run)))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "samples.png").write_bytes(b"my own picture")
    assert "not an evaluation's (samples.png)" in one_error_line(run_cli(*evaluate, "--out", str(mine)))
    assert (mine / "samples.png").read_bytes() == b"my own picture"
    earlier = tmp_path / "ev"
    for _ in range(2):  # a second evaluation replaces the first's files
        assert run_cli(*evaluate, "--out", str(earlier)).returncode == 0
    assert sorted(p.name for p in earlier.iterdir()) == ["confusion.png", "reliability.png", "result.json",
                                                         "samples.png"]

    (tmp_path / "model.onnx").write_bytes(b"mine")
    for out in (checkpoint, tmp_path / "model.onnx"):
        line = one_error_line(run_cli("export", str(checkpoint), "--format", "torchscript", "--out", str(out)))
        assert f"--out {out} already exists" in line
    assert (tmp_path / "model.onnx").read_bytes() == b"mine"
    assert {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()} == run_files


def test_predict_good_and_bad_files(trained_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "c.png").write_text("not an image")
    result = run_cli("predict", str(trained_run / "best.pt"), str(tmp_path / "a.png"), str(tmp_path / "c.png"),
                     str(tmp_path / "b.jpg"), "--top-k", "2")
    assert result.returncode == 1
    assert "a.png:" in result.stdout and "b.jpg:" in result.stdout
    lines = {line.split(":")[0].rsplit("/", 1)[-1]: line for line in result.stdout.splitlines()}
    assert lines["a.png"].count("%") == 2 and lines["b.jpg"].count("%") == 2  # --top-k 2: two classes each
    assert "resized from 48x64" in result.stdout
    assert one_error_line(result).endswith("c.png: not a readable PNG or JPEG image")
    ok = run_cli("predict", str(trained_run / "best.pt"), str(tmp_path / "a.png"), "--json")
    assert ok.returncode == 0
    top = json.loads(ok.stdout)[0]["top"]
    assert len(top) == 3 and sum(p for _, p in top) <= 1.0 + 1e-6
    between = run_cli("predict", str(trained_run / "best.pt"), "--top-k", "1", str(tmp_path / "a.png"),
                      str(tmp_path / "b.jpg"))  # files after a flag are files too
    assert between.returncode == 0, between.stderr
    assert "a.png:" in between.stdout and "b.jpg:" in between.stdout
    assert [line.count("%") for line in between.stdout.splitlines()] == [1, 1]
    assert "unrecognized arguments: --top-kk" in one_error_line(
        run_cli("predict", str(trained_run / "best.pt"), str(tmp_path / "a.png"), "--top-kk", "1"))


class Payload:
    """Would create a marker file if unpickled: a checkpoint that carries code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_code_is_refused(trained_run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = torch.load(trained_run / "last.pt", weights_only=True)
    state["extra"] = Payload(str(marker))
    torch.save(state, tmp_path / "evil.pt")
    result = run_cli("predict", str(tmp_path / "evil.pt"), str(trained_run / "curves.png"))
    assert "refused" in one_error_line(result)
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    assert "corrupt" in one_error_line(run_cli("evaluate", str(tmp_path / "junk.pt"), "--data", "x"))


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    one_error_line(run_cli("train", "--no-such-flag"))
    one_error_line(run_cli("train", "--optimizer", "lbfgs"))
    assert "no such file" in one_error_line(run_cli("train", "--data", str(tmp_path / "missing"), "--epochs", "1"))
    one_error_line(run_cli("evaluate", str(tmp_path / "missing.pt"), "--data", str(tmp_path)))


def test_models_command_lists_computed_sizes() -> None:
    result = run_cli("models", "--json")
    assert result.returncode == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"alexnet", "alexnet_narrow_bn", "alexnet_large_bn", "alexnet_slim_bn", "alexnet_224",
                         "alexnet_tiny"}
    assert rows["alexnet_224"]["mflops"] > rows["alexnet"]["mflops"] > 0
    assert rows["alexnet"]["params"] > 1e6


PRINT = "train --print-config"
# fp32 pinned: the good values run the benchmark, whose matmul probe in emulated bf16 takes minutes
TINY_BENCH = "benchmark --data {data} --val-size 20 --model alexnet_tiny --repeats 1 --no-seed-style --precision fp32"


# (the command with the value left open, a bad value, a good value or None, what the error line must say);
# the good value shows that the case reaches the check it names: the same command with it succeeds
@pytest.mark.parametrize(("command", "bad", "good", "says"), [
    (PRINT + " --lr {v}", "nan", "0.1", "--lr must lie in (0, 100], got nan"),
    (PRINT + " --lr {v}", "1e999", "100", "--lr must lie in (0, 100], got inf"),
    (PRINT + " --optimizer sgd --momentum {v}", "0", "0.9", "--momentum must be positive"),
    (PRINT + " --weight-decay {v}", "-1", "0", "--weight-decay must lie in [0, 1], got -1.0"),
    (PRINT + " --checkpoint-every {v}", "-2", "0", "--checkpoint-every must lie in"),
    (PRINT + " --epochs {v}", "0", "1", "--epochs must lie in [1, 10000], got 0"),
    (PRINT + " --batch-size {v}", "1000000", "65536", "--batch-size must lie in [1, 65536]"),
    (PRINT + " --seed {v}", "-1", "4294967295", "--seed must lie in [0, 4294967295], got -1"),
    (PRINT + " --split-seed {v}", "9" * 400, "7", "--split-seed must lie in [0, 4294967295], got a number of "
                                                   "about 400 digits"),
    (PRINT + " --threads {v}", "100000", "1024", "--threads must lie in [0, 1024]"),
    (PRINT + " --muon-momentum {v}", "1", "0.95", "--muon-momentum must lie in (0, 1)"),
    (PRINT + " --dropout {v}", "1", "0.5", "--dropout must lie in [0, 1)"),
    (PRINT + " --warmup-epochs {v}", "inf", "2", "--warmup-epochs must lie in"),
    (PRINT + " --tta-shift {v}", "-1", "8", "--tta-shift must lie in [0, 8], got -1"),
    (PRINT + " --crop-pad {v}", "100000", "32", "--crop-pad must lie in [0, 32]"),
    (PRINT + " --norm-bias-lr-scale {v}", "0", "64", "--norm-bias-lr-scale must lie in (0, 1000]"),
    (PRINT + " --norm-bias-lr-scale {v}", "nan", "1", "--norm-bias-lr-scale must lie in (0, 1000], got nan"),
    (PRINT + " --bn-momentum {v}", "0", "0.4", "--bn-momentum must lie in (0, 1], got 0.0"),
    (PRINT + " --name {v}", "../elsewhere", "my-run", "--name '../elsewhere' must be a folder name under runs/"),
    (PRINT + " --name {v}", "a/b", "a-b", "--name 'a/b' must be a folder name"),
    (PRINT + " {v}", "--alternate-flip --no-flip", "--alternate-flip", "--alternate-flip needs --flip"),
    (PRINT + " --whiten --model {v}", "alexnet", "alexnet_slim_bn", "--whiten needs an even number"),
    (PRINT + " --whiten --model {v}", "alexnet_224", "alexnet_slim_bn", "--whiten needs"),
    ("train --print-config --config {run}/config.json {v}", "--recipe best", "--lr 0.01",
     "--config gives the starting settings; it does not go with --recipe"),
    ("train --print-config --config {v}", "{tmp}/missing.json", "{run}/config.json",
     "missing.json: No such file or directory"),
    ("train --resume {v}", "{run}/model.safetensors", None, "--resume needs a run's last.pt"),
    ("data download --data {tmp}/dl --url {v}", "notaurl", None, "only http:// and https:// URLs are fetched"),
    ("predict {ckpt} {png} --top-k {v}", "0", "10", "--top-k must lie in [1, 10], got 0"),
    ("predict {ckpt} {png} --tta-shift {v}", "40", "2", "--tta-shift must lie in [0, 8], got 40"),
    ("evaluate {ckpt} --data {data} --val-size {v}", "-3", "20", "--val-size must lie in [0, 1000000], got -3"),
    ("evaluate {ckpt} --data {data} --val-size 20 --batch-size {v}", "0", "8",
     "--batch-size must lie in [1, 65536], got 0"),
    ("evaluate {ckpt} --data {data} --val-size 20 --tta-shift {v}", "9", "1", "--tta-shift must lie in [0, 8], got 9"),
    (TINY_BENCH + " --steps 1 --batch-size {v}", "100000", "8", "--batch-size must lie in [1, 65536]"),
    (TINY_BENCH + " --steps 1 --batch-size {v}", "1000", "8", "--batch-size 1000 is larger than the"),
    (TINY_BENCH + " --batch-size 8 --steps 1 --threads {v}", "-1", "1", "--threads must lie in [0, 1024], got -1"),
    (TINY_BENCH + " --batch-size 8 --steps {v}", "0", "1", "--steps must lie in [1, 10000], got 0"),
    ("export {ckpt} --format safetensors --out {v}", "{tmp}", "{tmp}/m.safetensors", "is a folder, not a regular file"),
    ("export {ckpt} --format onnx --out {tmp}/m.onnx --check-images {v}", "0", "8", "--check-images must lie in"),
])
def test_bad_values_are_one_line_errors(command: str, bad: str, good: str | None, says: str, trained_run: Path,
                                        tiny_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alexnet_cifar10.cli import main

    png = next(tiny_png.rglob("*.png"))
    values = {"tmp": str(tmp_path), "ckpt": str(trained_run / "best.pt"), "data": str(tiny_png),
              "run": str(trained_run), "png": str(png)}

    def argv(value: str) -> list[str]:
        return [a.format(**values) for a in command.replace("{v}", value).split()]

    code = main(argv(bad))
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("alexnet-cifar10: error:"), err
    assert says in err[0], err[0]
    if good is not None:
        assert main(argv(good)) == 0, capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_is_valid_and_builds_its_model(recipe: str) -> None:
    config = make_config(recipe)
    assert config.recipe == recipe and config.epochs == 20
    model = create_model(config.model, dropout=config.dropout)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_published_recipes_keep_their_settings() -> None:
    """A published recipe never changes meaning: runs made with it must stay repeatable."""
    def key(recipe: str) -> tuple:
        c = make_config(recipe)
        return (c.model, c.optimizer, c.lr, c.batch_size, c.dropout, c.schedule, c.weight_decay,
                c.label_smoothing, c.crop_pad, c.flip, c.epochs, c.whiten, c.alternate_flip, c.tta, c.tta_shift,
                c.ema, c.lookahead, c.decay_norm_bias, c.dirac_init, c.norm_bias_lr_scale, c.bn_momentum,
                c.precision)

    assert sorted(RECIPES) == ["best", "seed"]
    plain = (False, False, False, 0, 0.0, False, True, False, 1.0, 0.1, "auto")  # no whitening, random flips, no
    # TTA, no averages, default initialisation and parameter groups, bf16 where native
    assert key("seed") == ("alexnet_narrow_bn", "adam", 1e-3, 128, 0.25, "constant", 0.0, 0.0, 4, True, 20, *plain)
    assert key("best") == ("alexnet_large_bn", "sgd", 0.2, 128, 0.25, "onecycle", 5e-4, 0.2, 4, True, 20, False, True,
                           True, 1, 0.0, True, False, False, 1.0, 0.1, "auto")


def test_print_config_shows_the_resolved_settings_and_trains_nothing(tmp_path: Path) -> None:
    result = run_cli("train", "--recipe", "best", "--lr", "0.1", "--out", str(tmp_path / "r"), "--print-config")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed.pop("training_images") == 45000 and printed.pop("training_pflop") > 0
    assert printed == {**make_config("best", lr=0.1, out=str(tmp_path / "r")).to_dict()}
    assert not (tmp_path / "r").exists()


def test_print_config_counts_the_training_compute() -> None:
    """PFLOP of training: forward FLOPs (seed's network: 157.0 MFLOPs, `models`) x 3 x images x epochs."""
    result = run_cli("train", "--epochs", "10", "--val-size", "10000", "--print-config")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["training_images"] == 40000
    assert printed["training_pflop"] == pytest.approx(157.0e6 * 3 * 40000 * 10 / 1e15, rel=1e-3)


def test_a_run_is_repeated_bit_identically_from_its_config(trained_run: Path, tiny_png: Path, tmp_path: Path) -> None:
    """`train --config RUN/config.json` is the way to repeat a run of any recipe, removed ones included."""
    again = run_cli("train", "--config", str(trained_run / "config.json"), "--out", str(tmp_path / "again"),
                    "--no-progress")
    assert again.returncode == 0, again.stderr
    first = torch.load(trained_run / "last.pt", weights_only=True)["model"]
    second = torch.load(tmp_path / "again" / "last.pt", weights_only=True)["model"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    kept = json.loads((trained_run / "config.json").read_text())
    repeated = json.loads((tmp_path / "again" / "config.json").read_text())
    assert {k: v for k, v in repeated.items() if k in make_config().to_dict() and k != "out"} == \
        {k: v for k, v in kept.items() if k in make_config().to_dict() and k != "out"}
    flagged = run_cli("train", "--config", str(trained_run / "config.json"), "--lr", "0.5", "--print-config")
    assert json.loads(flagged.stdout)["lr"] == 0.5 and json.loads(flagged.stdout)["model"] == kept["model"]


def test_git_commit_names_head_and_marks_a_dirty_tree(tmp_path: Path) -> None:
    from alexnet_cifar10.runs import git_commit

    assert git_commit(tmp_path) == "unknown"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("not code")
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "+dirty"


def test_bn_momentum_reaches_every_batchnorm(tiny_png: Path, tmp_path: Path) -> None:
    from alexnet_cifar10 import train

    config = make_config(data=str(tiny_png), val_size=20, batch_size=16, epochs=1, threads=1, progress=False,
                         model="alexnet_narrow_bn", bn_momentum=0.4, out=str(tmp_path / "run"))
    bns = [m for m in train(config).model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 5 and all(m.momentum == 0.4 for m in bns)


@pytest.mark.parametrize(("capabilities", "timings", "expected"), [
    ({"avx512_bf16": True, "amx_bf16": False}, {"fp32": 0.2, "bf16": 0.3}, "fp32"),  # AVX-512-BF16, no AMX
    ({"avx512_bf16": True, "amx_bf16": False}, {"fp32": 0.3, "bf16": 0.2}, "bf16"),  # Zen 4
    ({"avx512_bf16": False, "amx_bf16": True}, {"fp32": 0.3, "bf16": 0.1}, "bf16"),  # AMX
    ({"avx512_bf16": False, "amx_bf16": False}, None, "fp32"),  # AVX2: emulated bf16, nothing to time
    ({}, None, "fp32"),
])
def test_auto_precision_takes_the_faster_one_where_the_cpu_has_bf16(
        capabilities: dict, timings: dict | None, expected: str, tiny_png: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--precision auto resolves once: by the probe's timings where the CPU has bf16 instructions, and config.json
    (which a resume reads) records what the run computed in and why."""
    from alexnet_cifar10 import device, train

    probed: list[str] = []

    def fake_timings(model: str, where: torch.device, batch: int) -> dict[str, float]:
        probed.append(model)
        assert timings is not None, "a CPU without bf16 instructions is not probed"
        return timings

    monkeypatch.setenv("ALEXNET_CIFAR10_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    monkeypatch.setattr(device, "time_precisions", fake_timings)
    assert device.resolve_precision("auto", torch.device("cpu"), "alexnet_tiny") == expected
    assert device.resolve_precision("auto", torch.device("cpu"), "alexnet_tiny") == expected
    assert probed == (["alexnet_tiny"] if timings else [])  # measured once, then read from the cache
    config = make_config(data=str(tiny_png), val_size=20, batch_size=16, epochs=1, threads=1, progress=False,
                         model="alexnet_tiny", precision="auto", out=str(tmp_path / "run"))
    train(config)
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["precision"] == expected
    assert ("ms in fp32" in written["precision_choice"]) == (timings is not None), written["precision_choice"]


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_training_computes_in_its_precision(precision: str, dtype: torch.dtype, tiny_png: Path,
                                            tmp_path: Path) -> None:
    """The convolutions of the training steps compute in the run's precision (bf16 under autocast)."""
    from alexnet_cifar10 import train

    seen: set[torch.dtype] = set()

    def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d) and module.training:
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        train(make_config(data=str(tiny_png), val_size=20, batch_size=16, epochs=1, threads=1, progress=False,
                          model="alexnet_tiny", precision=precision, out=str(tmp_path / "run")))
    finally:
        handle.remove()
    assert seen == {dtype}


def test_the_precision_probe_times_both_precisions_and_keeps_its_result(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet_cifar10 import device

    monkeypatch.setenv("ALEXNET_CIFAR10_CACHE", str(tmp_path))
    state = torch.random.get_rng_state()
    seconds, cached = device.probe_precisions("alexnet_tiny", torch.device("cpu"))
    assert not cached and set(seconds) == {"fp32", "bf16"} and all(t > 0 for t in seconds.values())
    assert torch.equal(torch.random.get_rng_state(), state)  # a run's random streams are untouched
    assert device.probe_precisions("alexnet_tiny", torch.device("cpu")) == (seconds, True)
    (tmp_path / "precision.json").write_text('{"x": [1e999')  # damaged: measured again, then replaced
    assert device.probe_precisions("alexnet_tiny", torch.device("cpu"))[1] is False
    assert device.probe_precisions("alexnet_tiny", torch.device("cpu"))[1] is True


def test_bf16_warns_only_on_a_cpu_that_emulates_it(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from alexnet_cifar10.device import resolve_precision
    from alexnet_cifar10.errors import ConfigError

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert resolve_precision("bf16", cpu) == "bf16" and capsys.readouterr().err == ""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False})
    assert resolve_precision("bf16", cpu) == "bf16"
    assert "emulated" in capsys.readouterr().err
    assert resolve_precision("fp32", cpu) == "fp32" and capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)


def test_benchmark_accepts_auto_precision(tiny_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_cli("benchmark", "--data", str(tiny_png), "--model", "alexnet_tiny", "--precision", "auto",
                     "--batch-size", "8", "--steps", "1", "--repeats", "1", "--no-seed-style", "--val-size", "20",
                     "--device", "cpu", "--threads", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    r = json.loads(out.read_text())
    native = r["machine"].endswith("bf16 native")
    assert set(r["step_ips_by_precision"]) == {"fp32", "bf16"}  # both precisions, whichever was asked for
    if native:  # timed by the probe, and the faster one taken
        assert "ms in fp32" in r["precision_choice"] and r["precision"] in ("fp32", "bf16")
    else:
        assert r["precision"] == "fp32" and r["machine"].endswith("bf16 emulated"), r
        assert "has no bf16" in r["precision_choice"] and "has no bf16" in result.stdout


def test_train_never_writes_into_a_folder_of_other_files(tiny_png: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "metrics.jsonl").write_text("mine too")
    result = run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(mine), *TRAIN_FLAGS)
    assert "notes.txt" in one_error_line(result)
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.jsonl", "notes.txt"]
    assert (mine / "metrics.jsonl").read_text() == "mine too"


def test_a_class_without_images_is_null_in_the_json_not_nan(trained_run: Path, tmp_path: Path) -> None:
    from conftest import make_pixels, write_python

    x, y = make_pixels(2, 1)
    data = write_python(tmp_path / "no-trucks", {"train": make_pixels(6, 0), "test": (x[y != 9], y[y != 9])})
    result = run_cli("evaluate", str(trained_run / "best.pt"), "--data", str(data), "--split", "test", "--json",
                     "--val-size", "0")
    assert result.returncode == 0, result.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    report = json.loads(result.stdout, parse_constant=refuse)
    assert report["per_class"]["truck"] is None and report["per_class"]["airplane"] is not None
    table = run_cli("evaluate", str(trained_run / "best.pt"), "--data", str(data), "--split", "test",
                    "--val-size", "0")
    assert any(line.split() == ["truck", "n/a", "0"] for line in table.stdout.splitlines()), table.stdout


@pytest.mark.gpu
def test_training_on_a_gpu_matches_its_evaluation_on_the_cpu(tiny_png: Path, tmp_path: Path) -> None:
    """Where a CUDA device exists: a run trained there (auto picks it, bf16) is evaluated on the CPU in fp32 to
    within bf16's rounding of what the run reported."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    run = tmp_path / "run"
    trained = run_cli("train", "--data", str(tiny_png), "--epochs", "2", "--out", str(run), "--val-size", "20",
                      "--batch-size", "8", "--model", "alexnet_tiny", "--no-progress")
    assert trained.returncode == 0, trained.stderr
    config = json.loads((run / "config.json").read_text())
    assert not config["device_name"].startswith("cpu") and config["world_size"] == 1  # the GPU's name
    final = json.loads((run / "final.json").read_text())
    cpu = run_cli("evaluate", str(run / "best.pt"), "--data", str(tiny_png), "--val-size", "20", "--split",
                  final["split"], "--device", "cpu", "--json")
    assert cpu.returncode == 0, cpu.stderr
    assert json.loads(cpu.stdout)["accuracy"] == pytest.approx(final["accuracy"], abs=0.1)
    # --deterministic (CUDA's deterministic kernels, cudnn autotuning off): two runs give the same weights
    runs = [tmp_path / f"det{i}" for i in range(2)]
    for out in runs:
        det = run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(out), "--val-size", "20",
                      "--batch-size", "8", "--model", "alexnet_tiny", "--no-progress", "--deterministic")
        assert det.returncode == 0, det.stderr
    first, second = (torch.load(out / "last.pt", weights_only=True)["model"] for out in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("bars", [[], ["--no-progress"]], ids=["bars-asked", "no-progress"])
def test_a_log_file_gets_one_line_per_epoch_and_no_bars(tiny_png: Path, tmp_path: Path, bars: list[str]) -> None:
    """Output to a file, not a terminal: tqdm leaves its bars out (no carriage returns in the log), and each epoch
    prints its line with or without --no-progress."""
    result = run_cli("train", "--data", str(tiny_png), "--epochs", "2", "--out", str(tmp_path / "run"),
                     "--val-size", "20", "--batch-size", "8", "--model", "alexnet_tiny", "--threads", "1", *bars)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    pattern = (r"epoch +[12]/2 train_loss \d+\.\d{4} train_acc \d+\.\d\d% val_loss \d+\.\d{4} val_acc \d+\.\d\d% "
               r"lr [\d.e-]+ \d+ img/s \d+\.\ds")
    assert len(lines) == 2 and all(re.fullmatch(pattern, line) for line in lines), result.stdout


def test_result_json_records_what_was_evaluated(trained_run: Path, tiny_png: Path, tmp_path: Path) -> None:
    import hashlib

    from alexnet_cifar10 import __version__
    from alexnet_cifar10.pretrained import shipped_info

    checkpoint = trained_run / "best.pt"
    for weights, expected in ((str(checkpoint), str(checkpoint.resolve())), ("seed", "seed")):
        given = ("--weights", weights) if weights == "seed" else (weights,)
        out = tmp_path / weights.replace("/", "_")
        result = run_cli("evaluate", *given, "--data", str(tiny_png), "--val-size", "20", "--out", str(out))
        assert result.returncode == 0, result.stderr
        record = json.loads((out / "result.json").read_text())["evaluated"]
        sha = (shipped_info("seed")["sha256"] if weights == "seed"
               else hashlib.sha256(checkpoint.read_bytes()).hexdigest())
        assert record["weights"] == expected and record["weights_sha256"] == sha
        assert record["model"] == "alexnet_narrow_bn" and record["data"] == str(tiny_png)
        assert (record["val_size"], record["split_seed"], record["version"]) == (20, 0, __version__)
        assert record["torch"] == torch.__version__ and record["precision"] == "fp32"


def test_evaluation_metrics_follow_from_the_predictions() -> None:
    """Per-class precision, recall and F1, top-5 accuracy and the expected calibration error, against values
    worked out by hand from logits the test sets."""
    from alexnet_cifar10.evaluation import CALIBRATION_BINS, evaluate

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    logits = torch.zeros(8, 10)
    for i, (top, value) in enumerate([(0, 10), (0, 10), (1, 10), (0, 10), (2, 2), (2, 2), (9, 10), (3, 10)]):
        logits[i, top] = value
    logits[3, 1] = logits[6, 3] = 5  # the two mistakes have the true class second: inside the top 5

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits[: len(x)]  # one batch of all 8 images, in order

    result = evaluate(Fixed(), torch.zeros(8, 3, 32, 32, dtype=torch.uint8), labels, batch_size=8)
    m = result.per_class_metrics
    assert result.accuracy == 6 / 8 and result.top5_accuracy == 1.0
    assert (m["airplane"]["precision"], m["airplane"]["recall"]) == (2 / 3, 1.0)
    assert m["airplane"]["f1"] == pytest.approx(0.8)
    assert (m["automobile"]["precision"], m["automobile"]["recall"]) == (1.0, 0.5)
    assert m["automobile"]["f1"] == pytest.approx(2 / 3) and m["bird"]["f1"] == 1.0
    assert m["deer"] == {"precision": None, "recall": None, "f1": None, "images": 0}
    assert m["truck"] == {"precision": 0.0, "recall": None, "f1": None, "images": 0}  # predicted once, wrongly
    confidence, predicted = logits.softmax(1).max(1)
    bins = (confidence * CALIBRATION_BINS).long().clamp(max=CALIBRATION_BINS - 1)
    gaps = [abs(float(confidence[bins == b].sum() - (predicted == labels)[bins == b].sum())) for b in bins.unique()]
    assert result.ece == pytest.approx(sum(gaps) / 8) and result.ece > 0
    rows = result.reliability
    assert len(rows) == CALIBRATION_BINS and sum(r["images"] for r in rows) == 8
    assert rows[int(bins[4])]["images"] == 2 and rows[int(bins[4])]["accuracy"] == 1.0  # images 4 and 5: 45 % sure


def test_evaluate_writes_the_reliability_diagram_and_the_per_class_csv(trained_run: Path, tiny_png: Path,
                                                                        tmp_path: Path) -> None:
    import csv

    out, table = tmp_path / "ev", tmp_path / "classes.csv"
    result = run_cli("evaluate", str(trained_run / "best.pt"), "--data", str(tiny_png), "--val-size", "20",
                     "--out", str(out), "--csv", str(table))
    assert result.returncode == 0, result.stderr
    assert re.search(r"top-5 accuracy \d+\.\d\d%, expected calibration error \d+\.\d\d%", result.stdout)
    record = json.loads((out / "result.json").read_text())
    assert (out / "reliability.png").read_bytes().startswith(b"\x89PNG")
    assert 0 <= record["ece"] <= 1 and 0 <= record["top5_accuracy"] <= 1 and len(record["reliability"]) == 15
    rows = list(csv.DictReader(table.open()))
    assert [r["class"] for r in rows] == list(CLASSES) and sum(int(r["images"]) for r in rows) == record["images"]
    for row in rows:
        metrics = record["per_class_metrics"][row["class"]]
        assert row["recall"] == ("" if metrics["recall"] is None else f"{metrics['recall']:.4f}")
    assert (trained_run / "reliability.png").is_file() and b"Calibration" in (trained_run / "report.html").read_bytes()


def test_a_fitted_temperature_undoes_a_known_one() -> None:
    """Labels drawn from softmax(z), logits given as 3z: the temperature that fits them is 3, and dividing by it
    lowers the calibration error; the predictions stay as they were."""
    from alexnet_cifar10.evaluation import expected_calibration_error, fit_temperature

    generator = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 10, generator=generator) * 2
    labels = torch.multinomial(z.softmax(1), 1, generator=generator).squeeze(1)
    temperature = fit_temperature(3 * z, labels)
    assert temperature == pytest.approx(3, rel=0.05)
    assert expected_calibration_error(3 * z / temperature, labels) < expected_calibration_error(3 * z, labels) / 3


def test_calibrate_keeps_a_temperature_that_predict_and_evaluate_then_use(trained_run: Path, tiny_png: Path,
                                                                          tmp_path: Path) -> None:
    import shutil

    from alexnet_cifar10.calibration import load_temperature

    checkpoint = tmp_path / "best.pt"
    shutil.copy(trained_run / "best.pt", checkpoint)
    kept = tmp_path / "best.pt.calibration.json"
    data = ("--data", str(tiny_png), "--val-size", "20")
    fitted = run_cli("evaluate", str(checkpoint), *data, "--calibrate", "--json")
    assert fitted.returncode == 0, fitted.stderr
    calibration = json.loads(fitted.stdout)["calibration"]
    assert (calibration["kept_in"] is not None) == (calibration["ece_after"] < calibration["ece_before"])
    assert kept.exists() == (calibration["kept_in"] is not None)
    first = calibration["temperature"]
    # the same network made 20 times more confident (its last layer scaled): the fit is 20 times the first, and
    # so sure a network is calibrated by it
    state = torch.load(checkpoint, weights_only=True)
    for key in ("classifier.6.weight", "classifier.6.bias"):
        state["model"][key] *= 20
    torch.save(state, checkpoint)
    fitted = run_cli("evaluate", str(checkpoint), *data, "--calibrate", "--json")
    assert fitted.returncode == 0, fitted.stderr
    calibration = json.loads(fitted.stdout)["calibration"]
    assert calibration["temperature"] == pytest.approx(20 * first, rel=0.02)
    assert calibration["ece_after"] < calibration["ece_before"]
    assert calibration["kept_in"] == str(kept) and load_temperature(checkpoint) == calibration["temperature"]
    again = json.loads(run_cli("evaluate", str(checkpoint), *data, "--split", "val", "--json").stdout)
    assert again["temperature"] == calibration["temperature"] and again["ece"] == pytest.approx(
        calibration["ece_after"])
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(image)
    predicted = json.loads(run_cli("predict", str(checkpoint), str(image), "--json", "--top-k", "1").stdout)
    from alexnet_cifar10 import load_model
    from alexnet_cifar10.evaluation import logits_of, predict

    model = load_model(checkpoint)

    raw = predict(model, [image], top_k=1)[0].top[0][1]  # load_model carries the temperature too
    assert predicted[0]["top"][0][1] == pytest.approx(raw)
    tta = json.loads((trained_run / "config.json").read_text())["tta"]
    x = torch.from_numpy(np.array(Image.open(image))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = (logits_of(model, x, tta) / calibration["temperature"]).softmax(1).max().item()
    assert raw == pytest.approx(expected, abs=1e-5)
    # a retrained checkpoint makes the kept temperature stale: ignored, with a warning
    torch.save({**torch.load(checkpoint, weights_only=True), "epoch": 99}, checkpoint)
    stale = run_cli("predict", str(checkpoint), str(image), "--json")
    assert stale.returncode == 0 and f"warning: ignoring {kept}: made for other weights" in stale.stderr
    for text in ('{"temperature": "hot"}', '{"temperature": 1' + "0" * 400 + ', "weights_sha256": "x"}'):
        kept.write_text(text)
        broken = run_cli("predict", str(checkpoint), str(image))
        assert broken.returncode == 1 and broken.stderr.strip().splitlines() == [
            f"alexnet-cifar10: error: {kept}: not a calibration file (a temperature in [0.05, 20.0] and the weights' "
            "sha256); remove it (evaluate --calibrate writes a new one)"]
    refit = run_cli("evaluate", str(checkpoint), *data, "--calibrate", "--json")  # a new fit does not read it
    assert refit.returncode == 0, refit.stderr
    assert json.loads(kept.read_text())["tta"] is False  # the fit records the augmentation it was made with
    other = run_cli("evaluate", str(checkpoint), "--data", str(tiny_png), "--val-size", "30", "--calibrate")
    assert other.returncode == 1 and "give --val-size 20 as it was trained with, not 30" in other.stderr
    nowhere = run_cli("evaluate", str(checkpoint), *data, "--csv", str(tmp_path / "no" / "t.csv"))
    assert nowhere.returncode == 1 and f"folder {tmp_path / 'no'} does not exist" in nowhere.stderr
