"""CIFAR-10 data: formats on disk, download, cache, splits and the device-resident loader."""

from alexnet_cifar10.data.formats import CLASSES
from alexnet_cifar10.data.splits import Cifar10, Split, load_cifar10

__all__ = ["CLASSES", "Cifar10", "Split", "load_cifar10"]
