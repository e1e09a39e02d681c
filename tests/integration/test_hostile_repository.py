"""A repository with every hostile entry of tests/hostile.py's REPOSITORY_CORPUS beside a
healthy exported one (classifier, -preprocess, -image), through `serve`, `repo check` and
`repo list` as users run them: the healthy entries are served, each bad entry is one line,
nothing traces back, and `repo check`'s verdict is what `serve` does."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import REPOSITORY_CORPUS
from processes import start_interruptible
from samples import fashion_mnist
from tiny_onnx import CLASS_NAMES, PREPROCESSING, export_tiny_classifier, write_entry

from resnet_serve.triton.repository import write_image_pipeline
from resnet_serve.triton.server import find_free_ports

pytestmark = pytest.mark.triton

HEALTHY = ("m", "m-image", "m-preprocess")
SERVED = {*HEALTHY, *(name for case in REPOSITORY_CORPUS if case.served for name in case.names)}
REFUSED = {name for case in REPOSITORY_CORPUS if not case.served for name in case.names}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-repository")
    export_tiny_classifier(root / "tiny.onnx")
    repository = root / "repository"
    write_entry(repository=repository, name="m", model_file=root / "tiny.onnx", class_names=CLASS_NAMES,
                      preprocessing=PREPROCESSING, warmup_images=fashion_mnist(1))
    write_image_pipeline(repository=repository, classifier="m")
    healthy_copy = root / "healthy" / "m"
    write_entry(repository=healthy_copy.parent, name="m", model_file=root / "tiny.onnx",
                      class_names=CLASS_NAMES, preprocessing=PREPROCESSING)
    for case in REPOSITORY_CORPUS:
        case.make(healthy_copy, repository)
    return repository


def run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resnet_serve.cli", *arguments], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def serve_output(repository: Path) -> Iterator[str]:
    """What `serve` says up to "Press Ctrl-C", then it is stopped."""
    http, grpc, metrics = find_free_ports(3)
    process = start_interruptible(
        [sys.executable, "-m", "resnet_serve.cli", "serve", "--repository", str(repository), "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "500"},
    )
    lines = []
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
    finally:
        process.send_signal(signal.SIGINT)
        lines += process.communicate(timeout=60)[0].splitlines(keepends=True)
    yield "".join(lines)


def skipped_lines(output: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        match = re.match(r"skipped (.+?): (.*)", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


def test_serve_serves_the_healthy_entries_and_skips_each_bad_one_in_one_line(serve_output: str) -> None:
    assert "Traceback" not in serve_output
    (ready,) = re.findall(r"Triton is ready with (.*)", serve_output)
    assert set(ready.split(", ")) == SERVED, serve_output
    skipped = skipped_lines(serve_output)
    assert set(skipped) == REFUSED, serve_output
    for case in REPOSITORY_CORPUS:
        for name in case.names if not case.served else ():
            (line,) = skipped[name]
            assert case.says in line, (name, line)


def test_repo_check_says_what_serve_does(repository: Path, serve_output: str) -> None:
    done = run("repo", "check", "--repository", str(repository))

    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    by_entry: dict[str, list[str]] = {}
    for line in lines:
        entry = next((name for name in sorted(SERVED | REFUSED, key=len, reverse=True) if line.startswith(f"{name}: ")),
                     None)
        assert entry is not None, line
        by_entry.setdefault(entry, []).append(line)
    errors = {name for name, found in by_entry.items() if any(": warning: " not in line for line in found)}
    # The verdict: an entry repo check calls an error is one serve skips, and the other way round.
    assert errors == set(skipped_lines(serve_output)) == REFUSED
    for case in REPOSITORY_CORPUS:
        for name in case.names:
            assert any(case.says in line for line in by_entry[name]), (name, by_entry[name])
    assert not set(HEALTHY) & set(by_entry)


def test_repo_list_lists_every_entry_it_can_read_and_says_why_of_the_others(repository: Path) -> None:
    done = run("repo", "list", "--repository", str(repository), "--json")

    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    assert {name for name, entry in listed.items() if "problem" not in entry} >= set(HEALTHY)
    # Every folder with a config.pbtxt is listed, readable or not; a FIFO or a device is never read.
    with_config = {p.name for p in repository.iterdir() if (p / "config.pbtxt").exists()}
    assert set(listed) == with_config
    for name in ("fifo", "dev-zero", "binary-config", "huge-labels", "with space", "mü", "symlink-loop"):
        assert listed[name]["problem"], name
