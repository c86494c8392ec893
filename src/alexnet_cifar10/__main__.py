"""``python -m alexnet_cifar10``."""

import sys

from alexnet_cifar10.cli import main

sys.exit(main())
