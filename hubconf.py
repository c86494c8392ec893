"""torch.hub entry point: ``torch.hub.load(REPO_OR_DIR, "alexnet_cifar10", weights=PATH_OR_URL)``.

The model takes float RGB images in [0, 1], N x 3 x 32 x 32 (normalisation is inside it), the
same input as ``alexnet_cifar10.load_model`` and the exported ONNX file.
"""

import hashlib
import os
import sys

dependencies = ["torch", "numpy", "PIL", "tqdm", "matplotlib", "safetensors"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)


def alexnet_cifar10(weights=None, variant="alexnet_narrow_bn", map_location="cpu"):  # noqa: ANN001, ANN201
    """An AlexNet variant for CIFAR-10, in eval mode.

    weights: the name of trained weights shipped with the package, or a checkpoint (.pt) or .safetensors path
    or URL, loaded through the project's safe loader
    (tensors and plain values only); None gives the untrained ``variant``.
    """
    import torch

    from alexnet_cifar10.checkpoint import load_model
    from alexnet_cifar10.config import Config
    from alexnet_cifar10.models import create_model

    if weights is None:
        return create_model(variant, dropout=Config.dropout).eval()  # the seed recipe's dropout
    weights = str(weights)
    if weights.startswith(("http://", "https://")):
        folder = os.path.join(torch.hub.get_dir(), "alexnet_cifar10")
        os.makedirs(folder, exist_ok=True)
        key = hashlib.sha256(weights.encode()).hexdigest()[:16]  # one file per URL, not per basename
        local = os.path.join(folder, f"{key}-{os.path.basename(weights.split('?')[0])}")
        if not os.path.exists(local):
            torch.hub.download_url_to_file(weights, local)
        weights = local
    return load_model(weights, device=map_location)
