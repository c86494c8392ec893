"""AlexNet on CIFAR-10: the library API that the CLI and the notebook share.

>>> from alexnet_cifar10 import load_cifar10, make_config, train, load_model, predict
>>> data = load_cifar10("data")                       # doctest: +SKIP
>>> result = train(make_config("seed", epochs=1))     # doctest: +SKIP
"""

__version__ = "0.1.0"

from alexnet_cifar10.checkpoint import load_checkpoint, load_model  # noqa: E402
from alexnet_cifar10.config import RECIPES, Config, make_config  # noqa: E402
from alexnet_cifar10.data import CLASSES, Cifar10, Split, load_cifar10  # noqa: E402
from alexnet_cifar10.errors import AlexNetCifarError  # noqa: E402
from alexnet_cifar10.evaluation import EvalResult, evaluate, predict  # noqa: E402
from alexnet_cifar10.models import MODELS, AlexNet, create_model  # noqa: E402
from alexnet_cifar10.training import TrainResult, train  # noqa: E402

__all__ = [
    "CLASSES", "MODELS", "RECIPES", "AlexNet", "AlexNetCifarError", "Cifar10", "Config", "EvalResult",
    "Split", "TrainResult", "create_model", "evaluate", "load_checkpoint", "load_cifar10", "load_model",
    "make_config", "predict", "train",
]
