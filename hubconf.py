"""torch.hub entry point: ``torch.hub.load(REPO_OR_DIR, "alexnet_cifar10", pretrained=True)`` for the best shipped
weights, ``weights=NAME_PATH_OR_URL`` for others, or ``variant=NAME`` for an untrained network.

The model takes float RGB images in [0, 1], N x 3 x 32 x 32 (normalisation is inside it), the
same input as ``alexnet_cifar10.load_model`` and the exported ONNX file.
"""

import os
import sys

dependencies = ["torch", "numpy", "safetensors", "tqdm", "PIL"]  # what loading (and fetching a URL) imports

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)


def alexnet_cifar10(weights=None, variant=None, pretrained=False, map_location="cpu", check_hash=True,  # noqa: ANN001, ANN201
                    progress=True):
    """An AlexNet variant for CIFAR-10, in eval mode.

    pretrained: True gives the best shipped weights (``weights="best"``).
    weights: the name of trained weights shipped with the package, or a checkpoint (.pt) or .safetensors path
    or http(s) URL, loaded through the project's safe loader (tensors and plain values only). A URL is
    downloaded once into torch.hub's folder; with check_hash, a file name that carries a sha256 prefix
    (``NAME-<8+ hex digits>.pt``, torch.hub's convention) must match it.
    variant: the untrained network to build (default alexnet_narrow_bn); weights carry their own network.
    """
    import torch

    from alexnet_cifar10.checkpoint import load_model, weights_from_url
    from alexnet_cifar10.config import Config
    from alexnet_cifar10.models import create_model

    if pretrained:
        if weights not in (None, "best"):
            raise ValueError(f"pretrained=True means weights='best'; give weights={weights!r} alone")
        weights = "best"
    if weights is None:
        return create_model(variant or "alexnet_narrow_bn", dropout=Config.dropout).eval()  # the seed recipe's
    if variant is not None:
        raise ValueError(f"variant={variant!r} with weights: the weights carry their own network; give one of them")
    weights = str(weights)
    if weights.startswith(("http://", "https://")):
        folder = os.path.join(torch.hub.get_dir(), "alexnet_cifar10")
        weights = weights_from_url(weights, folder, check_hash=check_hash, progress=progress)
    return load_model(weights, device=map_location)
