"""The command line through Typer's runner: what a user types, what they see, the exit code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
from samples import fashion_idx_folder
from typer.testing import CliRunner

from resnet_serve import __version__
from resnet_serve.cli import app
from resnet_serve.triton.server import find_free_port

runner = CliRunner()
COMMANDS = ("models", "train", "import", "fold", "export", "verify", "serve", "classify", "evaluate", "bench", "demo", "experiment")


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    output = result.output.strip()
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    for fragment in fragments:
        assert fragment in output, output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_lists_every_command_with_a_purpose():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        line = next(line for line in result.output.splitlines() if f" {command} " in line)
        assert len(line.split(command, 1)[1].strip(" │")) > 10, line


def test_models_json_lists_every_architecture_with_its_parameters():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    models = {entry["name"]: entry for entry in json.loads(result.output)}
    assert models["resnet50"]["params"] == 25_557_032
    assert models["resnet50"]["family"] == "imagenet"
    assert models["plain56"]["family"] == "cifar"
    assert all(isinstance(entry["params"], int) for entry in models.values())


def test_models_table():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "11,689,512" in result.output and "plain110" in result.output


def test_unknown_architecture_is_one_line(tmp_path: Path):
    result = runner.invoke(app, ["train", "--arch", "resnet19", "-o", str(tmp_path / "x.safetensors")])
    assert_one_line_error(result, "unknown architecture 'resnet19'")
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_checkpoint_is_one_line(tmp_path: Path):
    result = runner.invoke(app, ["export", str(tmp_path / "nope.safetensors"), "--repository", str(tmp_path)])
    assert_one_line_error(result, "nope.safetensors")


def test_corrupt_checkpoint_leaves_the_repository_as_it_was(tmp_path: Path):
    repository = tmp_path / "repo"
    (repository / "kept" / "1").mkdir(parents=True)
    (repository / "kept" / "config.pbtxt").write_text('name: "kept"\n')
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    before = sorted(str(p.relative_to(repository)) for p in repository.rglob("*"))
    result = runner.invoke(app, ["export", str(corrupt), "--repository", str(repository)])
    assert_one_line_error(result, "corrupt.safetensors")
    assert sorted(str(p.relative_to(repository)) for p in repository.rglob("*")) == before


def test_classify_without_a_server_is_one_line(tmp_path: Path):
    image = tmp_path / "x.png"
    image.write_bytes(b"not really")
    port = find_free_port()
    for protocol in ("http", "grpc"):
        result = runner.invoke(app, ["classify", str(image), "--protocol", protocol, "--url", f"localhost:{port}"])
        assert_one_line_error(result, "no Triton server answering", str(port))


def test_unknown_protocol_is_one_line():
    result = runner.invoke(app, ["bench", "--protocol", "carrier-pigeon"])
    assert_one_line_error(result, "unknown protocol")


@pytest.mark.parametrize("levels", ["1,x", "0"])
def test_bad_concurrency_levels_are_refused(levels: str):
    port = find_free_port()
    result = runner.invoke(app, ["bench", "--concurrency", levels, "--url", f"localhost:{port}"])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_train_no_skip_trains_the_plain_twin_and_no_flip_keeps_the_recipes_pad(tmp_path: Path):
    from resnet_serve.checkpoints import read_checkpoint_meta

    output = tmp_path / "twin.safetensors"
    data = fashion_idx_folder(tmp_path / "fashion", train=256, test=64)
    result = runner.invoke(
        app, ["train", "--arch", "resnet20", "--no-skip", "--no-flip", "--data", str(data), "--epochs", "0.5",
              "--batch-size", "64", "-o", str(output)],
    )
    assert result.exit_code == 0, result.output
    meta = read_checkpoint_meta(output)
    assert meta.architecture == "plain20"
    assert (meta.training["flip"], meta.training["pad"]) == (False, 0)  # the demo recipe's pad


def test_train_negative_pad_is_one_line(tmp_path: Path):
    result = runner.invoke(app, ["train", "--pad", "-1", "-o", str(tmp_path / "x.safetensors")])
    assert_one_line_error(result, "pad must be ≥ 0 pixels", "got -1")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("precision", "weight_type"), [("int8", onnx.TensorProto.INT8), ("fp16", onnx.TensorProto.FLOAT16)])
def test_export_serves_a_lower_precision_file_checked_against_fp32(
    trained_resnet20: Path, tmp_path: Path, precision: str, weight_type: int
):
    report = tmp_path / "report.json"
    result = runner.invoke(app, [
        "export", str(trained_resnet20), "--repository", str(tmp_path / "repo"), "--name", "m",
        "--precision", precision, "--verify-images", "128", "--calibration-images", "64",
        "--min-agreement", "0.95", "--json", str(report),
    ])

    assert result.exit_code == 0, result.output
    assert f"{precision} ONNX vs FP32 ONNX: top-1 agreement" in result.output
    exported = json.loads(report.read_text())
    assert exported["precision"] == precision
    assert exported["precision_parity"]["n_images"] == 128
    assert exported["precision_parity"]["top1_agreement"] >= 0.95
    # The report holds each stage's own result, paths as strings only in the JSON.
    assert exported["entry"] == str(tmp_path / "repo" / "m")
    assert exported["model_file"] == str(tmp_path / "repo" / "m" / "1" / "model.onnx")
    assert Path(exported["lower_precision"]["path"]).name == f"model-{precision}.onnx"
    assert exported["options"]["selection"]["calibration_images"] == 64
    assert exported["folding"]["folded"] == 19 and "model" not in exported["folding"]
    assert exported["onnx_parity"]["top1_agreement"] == 1.0
    served = onnx.load(tmp_path / "repo" / "m" / "1" / "model.onnx")
    assert any(tensor.data_type == weight_type for tensor in served.graph.initializer)
    # Clients keep sending and receiving float32.
    assert served.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert served.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--precision", "int8", "--min-agreement", "99"], "a fraction from 0 to 1"),
        (["--rtol", "-1"], "rtol must be a finite number ≥ 0"),
        (["--verify-images", "0"], "image counts must be ≥ 1"),
        (["--opset", "9"], "opset 9 is not supported by the legacy exporter"),
        (["--preferred-batch-sizes", "8,128"], "preferred batch sizes [128] are not within 1..64"),
        (["--replace", "--version", "3"], "it takes no --version"),
        (["--threads", "0"], "threads must be ≥ 1"),
    ],
)
def test_bad_export_options_are_one_line_before_any_work(tmp_path: Path, options: list[str], message: str):
    # The checkpoint is never read: the options are refused first.
    result = runner.invoke(app, ["export", str(tmp_path / "never-read.safetensors"), "--repository", str(tmp_path / "repo"), *options])
    assert_one_line_error(result, message)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--precision", "int4"], "'int4' is not one of 'fp32', 'fp16', 'int8'"),
        (["--precision", "int8", "--calibration-method", "kl"], "'kl' is not one of 'minmax', 'entropy', 'percentile'"),
        (["--exporter", "jit"], "'jit' is not one of 'legacy', 'dynamo'"),
        (["--target", "tensorrt-plan"], "'tensorrt-plan' is not one of 'onnxruntime', 'openvino', 'python-onnxruntime'"),
        (["--instance-kind", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'gpu'"),
    ],
)
def test_export_choices_come_from_the_exporters_vocabulary(tmp_path: Path, options: list[str], message: str):
    result = runner.invoke(app, ["export", str(tmp_path / "never-read.safetensors"), "--repository", str(tmp_path / "repo"), *options])
    # Typer's usage error, in a box that wraps long lines.
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in " ".join(result.output.replace("│", " ").split())
    assert not (tmp_path / "repo").exists()


# --- options and output paths, refused before any work ---

# Commands whose counts are checked before the checkpoint is read get one that does not exist.
NEVER_READ = "never-read.safetensors"


@pytest.mark.parametrize(
    "arguments",
    [
        ["train", "--limit", "-5"], ["train", "--epochs", "-1"], ["train", "--batch-size", "-1"],
        ["train", "--pad", "-1"], ["train", "--nproc", "0"], ["train", "--workers", "-1"], ["train", "--threads", "0"],
        ["export", NEVER_READ, "--verify-images", "-3"], ["export", NEVER_READ, "--calibration-images", "-3"],
        ["export", NEVER_READ, "--max-batch-size", "-1"], ["export", NEVER_READ, "--warmup-images", "-1"],
        ["export", NEVER_READ, "--instances", "0"], ["export", NEVER_READ, "--version", "0"],
        ["export", NEVER_READ, "--format", "tensorrt", "--workspace-mb", "-1"],
        ["fold", NEVER_READ, "--verify-images", "-1"],
        ["verify", NEVER_READ, "--images", "-1"], ["verify", NEVER_READ, "--calibration-images", "-2"],
        ["verify", NEVER_READ, "--threads", "-1"],
        ["evaluate", "--limit", "-3"], ["evaluate", "--batch-size", "0"], ["evaluate", "--concurrency", "-1"],
        ["classify", "x.png", "--top-k", "-1"],
        ["experiment", "degradation", "--limit", "-1"], ["experiment", "degradation", "--test-limit", "-1"],
        ["experiment", "degradation", "--epochs", "-1"],
        ["experiment", "gradients", "--steps", "-1"], ["experiment", "gradients", "--batch-size", "-1"],
        ["demo", "--epochs", "-1"],
    ],
    ids=" ".join,
)
def test_counts_below_their_least_are_one_line_before_any_work(
    arguments: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # In an empty folder: whatever a command would write lands here, and nothing may.
    monkeypatch.chdir(tmp_path)
    value = next(a for a in arguments if a.lstrip("-").isdigit() and a.startswith("-") or a == "0")
    result = runner.invoke(app, arguments)
    assert_one_line_error(result, value)
    assert NEVER_READ not in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    return {"DIR": str(tmp_path / "folder"), "FILE": str(tmp_path / "file"), "UNDER_FILE": str(tmp_path / "file" / "x.json"),
            "OUT": str(tmp_path / "new.safetensors"), "CKPT": str(tmp_path / NEVER_READ)}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("train -o DIR", "DIR is a folder; give a file name"),
        ("train -o OUT --json DIR", "DIR is a folder"),
        ("train -o OUT --json UNDER_FILE", "cannot write UNDER_FILE: FILE is a file, not a folder"),
        ("train -o OUT --json /dev/null", "/dev/null exists and is not a regular file"),
        ("import CKPT --arch resnet18 -o DIR", "DIR is a folder"),
        ("fold CKPT -o DIR", "DIR is a folder"),
        ("fold CKPT --json DIR", "DIR is a folder"),
        ("export CKPT --json DIR", "DIR is a folder"),
        ("export CKPT --repository FILE", "FILE is a file, not a folder"),
        ("verify CKPT --json DIR", "DIR is a folder"),
        ("verify CKPT --keep-artifacts FILE", "FILE is a file, not a folder"),
        ("evaluate --json DIR", "DIR is a folder"),
        ("classify x.png --json DIR", "DIR is a folder"),
        ("bench --json DIR", "DIR is a folder"),
        ("bench --csv DIR", "DIR is a folder"),
        ("bench --plot UNDER_FILE", "FILE is a file, not a folder"),
        ("report --evaluate CKPT -o FILE", "FILE is a file, not a folder"),
        ("report --evaluate CKPT --screenshot DIR", "DIR is a folder"),
        ("demo --summary DIR", "DIR is a folder"),
        ("demo --workdir FILE", "FILE is a file, not a folder"),
        ("experiment degradation -o FILE", "FILE is a file, not a folder"),
        ("experiment gradients -o UNDER_FILE", "FILE is a file, not a folder"),
        ("tune r20 -o FILE", "FILE is a file, not a folder"),
    ],
)
def test_unusable_output_paths_are_one_line_before_any_work(
    arguments: str, message: str, paths: dict[str, str], tmp_path: Path
):
    def placed(text: str) -> str:
        return re.sub(r"\b(UNDER_FILE|FILE|DIR|OUT|CKPT)\b", lambda word: paths[word[1]], text)

    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, placed(arguments).split())
    assert_one_line_error(result, placed(message))
    assert sorted(tmp_path.rglob("*")) == before


def test_fold_never_writes_over_its_input(tmp_path: Path):
    from resnet_serve.pipeline import default_fold_output

    assert default_fold_output(Path("a/r20.safetensors")) == Path("a/r20.folded.onnx")
    assert default_fold_output(Path("a.folded.onnx")) == Path("a.folded.folded.onnx")
    assert default_fold_output(Path("model")) == Path("model.folded.onnx")
    source = tmp_path / "a.folded.onnx"
    source.write_bytes(b"the user's model")
    for output in (source, tmp_path / "." / "a.folded.onnx"):
        result = runner.invoke(app, ["fold", str(source), "-o", str(output)])
        assert_one_line_error(result, "refusing to fold", "onto itself")
    link = tmp_path / "link.onnx"
    link.symlink_to(source)
    assert_one_line_error(runner.invoke(app, ["fold", str(source), "-o", str(link)]), "onto itself")
    assert source.read_bytes() == b"the user's model"


def test_no_command_gives_one_flag_to_two_options() -> None:
    import typer.main

    def commands(group, path: str):
        for name, command in getattr(group, "commands", {}).items():
            yield f"{path} {name}", command
            yield from commands(command, f"{path} {name}")

    for path, command in commands(typer.main.get_command(app), "resnet-serve"):
        flags = [flag for parameter in command.params for flag in (*parameter.opts, *parameter.secondary_opts)]
        assert len(flags) == len(set(flags)), f"{path}: {sorted({f for f in flags if flags.count(f) > 1})}"
