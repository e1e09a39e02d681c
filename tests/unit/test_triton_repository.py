"""Model repository entries: layout, labels, parameters, atomic replace and failed writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from tiny_onnx import CLASS_NAMES, INPUT_SHAPE, PREPROCESSING, export_tiny_classifier

from resnet_serve.errors import RepositoryError
from resnet_serve.triton.config import ONNXRUNTIME, PYTHON_ONNXRUNTIME, ModelConfig
from resnet_serve.triton.repository import (
    ModelEntry,
    list_model_entries,
    read_model_entry,
    write_model_entry,
)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_tiny_classifier(path)
    return path


def write(repository: Path, onnx_path: Path, **overrides: object) -> ModelEntry:
    arguments: dict[str, object] = dict(
        repository=repository,
        name="tiny",
        onnx_path=onnx_path,
        class_names=CLASS_NAMES,
        preprocessing=PREPROCESSING,
        input_shape=INPUT_SHAPE,
        metadata={"architecture": "tiny-cnn"},
    )
    arguments.update(overrides)
    return write_model_entry(**arguments)  # type: ignore[arg-type]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def test_python_target_layout(tmp_path: Path, onnx_path: Path) -> None:
    entry = write(tmp_path, onnx_path, version=3)

    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "tiny", "tiny/3", "tiny/3/model.onnx", "tiny/3/model.py", "tiny/config.pbtxt",
        "tiny/labels.txt",
    ]
    assert entry.model_path == tmp_path / "tiny" / "3" / "model.onnx"
    assert entry.model_path.read_bytes() == onnx_path.read_bytes()
    assert "class TritonPythonModel" in (tmp_path / "tiny/3/model.py").read_text()
    assert entry.labels_path.read_text() == "".join(f"{c}\n" for c in CLASS_NAMES)
    assert entry.class_names == tuple(CLASS_NAMES)
    config = entry.config
    assert config.backend == "python" and config.platform == ""
    assert config.inputs[0].name == "input" and config.inputs[0].dims == INPUT_SHAPE
    assert config.outputs[0].name == "logits" and config.outputs[0].dims == (10,)
    assert config.outputs[0].label_filename == "labels.txt"
    assert config.max_batch_size == 64
    assert config.dynamic_batching is not None


def test_parameters_carry_preprocessing_and_metadata(tmp_path: Path, onnx_path: Path) -> None:
    entry = write(tmp_path, onnx_path, intra_op_threads=2)

    on_disk = ModelConfig.parse(entry.config_path.read_text())
    assert on_disk == entry.config
    assert json.loads(on_disk.parameters["preprocessing"]) == PREPROCESSING
    assert entry.preprocessing == PREPROCESSING
    assert on_disk.parameters["architecture"] == "tiny-cnn"
    assert on_disk.parameters["serving_target"] == "python-onnxruntime"
    assert on_disk.parameters["intra_op_thread_count"] == "2"


def test_onnxruntime_target_has_no_python_model(tmp_path: Path, onnx_path: Path) -> None:
    entry = write(
        tmp_path, onnx_path, target=ONNXRUNTIME, instances=2, max_batch_size=16,
        preferred_batch_sizes=[4, 8], max_queue_delay_us=250,
    )

    assert sorted(p.name for p in (tmp_path / "tiny" / "1").iterdir()) == ["model.onnx"]
    config = entry.config
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert config.default_model_filename == "model.onnx"
    assert config.instance_groups[0].count == 2
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.preferred_batch_size == (4, 8)
    assert config.dynamic_batching.max_queue_delay_microseconds == 250


def test_read_and_list_entries(tmp_path: Path, onnx_path: Path) -> None:
    first = write(tmp_path, onnx_path, name="a_model")
    second = write(tmp_path, onnx_path, name="b-model.v2", target=ONNXRUNTIME)
    (tmp_path / ".b-model.v2.staging-leftover").mkdir()

    assert read_model_entry(repository=tmp_path, name="a_model") == first
    assert list_model_entries(tmp_path) == [first, second]


def test_replacing_an_entry_swaps_it_whole(tmp_path: Path, onnx_path: Path) -> None:
    write(tmp_path, onnx_path, version=1)
    names = [f"new_{i}" for i in range(10)]

    entry = write(tmp_path, onnx_path, version=2, class_names=names, target=ONNXRUNTIME)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # nothing hidden left over
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "2", "config.pbtxt", "labels.txt"
    ]
    assert entry.labels_path.read_text().splitlines() == names
    assert read_model_entry(repository=tmp_path, name="tiny").config.platform == "onnxruntime_onnx"


@pytest.mark.parametrize("existing", [False, True], ids=["empty-repository", "replacing"])
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_names": CLASS_NAMES[:5]}, r"expected \[batch, 5\] for 5 class names"),
        ({"input_shape": (3, 28, 28)}, r"expected \[batch, 3, 28, 28\]"),
        ({"preferred_batch_sizes": [128]}, r"preferred batch sizes \[128\] exceed"),
        ({"name": "../escape"}, "invalid model name"),
        ({"name": "a/b"}, "invalid model name"),
        ({"name": ".hidden"}, "invalid model name"),
        ({"class_names": ["ok", "two\nlines"] + CLASS_NAMES[2:]}, "single lines"),
        ({"preprocessing": {"mean": object()}}, "not JSON-serialisable"),
        ({"metadata": {"preprocessing": "x"}}, "reserved"),
        ({"version": 0}, "version must be >= 1"),
        ({"onnx_path": Path("/no/such/model.onnx")}, "does not exist"),
    ],
)
def test_a_failed_write_leaves_the_repository_as_it_was(
    tmp_path: Path, onnx_path: Path, existing: bool, overrides: dict[str, object], message: str
) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    if existing:
        write(repository, onnx_path, name="tiny")
    before = snapshot(repository)
    arguments = dict(overrides)
    source = arguments.pop("onnx_path", onnx_path)

    with pytest.raises(RepositoryError, match=message):
        write(repository, source, **arguments)  # type: ignore[arg-type]

    assert snapshot(repository) == before


def test_a_file_that_is_not_onnx_is_refused_after_staging(tmp_path: Path, onnx_path: Path) -> None:
    repository = tmp_path / "repository"
    write(repository, onnx_path)
    before = snapshot(repository)
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\x00not an onnx model")

    with pytest.raises(RepositoryError, match="not a readable ONNX model"):
        write(repository, not_onnx)

    assert snapshot(repository) == before


def test_onnx_without_a_dynamic_batch_is_refused(tmp_path: Path) -> None:
    static = tmp_path / "static.onnx"
    export_tiny_classifier(static, dynamic_batch=False)

    with pytest.raises(RepositoryError, match="dynamic batch dimension"):
        write(tmp_path / "repository", static)
    assert list((tmp_path / "repository").iterdir()) == []


def test_python_target_is_the_default(tmp_path: Path, onnx_path: Path) -> None:
    assert write(tmp_path, onnx_path).config.backend == PYTHON_ONNXRUNTIME.backend


def test_the_entry_is_readable_by_other_users_as_the_umask_allows(tmp_path: Path, onnx_path: Path) -> None:
    # A Triton container or pod often runs as another user than the one who exported.
    mask = os.umask(0)
    os.umask(mask)
    entry = write(tmp_path, onnx_path)

    folders = [entry.path, *(p for p in entry.path.rglob("*") if p.is_dir())]
    files = [p for p in entry.path.rglob("*") if p.is_file()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o777 & ~mask}
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~mask}
