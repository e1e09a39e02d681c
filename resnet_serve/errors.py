"""One base error for the whole toolkit; the CLI turns each into one line and an exit code.

This module imports nothing, so it can travel with the preprocessing code into a Triton
python-backend model.
"""

# Third-party messages can hold whole graphs or stack dumps; one line of them is enough.
_REASON_LIMIT = 300


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), at most
    300 characters: third-party tools put whole graphs and stack dumps in theirs."""
    text = str(exc).strip()
    return text.splitlines()[0][:_REASON_LIMIT] if text else type(exc).__name__


class ResnetServeError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1


class UnknownArchitectureError(ResnetServeError):
    """An architecture name that is not in the registry."""


class CheckpointError(ResnetServeError):
    """A checkpoint that is missing, corrupt, unsafe or for another architecture."""


class DatasetError(ResnetServeError):
    """A dataset path that is missing or not in the expected format."""


class TrainingError(ResnetServeError):
    """A training configuration that cannot run."""


class ExportError(ResnetServeError):
    """Folding, ONNX export or writing a model repository entry failed."""


class VerificationError(ResnetServeError):
    """Two runtimes disagree beyond the tolerance asked for."""


class RepositoryError(ResnetServeError):
    """A Triton model repository or model config that is invalid."""


class ServerError(ResnetServeError):
    """The embedded Triton server could not be started or did not become ready."""


class ClientError(ResnetServeError):
    """A request to a Triton server failed (not running, unknown model, bad answer)."""


class ImageError(ClientError):
    """An input file that is not a readable image."""


class MissingDependencyError(ResnetServeError):
    """An optional dependency (tensorrt, openvino, the embedded server) is not installed."""


class TuningError(ResnetServeError):
    """A tuning run that cannot start: an entry it cannot tune, or a search over its budget."""


class ReportError(ResnetServeError):
    """A result file a report is built from that is missing or not what it claims to be."""


class OutputError(ResnetServeError):
    """An output path that cannot be written: a folder where a file goes, a parent that is a
    file, a folder without write permission."""
