"""The ``Preprocessing`` a run records in its checkpoint, which validation applies and
``export``, the server's image ensemble, ``classify`` and ``evaluate`` apply after it.

Photos keep what the weights were trained with: a ``--init`` checkpoint's size, resize,
interpolation and statistics (the pretrained features expect them), each replaced only where
the user asks; a fresh model takes ImageNet's. In-memory sets (IDX, CIFAR) are served at their
own size, normalised with the statistics of the ``--init`` checkpoint or of their training images.
"""

from __future__ import annotations

from resnet_serve.checkpoints import IMAGENET_PREPROCESSING, CheckpointMeta
from resnet_serve.datasets import Dataset, InMemoryDataset
from resnet_serve.errors import TrainingError
from resnet_serve.models import architecture_info
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.training.recipes import TrainConfig

__all__ = ["EVAL_CROP_RATIO", "run_preprocessing"]

# The ImageNet evaluation convention: the centre crop is 87.5% of the resized shorter side (224 of 256).
EVAL_CROP_RATIO = 0.875

def run_preprocessing(config: TrainConfig, train: Dataset, *, init: CheckpointMeta | None) -> Preprocessing:
    """What the checkpoint will record, and validation and serving will apply.

    Photos: the ``--init`` checkpoint's preprocessing (size, resize, interpolation, mean, std),
    each field replaced where the config sets it; without one, the architecture's input size
    with ImageNet's resize ratio and statistics. In-memory sets train at their own size, with
    the checkpoint's mean and std, or those measured on the training images.
    """
    if isinstance(train, InMemoryDataset):
        if config.image_size is not None or config.resize is not None:
            raise TrainingError(
                "image_size and resize apply to folders of photos; IDX and CIFAR images train at their own size"
            )
        if init is not None and init.in_channels != train.channels:
            raise TrainingError(
                f"the images have {train.channels} channel(s), the --init checkpoint's model takes {init.in_channels}"
            )
        if init is not None:
            source = init.preprocessing
        elif config.mean is None or config.std is None:
            source = Preprocessing.for_dataset(train)
        else:
            source = None
        return Preprocessing(
            channels=train.channels,
            height=train.images.shape[1],
            width=train.images.shape[2],
            mean=config.mean or source.mean,  # type: ignore[union-attr]
            std=config.std or source.std,  # type: ignore[union-attr]
        )
    if init is not None and config.image_size is None:
        base = init.preprocessing
        # A checkpoint trained on in-memory images has no resize: photos get the usual ratio.
        height, width = base.height, base.width
        resize = base.resize or round(max(height, width) / EVAL_CROP_RATIO)
    else:
        base = init.preprocessing if init is not None else IMAGENET_PREPROCESSING
        height = width = config.image_size or architecture_info(config.architecture).default_input_size
        resize = round(max(height, width) / EVAL_CROP_RATIO)
    return Preprocessing(
        channels=base.channels,
        height=height,
        width=width,
        mean=config.mean or base.mean,
        std=config.std or base.std,
        interpolation=base.interpolation,
        resize=config.resize or resize,
    )
