"""The training config, and the named recipes as plain data.

Every field is a ``train`` flag (``lr`` -> ``--lr``, ``batch_size`` -> ``--batch-size``); the
help text lives next to the field. A recipe is a dict of field values applied before the flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from alexnet_cifar10.errors import ConfigError, shown
from alexnet_cifar10.io import read_json

DEFAULT_DATA = "data"  # the folder a plain `train` reads, and downloads into when it is absent


def downloads_into(data: str | Path) -> bool:
    """Whether ``--data`` is the default folder, which gets the official archive when it is missing or empty."""
    return Path(data).expanduser() == Path(DEFAULT_DATA)


DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
EXPORT_FORMATS = ("onnx", "safetensors", "pt2", "torchscript")


@dataclass(frozen=True)
class Bounds:
    """The values a numeric setting may take: an interval, closed unless a side is marked open."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        def number(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        return f"{'(' if self.low_open else '['}{number(self.low)}, {number(self.high)}{')' if self.high_open else ']'}"


TTA_SHIFT_BOUNDS = Bounds(0, 8)  # pixels
SEED_BOUNDS = Bounds(0, 2**32 - 1)  # numpy's seed range; torch's generators take it with room for the per-step mix


def check_bounds(name: str, value: float, bounds: Bounds) -> None:
    """One line naming the flag when ``value`` lies outside ``bounds`` (or is not finite)."""
    if not bounds.holds(value):
        raise ConfigError(f"--{flag(name)} must lie in {bounds}, got {shown(value)}")


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None,  # noqa: A002
            bounds: Bounds | None = None) -> Any:
    """A Config field: its default, the help of its flag, and the values it may take (``choices`` for a
    string, ``bounds`` for a number)."""
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds})


@dataclass
class Config:
    # data
    data: str = setting(DEFAULT_DATA, "CIFAR-10 folder or archive; downloaded into ./data when absent")
    val_size: int = setting(5000, "validation images carved from the training split (0 for none)",
                            bounds=Bounds(0, 1_000_000))
    split_seed: int = setting(0, "seed of the validation split (kept apart from --seed)", bounds=SEED_BOUNDS)
    # model
    model: str = setting("alexnet_narrow_bn", "model variant (see `alexnet-cifar10 models`)")
    dropout: float = setting(0.25, "dropout in the classifier", bounds=Bounds(0, 1, high_open=True))
    whiten: bool = setting(False, "first convolution fixed to a whitening of the training patches (airbench)")
    dirac_init: bool = setting(False, "start each convolution's first in-channels filters as the identity (airbench's "
                          "dirac initialisation)")
    # optimisation
    epochs: int = setting(20, "training epochs", bounds=Bounds(1, 10_000))
    batch_size: int = setting(128, "global batch size", bounds=Bounds(1, 65_536))
    optimizer: str = setting("adam", "optimizer; muon: Muon on the convolution filters and hidden fully-connected "
                             "weights, Nesterov SGD (--lr, --momentum) on the rest", ("adam", "adamw", "sgd", "muon"))
    lr: float = setting(1e-3, "peak learning rate", bounds=Bounds(0, 100, low_open=True))
    weight_decay: float = setting(0.0, "weight decay (decoupled for adamw)", bounds=Bounds(0, 1))
    momentum: float = setting(0.9, "SGD momentum (nesterov)", bounds=Bounds(0, 1, high_open=True))
    muon_lr: float = setting(0.05, "--optimizer muon: Muon's learning rate (peak, under the same schedule)",
                             bounds=Bounds(0, 100, low_open=True))
    muon_momentum: float = setting(0.95, "--optimizer muon: Muon's momentum (nesterov)",
                                   bounds=Bounds(0, 1, low_open=True, high_open=True))
    muon_weight_decay: float = setting(0.0, "--optimizer muon: Muon's decoupled weight decay",
                                       bounds=Bounds(0, 1, high_open=True))
    schedule: str = setting("constant", "learning-rate schedule", ("constant", "onecycle", "cosine", "linear"))
    warmup_epochs: float = setting(0.0, "linear warm-up epochs (cosine/linear schedules)", bounds=Bounds(0, 10_000))
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy", bounds=Bounds(0, 1, high_open=True))
    ema: float = setting(0.0, "decay of an exponential moving average of the weights (0: off)",
                         bounds=Bounds(0, 1, high_open=True))
    lookahead: bool = setting(False, "every 5 steps pull the weights back to their running average, harder as the "
                         "run goes on, and end on the average (airbench's lookahead)")
    norm_bias_lr_scale: float = setting(1.0, "learning-rate multiplier for the BatchNorm shifts, at the same weight "
                                   "decay per step (airbench uses 64)", bounds=Bounds(0, 1000, low_open=True))
    bn_momentum: float = setting(0.1, "BatchNorm running-statistics momentum (PyTorch's convention; airbench uses 0.4 "
                            "with --lookahead)", bounds=Bounds(0, 1, low_open=True))
    freeze_bn_scale: bool = setting(False, "BatchNorm scales fixed at 1, only their shifts train (airbench)")
    decay_norm_bias: bool = setting(True, "weight decay also on BatchNorm parameters and biases (--no-decay-norm-bias: "
                               "on convolution and linear weights only)")
    # augmentation and evaluation
    crop_pad: int = setting(4, "random-crop padding in pixels (0: no crop)", bounds=Bounds(0, 32))
    flip: bool = setting(True, "random horizontal flips")
    alternate_flip: bool = setting(False, "flip each image in every other epoch, from a random start, instead of at "
                              "random (airbench)")
    cutout: int = setting(0, "cutout square size in pixels (0: off)", bounds=Bounds(0, 32))
    tta: bool = setting(False, "final evaluation on the image and its mirror, averaging the logits "
                              "(per-epoch validation stays plain)")
    tta_shift: int = setting(0, "also average the final evaluation over the image moved N pixels up-left and "
                        "down-right, reflect-padded (airbench's multi-crop TTA; 0: off)", bounds=TTA_SHIFT_BOUNDS)
    # run
    seed: int = setting(0, "seed of weights, data order, augmentation and dropout", bounds=SEED_BOUNDS)
    device: str = setting("auto", "training device", DEVICES)
    precision: str = setting("auto", "arithmetic precision; auto: bf16 on a CUDA GPU with bf16, fp32 on a CPU without "
                             "bf16 instructions, else whichever of the two a short timing finds faster", PRECISIONS)
    channels_last: bool = setting(True, "channels_last memory format")
    compile: bool = setting(False, "torch.compile the model")
    threads: int = setting(0, "CPU threads (0: one per core)", bounds=Bounds(0, 1024))
    deterministic: bool = setting(False, "CUDA: deterministic kernels, cudnn.benchmark off (CPU runs are "
                             "bit-reproducible for a fixed --threads)")
    checkpoint_every: int = setting(0, "also checkpoint every N steps inside an epoch (0: per epoch)",
                                    bounds=Bounds(0, 1_000_000_000))
    tensorboard: bool = setting(False, "also write TensorBoard event files (needs `tensorboard`)")
    progress: bool = setting(True, "show tqdm progress bars")
    out: str = setting("", "run folder (default runs/<name>)")
    name: str = setting("", "run name (default <recipe>-<model>-<time>)")
    recipe: str = setting("seed", "named recipe the other flags start from (seed or best)")

    def validate(self) -> Config:
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"--{flag(f.name)} must be one of {', '.join(choices)}")
            bounds = f.metadata.get("bounds")
            if bounds is not None:
                check_bounds(f.name, getattr(self, f.name), bounds)
        if self.optimizer in ("sgd", "muon") and self.momentum <= 0:
            raise ConfigError(f"--optimizer {self.optimizer} uses Nesterov momentum: --momentum must be positive")
        if self.name and (self.name in (".", "..") or any(c in self.name for c in "/\\\0")
                          or len(self.name) > 100):
            raise ConfigError(f"--name {shown(self.name)} must be a folder name under runs/ (at most 100 characters, "
                              "no / or \\; --out DIR puts a run anywhere)")
        if self.alternate_flip and not self.flip:
            raise ConfigError("--alternate-flip needs --flip")
        return self  # the network's own checks are models' (training.check_network)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        types = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(shown(k) for k in unknown[:5])}"
                              f"{' and more' if len(unknown) > 5 else ''}")
        accepted = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
        for name, value in values.items():
            ok = accepted[str(types[name])]
            if not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok):
                raise ConfigError(f"config field {name} must be {types[name]}, got {shown(value)}")
        return cls(**values)


def bounds_of(name: str) -> Bounds:
    """The bounds of a numeric setting, for the flags of other commands that take the same value."""
    return next(f.metadata["bounds"] for f in fields(Config) if f.name == name)


def check_tta_shift(shift: int) -> None:
    check_bounds("tta_shift", shift, TTA_SHIFT_BOUNDS)


def flag(name: str) -> str:
    return name.replace("_", "-")


# A recipe is the values it changes from the field defaults above. `seed` is the original notebook's training
# (Adam, cross-entropy, 20 epochs, crop + flip, constant lr) on the network that keeps it CPU-sized; `best` is the
# strongest 20-epoch training of this layout that fits 90 minutes on a 2-core CPU with native bf16 (RECIPES.md).
RECIPES: dict[str, dict[str, Any]] = {
    "seed": {},
    "best": {
        "model": "alexnet_large_bn",
        "optimizer": "sgd",
        "lr": 0.2,  # with lookahead, which pulls each step part of the way back
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "decay_norm_bias": False,
        "schedule": "onecycle",
        "label_smoothing": 0.2,
        "lookahead": True,
        "alternate_flip": True,
        "tta": True,
        "tta_shift": 1,
    },
}


def make_config(recipe: str = "seed", **overrides: Any) -> Config:
    """The recipe's values, then ``overrides`` (the flags a user gave)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)} (a run of another "
                          "preset is repeated with --config RUN/config.json)")
    values = {**dataclasses.asdict(Config()), **RECIPES[recipe], **overrides, "recipe": recipe}
    return Config.from_dict(values).validate()


# what a run's config.json records beside its settings: where and how the run was made, what it costs
PROVENANCE = ("version", "git_commit", "torch", "device_name", "world_size", "precision_choice")
RUN_RECORD = (*PROVENANCE, "resumes", "training_pflop", "training_images")  # the last: --print-config's
MAX_CONFIG_BYTES = 1 << 20  # a config.json is ~2 KB, and each resume adds ~300 bytes


def config_from_file(path: Path, **overrides: Any) -> Config:
    """The settings of a run's config.json (or any JSON of Config fields), then ``overrides``: a new run that
    repeats that one. The file's run folder and name stay behind, so the new run gets its own."""
    values = {**load_config(path).to_dict(), "out": "", "name": ""}
    return Config.from_dict({**values, **overrides}).validate()


def load_config(path: Path) -> Config:
    """The Config in a JSON file: a run's config.json (whose record of where the run was made is skipped) or a
    file of settings a user wrote. A key that is neither is an error naming the nearest setting."""
    return config_of_record(read_record(path), path)


def read_record(path: Path) -> dict[str, Any]:
    """The JSON object of a config file, read within its limits; its settings are not checked yet."""
    values = read_json(Path(path), MAX_CONFIG_BYTES, ConfigError, "a config file may be")
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} holds a JSON {type(values).__name__}, not an object of settings")
    return values


def config_of_record(values: dict[str, Any], path: Path) -> Config:
    """The checked Config of a config file's JSON object (``path`` names it in errors)."""
    names = [f.name for f in fields(Config)]
    for key in values:
        if key not in names and key not in RUN_RECORD:
            near = difflib.get_close_matches(key, names, n=1)
            raise ConfigError(f"config {path}: unknown setting {shown(key)}"
                              + (f"; did you mean {near[0]}?" if near else ""))
    return Config.from_dict({k: v for k, v in values.items() if k in names}).validate()
