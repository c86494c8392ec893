"""Grad-CAM: where in an image the network looks for a class.

captum's ``LayerGradCam`` weighs a convolution's output channels by the mean gradient of the class score and keeps
the positive part; the map is upsampled to the 32x32 input and scaled to [0, 1] per image. Needs the optional
``captum`` package (``pip install 'alexnet-cifar10[explain]'``).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from alexnet_cifar10.checkpoint import require
from alexnet_cifar10.errors import ConfigError
from alexnet_cifar10.evaluation import named, top_k

INSTALL = "'alexnet-cifar10[explain]'"


def convolutions(model: nn.Module) -> list[str]:
    """The names of ``model``'s convolutions (``features.0``, ...), input side first."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def find_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    """The module named ``layer`` (a name of ``model.named_modules()``), or the last convolution."""
    convs = convolutions(model)
    name = layer if layer is not None else convs[-1]
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise ConfigError(f"--layer {layer}: no such layer; the convolutions are {', '.join(convs)}")
    if name not in convs and not name.startswith("features."):
        raise ConfigError(f"--layer {layer}: Grad-CAM needs a layer with a spatial map (features.N); the "
                          f"convolutions are {', '.join(convs)}")
    return name, modules[name]


@dataclass
class Explanation:
    """One image's top classes, each with its Grad-CAM map (k x 32 x 32, in [0, 1])."""

    top: list[tuple[str, float]]
    heatmaps: torch.Tensor


class GradCam:
    """Grad-CAM maps of one model at one layer, built once and used for any number of images.

    The model is copied with its ReLUs made out-of-place (captum reads a layer's output after the next layer
    ran; an in-place ReLU would have rewritten it), in float32, in eval mode.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, tta: bool = False, tta_shift: int = 0) -> None:
        with warnings.catch_warnings():  # captum imports tqdm.auto, which warns in a notebook without ipywidgets
            warnings.filterwarnings("ignore", message="IProgress not found")
            attr = require("captum.attr", INSTALL)
        self.model = model
        self.net = copy.deepcopy(model).float().eval()
        for m in self.net.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.layer, module = find_layer(self.net, layer)
        self.cam = attr.LayerGradCam(self.net, module)
        self.tta, self.tta_shift = tta, tta_shift

    def maps(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Grad-CAM of class ``targets[i]`` on ``images[i]`` (float N x 3 x H x W in [0, 1]): N x H x W in [0, 1],
        1 at each map's peak (all 0 where no location raises the class score)."""
        images = images.float().to(next(self.net.parameters()).device)
        with torch.enable_grad():
            cam = self.cam.attribute(images, target=targets.to(images.device), relu_attributions=True)
        cam = F.interpolate(cam.detach().float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cam = cam.clamp_min(0)
        peak = cam.flatten(1).amax(1).clamp_min(1e-12)
        return (cam / peak[:, None, None]).cpu()

    def explain(self, images: torch.Tensor, k: int = 3, mapped: int | None = None) -> list[Explanation]:
        """Each image's top-k classes (with the model's test-time augmentation and temperature, as ``predict``)
        and a map for each of the first ``mapped`` of them (default: all k)."""
        values, indices = top_k(self.model, images, k, tta=self.tta, tta_shift=self.tta_shift)
        maps = [self.maps(images, indices[:, j]) for j in range(min(indices.shape[1], mapped or k))]
        return [Explanation(top, torch.stack([m[i] for m in maps]))
                for i, top in enumerate(named(self.model, values, indices))]
