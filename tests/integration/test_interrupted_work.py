"""Work cut short, with the real embedded tritonserver: an export killed (SIGKILL) while it
writes its entry, which `serve` then skips with a line and the next export cleans up; hostile
images sent through `classify`; and a server killed during `evaluate`, whose images answered
so far are kept, marked partial, with a non-zero exit.

The tests share one server and run in file order: the last one kills it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile import decompression_bomb, png, png_header_only, sixteen_bit_png, truncated_png
from samples import fashion_resnet20, fashion_test_set
from typer.testing import CliRunner

from resnet_serve.checkpoints import save_checkpoint
from resnet_serve.cli import app
from resnet_serve.client.inference import InferenceClient
from resnet_serve.triton.server import TritonServer, find_free_ports

pytestmark = pytest.mark.triton
runner = CliRunner()
MODEL = "r20"
# Small and quick: a few test images verify it; no image pipeline to load.
EXPORT_OPTIONS = ["--name", MODEL, "--verify-images", "8", "--warmup-images", "1", "--no-image-pipeline"]

# The export command, with the entry write made to stop once its staging folder holds the
# model file and say so: the moment the test kills it.
_EXPORT_KILLED_WHILE_WRITING = """
import sys, time
import resnet_serve.triton.repository.classifier as repository
write_model_files = repository._write_model_files

def write_then_hang(*args, **kwargs):
    write_model_files(*args, **kwargs)
    print("staging written", flush=True)
    time.sleep(600)

repository._write_model_files = write_then_hang
from resnet_serve.cli import app
app(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, meta = fashion_resnet20(seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("checkpoint") / "r20.safetensors", model=model, meta=meta)


@pytest.fixture(scope="module")
def killed_export(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A repository with version 1 of r20, and the pid of an export of version 2 killed while
    writing it."""
    repository = tmp_path_factory.mktemp("repository")
    exported = runner.invoke(app, ["export", str(checkpoint), "--repository", str(repository), *EXPORT_OPTIONS])
    assert exported.exit_code == 0, exported.output
    export = subprocess.Popen(
        [sys.executable, "-c", _EXPORT_KILLED_WHILE_WRITING, "export", str(checkpoint),
         "--repository", str(repository), *EXPORT_OPTIONS],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        for line in export.stdout:  # type: ignore[union-attr]
            if line.startswith("staging written"):
                break
    finally:
        export.send_signal(signal.SIGKILL)
        export.wait(timeout=30)
    assert export.returncode == -signal.SIGKILL
    return repository, export.pid


@pytest.fixture(scope="module")
def server(killed_export: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory):
    repository, _ = killed_export
    http, grpc, metrics = find_free_ports(3)
    log = tmp_path_factory.mktemp("log") / "tritonserver.log"
    with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                      log_file=log) as running:
        yield running


def test_the_killed_export_left_its_staging_folder_and_the_entry_as_it_was(killed_export: tuple[Path, int]) -> None:
    repository, pid = killed_export
    staging = [p.name for p in repository.iterdir() if p.name.startswith(f".{MODEL}.staging-{pid}-")]
    assert len(staging) == 1 and (repository / staging[0] / "2" / "model.onnx").is_file()
    assert sorted(p.name for p in (repository / MODEL).iterdir() if p.name.isdigit()) == ["1"]


def test_serve_skips_the_killed_exports_folder_with_a_line_and_serves_the_entry(
    server: TritonServer, killed_export: tuple[Path, int]
) -> None:
    _, pid = killed_export
    skipped = {entry.name: entry.reason for entry in server.skipped}
    assert list(skipped.values()) == [
        f"a stale staging folder of dead export pid {pid} (the next export of '{MODEL}' cleans it up), "
        "which Triton would try to load as a model"
    ]
    assert server.ready_versions() == {MODEL: (1,)}


# Pillow warns of a decompression bomb before our own limit refuses it.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("name", "data", "refusal"),
    [
        ("bomb.png", decompression_bomb(), "bomb.png: 10000×10000 is 100,000,000 pixels, more than the 64,000,000"),
        ("header-bomb.png", png_header_only(50_000, 50_000), "header-bomb.png: more than the 64,000,000 pixels"),
        ("truncated.png", truncated_png(fashion_test_set().images[0]), "truncated.png: not a readable image"),
    ],
)
def test_classify_refuses_a_hostile_image_in_one_line(
    server: TritonServer, tmp_path: Path, name: str, data: bytes, refusal: str
) -> None:
    (tmp_path / name).write_bytes(data)
    result = runner.invoke(app, ["classify", str(tmp_path / name), "--url", server.urls.http, "--model", MODEL])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {refusal}"), result.output


def test_classify_reads_a_sixteen_bit_png_as_its_eight_bit_twin(server: TritonServer, tmp_path: Path) -> None:
    image = fashion_test_set().images[0]
    (tmp_path / "eight.png").write_bytes(png(image))
    (tmp_path / "sixteen.png").write_bytes(sixteen_bit_png(image))
    answers = []
    for name in ("eight.png", "sixteen.png"):
        out = tmp_path / f"{name}.json"
        result = runner.invoke(app, ["classify", str(tmp_path / name), "--url", server.urls.http, "--model", MODEL,
                                     "--json", str(out)])
        assert result.exit_code == 0, result.output
        answers.append(json.loads(out.read_text())["images"][0]["predictions"])
    assert answers[0] == answers[1]


def test_the_next_export_removes_what_the_killed_one_left(
    checkpoint: Path, killed_export: tuple[Path, int]
) -> None:
    repository, pid = killed_export
    result = runner.invoke(app, ["export", str(checkpoint), "--repository", str(repository), *EXPORT_OPTIONS])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the reporter's lines wrap at the terminal's width
    assert f"removed .{MODEL}.staging-{pid}-" in said
    assert f"a stale staging folder of dead export pid {pid}" in said
    assert sorted(p.name for p in repository.iterdir()) == [MODEL]
    assert sorted(p.name for p in (repository / MODEL).iterdir() if p.name.isdigit()) == ["1", "2"]


def test_evaluate_keeps_what_it_measured_when_the_server_is_killed(server: TritonServer, tmp_path: Path) -> None:
    """Last: it kills the shared server. 10,000 images one per request take far longer than
    the moment the server dies, a hundred requests in."""
    report = tmp_path / "evaluate.json"
    with InferenceClient(model=MODEL, protocol="grpc", url=server.urls.grpc) as client:
        # The earlier tests' requests are in the server's count too.
        answered_before = client.statistics().inference_count
        evaluate = subprocess.Popen(
            [sys.executable, "-m", "resnet_serve.cli", "evaluate", "--url", server.urls.grpc, "--model", MODEL,
             "--batch-size", "1", "--concurrency", "1", "--json", str(report)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 120
        while (client.statistics().inference_count < answered_before + 100 and evaluate.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.05)
    os.kill(server.pid, signal.SIGKILL)
    _, stderr = evaluate.communicate(timeout=120)

    assert evaluate.returncode == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr and len(errors) == 1, stderr
    result = json.loads(report.read_text())
    assert result["partial"] is True and result["images_requested"] == 10_000
    # The server counts a request before its answer leaves: the 100th may die on the way.
    assert 99 <= result["images"] < 10_000
    assert errors[0] == (
        f"error: the evaluation stopped after {result['images']} of 10000 images: {result['stopped_by']}; "
        f"the {result['images']} answered are in {report}, marked partial"
    )
    assert sum(map(sum, result["confusion_matrix"])) == result["images"]
