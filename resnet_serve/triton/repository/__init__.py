"""Write and read entries of a Triton model repository, laid out as the official images load it.

One module per concern: ``layout`` (the files of an entry, and reading them back), ``writing``
(atomic, locked writing, a mechanism apart from what an entry holds), ``classifier`` (the
classifier entry), ``image_pipeline`` (``-preprocess`` and the ``-image`` ensemble beside it),
``checks`` (whether the official container would load an entry: what `repo check` and `serve`
apply, and the writer before it swaps an entry in) and ``image_checks`` (what an official image
holds). The names below are the package's public ones, importable from here.
"""

from resnet_serve.triton.repository.checks import (
    CheckedHost,
    EntryCheck,
    Problem,
    check_entries,
    check_repository,
)
from resnet_serve.triton.repository.classifier import Classifier, write_model_entry
from resnet_serve.triton.repository.image_checks import python_imports
from resnet_serve.triton.repository.image_pipeline import write_image_pipeline
from resnet_serve.triton.repository.layout import (
    CONFIG_FILENAME,
    IMAGE_INPUT_NAME,
    INPUT_NAME,
    LABELS_FILENAME,
    OUTPUT_NAME,
    PREPROCESSING_PARAMETER,
    TARGET_PARAMETER,
    WARMUP_FOLDER,
    EntrySummary,
    ModelEntry,
    backend_of,
    entry_target,
    image_pipeline_names,
    list_model_entries,
    model_filename,
    read_model_entry,
    read_warmup_images,
    summarize_repository,
)
from resnet_serve.triton.repository.writing import ENTRY_LOCK_TIMEOUT_S, WriterFolder, writer_folder

__all__ = [
    "CONFIG_FILENAME",
    "ENTRY_LOCK_TIMEOUT_S",
    "IMAGE_INPUT_NAME",
    "INPUT_NAME",
    "LABELS_FILENAME",
    "OUTPUT_NAME",
    "PREPROCESSING_PARAMETER",
    "TARGET_PARAMETER",
    "WARMUP_FOLDER",
    "CheckedHost",
    "Classifier",
    "EntryCheck",
    "EntrySummary",
    "ModelEntry",
    "Problem",
    "WriterFolder",
    "backend_of",
    "check_entries",
    "check_repository",
    "entry_target",
    "image_pipeline_names",
    "list_model_entries",
    "model_filename",
    "python_imports",
    "read_model_entry",
    "read_warmup_images",
    "summarize_repository",
    "write_image_pipeline",
    "write_model_entry",
    "writer_folder",
]
