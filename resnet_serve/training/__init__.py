"""Training: recipes (``recipes``), where weights start and which train (``weights``), which
images train and validate (``splits``), what preprocessing the checkpoint records
(``preprocessing``), the DataLoaders and their augmentation (``loaders``, ``transforms``), the
optimizer and schedule (``optim``), what a process of a run works with (``run``), validation
(``validation``), what each epoch writes (``outputs``), the loop (``loop``), what a resume needs
(``state``), and several processes through torchrun (``distributed``), kept apart from the loop.

The readers of on-disk formats stay in ``resnet_serve.datasets``; this package decides which of
their images train and validate and how they reach the model.
"""

from resnet_serve.training.loop import TrainResult, train, train_on_folder
from resnet_serve.training.optim import learning_rate, make_optimizer
from resnet_serve.training.recipes import (
    CIFAR_TRAIN_CONFIG,
    DEMO_TRAIN_CONFIG,
    IMAGENET_TRAIN_CONFIG,
    RECIPES,
    TrainConfig,
    recipe_config,
)
from resnet_serve.training.state import EpochStats, train_state_path
from resnet_serve.training.validation import Accuracy, evaluate

__all__ = [
    "CIFAR_TRAIN_CONFIG",
    "DEMO_TRAIN_CONFIG",
    "IMAGENET_TRAIN_CONFIG",
    "RECIPES",
    "Accuracy",
    "EpochStats",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "learning_rate",
    "make_optimizer",
    "recipe_config",
    "train",
    "train_on_folder",
    "train_state_path",
]
