"""Model repository entries: layout, labels, parameters, versions, warm-up, the image
pipeline entries, atomic writes and failed writes."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from hostile import dead_pid
from PIL import Image
from samples import FASHION_PREPROCESSING, fashion_mnist, fashion_test_set
from tiny_onnx import CLASS_NAMES, INPUT_SHAPE, PREPROCESSING, export_tiny_classifier, write_entry

from resnet_serve.errors import RepositoryError
from resnet_serve.triton.config import ModelConfig, parse_model_config
from resnet_serve.triton.repository import (
    ModelEntry,
    list_model_entries,
    read_model_entry,
    read_warmup_images,
    summarize_repository,
    write_image_pipeline,
)
from resnet_serve.triton.serving import ONNXRUNTIME, OPENVINO, PYTHON_ONNXRUNTIME


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_tiny_classifier(path)
    return path


def write(repository: Path, onnx_path: Path, **overrides: object) -> ModelEntry:
    arguments: dict[str, object] = dict(
        repository=repository,
        name="tiny",
        model_file=onnx_path,
        class_names=CLASS_NAMES,
        preprocessing=PREPROCESSING,
        target=ONNXRUNTIME,
        metadata={"architecture": "tiny-cnn"},
    )
    arguments.update(overrides)
    return write_entry(**arguments)  # type: ignore[arg-type]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def test_python_target_layout(tmp_path: Path, onnx_path: Path) -> None:
    entry = write(tmp_path, onnx_path, version=3, target=PYTHON_ONNXRUNTIME)

    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "tiny", "tiny/3", "tiny/3/model.onnx", "tiny/3/model.py", "tiny/config.pbtxt",
        "tiny/labels.txt",
    ]
    assert entry.versions == (3,)
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
    assert config.response_cache is not None and not config.response_cache.enable


def test_parameters_carry_preprocessing_and_metadata(tmp_path: Path, onnx_path: Path) -> None:
    entry = write(tmp_path, onnx_path, threads=2)

    on_disk = ModelConfig.parse(entry.config_path.read_text())
    assert on_disk == entry.config
    assert json.loads(on_disk.parameters["preprocessing"]) == PREPROCESSING.to_dict()
    assert entry.preprocessing == PREPROCESSING.to_dict()
    assert on_disk.parameters["architecture"] == "tiny-cnn"
    assert on_disk.parameters["serving_target"] == "onnxruntime"
    assert on_disk.parameters["intra_op_thread_count"] == "2"


def test_openvino_target_serves_the_onnx_file_with_the_backends_own_parameters(
    tmp_path: Path, onnx_path: Path
) -> None:
    entry = write(tmp_path, onnx_path, target=OPENVINO, threads=2, bf16=True)

    assert sorted(p.name for p in (tmp_path / "tiny" / "1").iterdir()) == ["model.onnx"]
    config = entry.config
    assert (config.backend, config.platform, config.default_model_filename) == ("openvino", "", "model.onnx")
    assert config.instance_groups[0].kind == "KIND_CPU"
    assert config.parameters["INFERENCE_NUM_THREADS"] == "2"
    assert config.parameters["HINT_BF16"] == "YES"
    with pytest.raises(RepositoryError, match="bf16 is an option of the openvino target"):
        write(tmp_path / "other", onnx_path, target=ONNXRUNTIME, bf16=True)


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
    assert config.instance_groups[0].kind == "KIND_AUTO"
    kind = write(tmp_path / "cpu", onnx_path, target=ONNXRUNTIME, instance_kind="cpu").config
    assert kind.instance_groups[0].kind == "KIND_CPU"


def test_read_and_list_entries(tmp_path: Path, onnx_path: Path) -> None:
    first = write(tmp_path, onnx_path, name="a_model")
    second = write(tmp_path, onnx_path, name="b-model.v2", target=ONNXRUNTIME)
    (tmp_path / ".b-model.v2.staging-leftover").mkdir()

    assert read_model_entry(repository=tmp_path, name="a_model") == first
    assert list_model_entries(tmp_path) == [first, second]


def test_each_write_adds_the_next_version_and_keeps_the_earlier_ones(tmp_path: Path, onnx_path: Path) -> None:
    repository = tmp_path / "repository"
    first = write(repository, onnx_path)
    first_bytes = first.model_path.read_bytes()
    other_onnx = tmp_path / "other.onnx"
    export_tiny_classifier(other_onnx, seed=1)

    second = write(repository, other_onnx)
    third = write(repository, onnx_path, version=7)

    assert (first.version, second.version, third.version) == (1, 2, 7)
    assert third.versions == (1, 2, 7)
    assert sorted(p.name for p in repository.iterdir()) == ["tiny"]  # nothing hidden left over
    assert (repository / "tiny" / "1" / "model.onnx").read_bytes() == first_bytes
    assert (repository / "tiny" / "2" / "model.onnx").read_bytes() == other_onnx.read_bytes()
    assert read_model_entry(repository=repository, name="tiny") == third
    assert read_model_entry(repository=repository, name="tiny", version=2).model_path == (
        repository / "tiny" / "2" / "model.onnx"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_names": [f"new_{i}" for i in range(10)]}, "with other class names"),
        ({"preprocessing": dataclasses.replace(PREPROCESSING, mean=(0.5,))}, "with other preprocessing"),
        ({"target": OPENVINO}, "with other target"),
        ({"version": 1}, "already has version 1"),
    ],
)
def test_a_version_that_does_not_fit_the_entry_is_refused(
    tmp_path: Path, onnx_path: Path, overrides: dict[str, object], message: str
) -> None:
    write(tmp_path, onnx_path)
    before = snapshot(tmp_path)

    with pytest.raises(RepositoryError, match=message):
        write(tmp_path, onnx_path, **overrides)

    assert snapshot(tmp_path) == before


def test_retargeting_keeps_the_versions_when_the_new_target_reads_their_file(tmp_path: Path, onnx_path: Path) -> None:
    write(tmp_path, onnx_path)
    first = (tmp_path / "tiny" / "1" / "model.onnx").read_bytes()

    entry = write(tmp_path, onnx_path, target=OPENVINO, retarget=True)

    assert entry.versions == (1, 2) and entry.config.backend == "openvino"
    assert entry.config.default_model_filename == "model.onnx"
    assert (tmp_path / "tiny" / "1" / "model.onnx").read_bytes() == first
    before = snapshot(tmp_path)
    with pytest.raises(RepositoryError, match="with other target"):
        write(tmp_path, onnx_path, target=PYTHON_ONNXRUNTIME, retarget=True)  # it loads model.py
    assert snapshot(tmp_path) == before


def test_warmup_images_read_back_as_written(tmp_path: Path, onnx_path: Path) -> None:
    images = fashion_mnist(3)
    assert read_warmup_images(write(tmp_path / "none", onnx_path)) is None

    read = read_warmup_images(write(tmp_path / "three", onnx_path, warmup_images=images))

    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, images)


def test_replacing_an_entry_swaps_it_whole(tmp_path: Path, onnx_path: Path) -> None:
    write(tmp_path, onnx_path)
    write(tmp_path, onnx_path)
    names = [f"new_{i}" for i in range(10)]

    entry = write(tmp_path, onnx_path, class_names=names, target=OPENVINO, replace=True)

    assert entry.versions == (1,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert entry.labels_path.read_text().splitlines() == names
    assert read_model_entry(repository=tmp_path, name="tiny").config.backend == "openvino"


def test_warmup_images_become_triton_warmup_requests_from_raw_fp32_files(tmp_path: Path, onnx_path: Path) -> None:
    images = fashion_mnist(3)

    entry = write(tmp_path, onnx_path, warmup_images=images)

    warmups = entry.config.model_warmup
    assert [w.name for w in warmups] == ["real_image_0", "real_image_1", "real_image_2"]
    for i, warmup in enumerate(warmups):
        sample = warmup.inputs["input"]
        assert (sample.source, sample.dims, warmup.batch_size) == ("input_data_file", INPUT_SHAPE, 1)
        raw = (entry.path / "warmup" / sample.input_data_file).read_bytes()
        np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(INPUT_SHAPE), images[i])
    with pytest.raises(RepositoryError, match=r"warm-up images must be a batch of preprocessed \[1, 28, 28\]"):
        write(tmp_path / "other", onnx_path, warmup_images=images[:, :, :14])


@pytest.mark.parametrize("existing", [False, True], ids=["empty-repository", "replacing"])
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_names": CLASS_NAMES[:5]},
         r"tensor 'logits': the model expects 2 dimensions \(shape \[-1,10\]\) .*shape \[-1,5\]\) \[onnxruntime.tensors\]"),
        ({"preprocessing": dataclasses.replace(PREPROCESSING, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)},
         r"making complete shape \[-1,3,28,28\]\) \[onnxruntime.tensors\]"),
        ({"preferred_batch_sizes": [128]}, r"preferred batch sizes \[128\] are not within 1..64"),
        ({"name": "../escape"}, "invalid model name"),
        ({"name": "a/b"}, "invalid model name"),
        ({"name": ".hidden"}, "invalid model name"),
        ({"class_names": ["ok", "two\nlines"] + CLASS_NAMES[2:]}, "single lines"),
        ({"metadata": {"preprocessing": "x"}}, "reserved"),
        ({"version": 0}, "model versions start at 1"),
        ({"threads": 0}, "threads must be ≥ 1"),
        ({"model_file": Path("/no/such/model.onnx")}, "does not exist"),
    ],
)
def test_a_failed_write_leaves_the_repository_as_it_was(
    tmp_path: Path, onnx_path: Path, existing: bool, overrides: dict[str, object], message: str
) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    if existing:
        write(repository, onnx_path, name="tiny", replace=True)
    before = snapshot(repository)
    arguments = dict(overrides)
    source = arguments.pop("model_file", onnx_path)

    with pytest.raises(RepositoryError, match=message):
        write(repository, source, replace=True, **arguments)  # type: ignore[arg-type]

    assert snapshot(repository) == before


def test_a_file_that_is_not_onnx_is_refused_after_staging(tmp_path: Path, onnx_path: Path) -> None:
    repository = tmp_path / "repository"
    write(repository, onnx_path)
    before = snapshot(repository)
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\x00not an onnx model")

    with pytest.raises(RepositoryError, match="not a readable ONNX model"):
        write(repository, not_onnx, replace=True)

    assert snapshot(repository) == before


def test_onnx_without_a_dynamic_batch_is_refused(tmp_path: Path) -> None:
    static = tmp_path / "static.onnx"
    export_tiny_classifier(static, dynamic_batch=False)

    with pytest.raises(RepositoryError, match="the first dimension must be -1; but shape expected by the model is "
                                              r"\[1,1,28,28\] \[onnxruntime.tensors\]"):
        write(tmp_path / "repository", static)
    assert list((tmp_path / "repository").iterdir()) == []


def test_the_entry_is_readable_by_other_users_as_the_umask_allows(tmp_path: Path, onnx_path: Path) -> None:
    # A Triton container or pod often runs as another user than the one who exported.
    mask = os.umask(0)
    os.umask(mask)
    entry = write(tmp_path, onnx_path)

    folders = [entry.path, *(p for p in entry.path.rglob("*") if p.is_dir())]
    files = [p for p in entry.path.rglob("*") if p.is_file()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o777 & ~mask}
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~mask}


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_pipeline_entries_sit_beside_the_classifier(tmp_path: Path, onnx_path: Path) -> None:
    write(tmp_path, onnx_path, target=ONNXRUNTIME, warmup_images=fashion_mnist(2))

    preprocess, image = write_image_pipeline(repository=tmp_path, classifier="tiny")

    assert (preprocess.name, image.name) == ("tiny-preprocess", "tiny-image")
    assert sorted(str(p.relative_to(preprocess.path)) for p in preprocess.path.rglob("*")) == [
        "1", "1/model.py", "1/resnet_serve", "1/resnet_serve/__init__.py",
        "1/resnet_serve/errors.py", "1/resnet_serve/preprocessing.py", "config.pbtxt", "warmup", "warmup/image",
    ]
    config = preprocess.config
    assert config.backend == "python" and config.max_batch_size == 64
    assert [(t.name, t.data_type, t.dims) for t in config.inputs] == [("image", "TYPE_STRING", (1,))]
    assert [(t.name, t.data_type, t.dims) for t in config.outputs] == [("input", "TYPE_FP32", INPUT_SHAPE)]
    assert json.loads(config.parameters["preprocessing"]) == PREPROCESSING.to_dict()
    ensemble = image.config
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 64
    assert [s.model_name for s in ensemble.ensemble_steps] == ["tiny-preprocess", "tiny"]
    assert ensemble.ensemble_steps[0].output_map == {"input": "preprocessed"}
    assert ensemble.ensemble_steps[1].input_map == {"input": "preprocessed"}
    assert ensemble.outputs[0].label_filename == "labels.txt"
    assert image.class_names == tuple(CLASS_NAMES)
    assert sorted(p.name for p in image.path.iterdir()) == ["1", "config.pbtxt", "labels.txt"]


def test_the_ensemble_takes_the_smaller_of_its_steps_batch_limits(tmp_path: Path, onnx_path: Path) -> None:
    write(tmp_path, onnx_path, max_batch_size=16)

    limits = {}
    for step_limit in (4, 64, None):
        preprocess, image = write_image_pipeline(repository=tmp_path, classifier="tiny", instances=2,
                                                 max_batch_size=step_limit, max_queue_delay_us=500)
        limits[step_limit] = (preprocess.config.max_batch_size, image.config.max_batch_size)
        assert (preprocess.config.instance_groups[0].count,
                preprocess.config.dynamic_batching.max_queue_delay_microseconds) == (2, 500)

    # A step may batch more than the ensemble takes (its batcher joins several ensemble requests), never less.
    assert limits == {4: (4, 4), 64: (64, 16), None: (16, 16)}
    with pytest.raises(RepositoryError, match="max_batch_size must be ≥ 1, got 0"):
        write_image_pipeline(repository=tmp_path, classifier="tiny", max_batch_size=0)


def test_preprocessing_warms_up_with_the_first_warmup_image_as_png(tmp_path: Path, onnx_path: Path) -> None:
    write(tmp_path, onnx_path, warmup_images=FASHION_PREPROCESSING.normalize(fashion_test_set().images[5:7]))

    preprocess, _ = write_image_pipeline(repository=tmp_path, classifier="tiny")

    (warmup,) = preprocess.config.model_warmup
    assert warmup.inputs["image"].data_type == "TYPE_STRING"
    raw = (preprocess.path / "warmup" / warmup.inputs["image"].input_data_file).read_bytes()
    # Triton's TYPE_STRING element: a 4-byte little-endian length, then the bytes.
    length = int.from_bytes(raw[:4], "little")
    assert length == len(raw) - 4
    decoded = np.asarray(Image.open(io.BytesIO(raw[4:])))
    np.testing.assert_array_equal(decoded, fashion_test_set().images[5])


def test_the_copied_preprocessing_code_runs_on_its_own_and_prepares_like_the_client(
    tmp_path: Path, onnx_path: Path
) -> None:
    write(tmp_path, onnx_path)
    preprocess, _ = write_image_pipeline(repository=tmp_path, classifier="tiny")
    image = fashion_test_set().images[0]
    (tmp_path / "shirt.png").write_bytes(png(image))
    script = (
        "import json, sys; import numpy as np; sys.path.insert(0, sys.argv[1]);"
        "from resnet_serve.preprocessing import Preprocessing; import resnet_serve;"
        "p = Preprocessing.from_dict(json.loads(sys.argv[2]));"
        "x = p.prepare_encoded(open(sys.argv[3], 'rb').read());"
        "print(resnet_serve.__file__); np.save(sys.argv[4], x)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(preprocess.path / "1"), json.dumps(PREPROCESSING.to_dict()),
         str(tmp_path / "shirt.png"), str(tmp_path / "x.npy")],
        capture_output=True, text=True, timeout=60, check=True,
    )

    assert done.stdout.strip() == str(preprocess.path / "1" / "resnet_serve" / "__init__.py")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), FASHION_PREPROCESSING.normalize(image[None])[0])


def test_the_image_pipeline_needs_a_resnet_serve_classifier(tmp_path: Path, onnx_path: Path) -> None:
    write(tmp_path, onnx_path)
    config_path = tmp_path / "tiny" / "config.pbtxt"
    config = parse_model_config(config_path.read_text())
    config.parameters["preprocessing"].string_value = '{"mean": [0.5]}'
    config_path.write_text(text_format.MessageToString(config))

    with pytest.raises(RepositoryError, match="model 'tiny' has unusable preprocessing"):
        write_image_pipeline(repository=tmp_path, classifier="tiny")
    with pytest.raises(RepositoryError, match="cannot read model 'absent'"):
        write_image_pipeline(repository=tmp_path, classifier="absent")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_summary_lists_versions_sizes_and_recorded_accuracy(tmp_path: Path, onnx_path: Path) -> None:
    write(tmp_path, onnx_path, metadata={"test_accuracy": "0.8125"})
    write(tmp_path, onnx_path, metadata={"test_accuracy": "0.9025"})
    write_image_pipeline(repository=tmp_path, classifier="tiny")

    summaries = {s.name: s for s in summarize_repository(tmp_path)}

    tiny = summaries["tiny"]
    assert (tiny.target, tiny.versions, tiny.test_accuracy) == ("onnxruntime", (1, 2), 0.9025)
    assert tiny.version_bytes == (onnx_path.stat().st_size,) * 2
    assert summaries["tiny-image"].target == "ensemble"
    assert summaries["tiny-preprocess"].target == "python"
    assert tiny.to_dict()["versions"] == [{"version": 1, "bytes": onnx_path.stat().st_size},
                                          {"version": 2, "bytes": onnx_path.stat().st_size}]


# --- writers that run at once, or die part of the way ---

_WRITER = """
import json, sys, time
from pathlib import Path
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.triton.repository import Classifier, write_image_pipeline, write_model_entry
repository, onnx_path, go = map(Path, sys.argv[1:4])
preprocessing = Preprocessing.from_dict(json.loads(sys.argv[4]))
while not go.exists():
    time.sleep(0.005)
versions = []
for _ in range(3):
    classifier = Classifier(model_file=onnx_path, class_names=tuple(json.loads(sys.argv[5])),
                            preprocessing=preprocessing)
    entry = write_model_entry(repository=repository, name="m", classifier=classifier)
    write_image_pipeline(repository=repository, classifier="m")
    versions.append(entry.version)
print(json.dumps(versions))
"""


def test_writers_of_one_name_at_once_take_turns_without_errors_or_leftovers(tmp_path: Path, onnx_path: Path) -> None:
    """Four real processes, each adding three versions of "m" and rewriting its image pipeline,
    released at the same moment."""
    repository, go = tmp_path / "repository", tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(repository), str(onnx_path), str(go),
             json.dumps(PREPROCESSING.to_dict()), json.dumps(CLASS_NAMES)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    go.touch()
    results = [writer.communicate(timeout=120) for writer in writers]

    assert [writer.returncode for writer in writers] == [0] * 4, [err for _, err in results]
    written = [version for out, _ in results for version in json.loads(out)]
    assert sorted(written) == list(range(1, 13))  # every version once: none lost, none written twice
    assert sorted(p.name for p in repository.iterdir()) == ["m", "m-image", "m-preprocess"]
    assert read_model_entry(repository=repository, name="m").versions == tuple(range(1, 13))


def test_a_writer_waits_for_the_one_writing_and_gives_up_in_one_line(tmp_path: Path, onnx_path: Path) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    lock = repository / ".tiny.lock"
    with lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        heard: list[str] = []
        with pytest.raises(RepositoryError, match=r"^model 'tiny' in .* is being written by export pid 4242; "
                                                  r"gave up after waiting 0.2 s$"):
            write(repository, onnx_path, lock_timeout_s=0.2, reporter=Heard(heard))
        assert heard == [f"waiting for export pid 4242, which is writing 'tiny' in {repository}"]
    # Let go: the next write proceeds, and takes the lock file away with it.
    assert write(repository, onnx_path).version == 1
    assert sorted(p.name for p in repository.iterdir()) == ["tiny"]


class Heard:
    """A reporter that keeps the messages library code sends."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages

    def start(self, description: str, total: int | None = None) -> None: ...

    def advance(self, steps: int = 1, **fields: float | str) -> None: ...

    def finish(self) -> None: ...

    def message(self, text: str) -> None:
        self.messages.append(text)


def test_the_next_writer_cleans_up_after_a_dead_one_and_leaves_a_running_ones_folders(
    tmp_path: Path, onnx_path: Path
) -> None:
    repository = tmp_path / "repository"
    write(repository, onnx_path)
    dead, running = dead_pid(), os.getpid()
    # A dead writer's half-built entry and its swapped-out copy (the swap was done), and a
    # folder of a writer that still runs (in this layout only a recycled pid can do that).
    for name in (f".tiny.staging-{dead}-half", f".tiny.old-{dead}-done", f".tiny.staging-{running}-busy"):
        (repository / name / "1").mkdir(parents=True)
    (repository / ".tiny.lock").write_text(f"{dead}\n")  # left by the dead writer too
    heard: list[str] = []

    assert write(repository, onnx_path, reporter=Heard(heard)).version == 2
    assert sorted(heard) == [
        f"removed .tiny.old-{dead}-done, a stale replaced copy of 'tiny' of dead export pid {dead} "
        "(the next export of 'tiny' cleans it up)",
        f"removed .tiny.staging-{dead}-half, a stale staging folder of dead export pid {dead} "
        "(the next export of 'tiny' cleans it up)",
    ]
    assert sorted(p.name for p in repository.iterdir()) == [f".tiny.staging-{running}-busy", "tiny"]


def test_an_entry_a_dead_writer_had_moved_aside_is_put_back(tmp_path: Path, onnx_path: Path) -> None:
    """Killed between the two renames of the swap: the entry is gone, its old copy hidden."""
    repository = tmp_path / "repository"
    write(repository, onnx_path)
    dead = dead_pid()
    (repository / "tiny").rename(repository / f".tiny.old-{dead}-moved")
    heard: list[str] = []

    entry = write(repository, onnx_path, reporter=Heard(heard))
    assert heard == [f"restored 'tiny' from .tiny.old-{dead}-moved, where export pid {dead} left it when it died"]
    assert entry.versions == (1, 2)  # the restored version 1 kept, the new one added
    assert sorted(p.name for p in repository.iterdir()) == ["tiny"]
