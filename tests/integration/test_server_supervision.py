"""`resnet-serve serve` keeps the real embedded tritonserver serving: the two requests that crash
tritonserver 2.51 and a kill -9 under load each cost one restart (one line each in serve's
output), the dead server's shared memory is removed, and `bench --retries` completes across a
restart. `--no-restart` exits with one line instead. SIGTERM lets in-flight requests finish.
A start that fails the known transient way is retried once; IPv6 and host names are served.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from samples import fashion_mnist
from tiny_onnx import CLASS_NAMES, PREPROCESSING, export_tiny_classifier, write_entry
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.client.inference import InferenceClient
from resnet_serve.triton.server import SHARED_MEMORY, TritonInstallation, TritonServer, find_free_ports
from resnet_serve.triton.serving import ONNXRUNTIME

pytestmark = pytest.mark.triton

KEY = "supervision-test-admin-key-0123456789"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("supervision")
    export_tiny_classifier(root / "tiny.onnx")
    write_entry(repository=root / "repository", name="tiny", model_file=root / "tiny.onnx",
                      class_names=CLASS_NAMES, preprocessing=PREPROCESSING, metadata={}, target=ONNXRUNTIME)
    return root / "repository"


class Serve:
    """`resnet-serve serve` in a subprocess, its output collected line by line as it comes."""

    def __init__(self, repository: Path, log: Path, *options: str) -> None:
        self.http, self.grpc, self.metrics = find_free_ports(3)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "resnet_serve.cli", "serve", "--repository", str(repository),
             "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
             "--log-file", str(log), *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def matching(self, pattern: str) -> list[str]:
        with self._changed:
            return [line for line in self.lines if re.search(pattern, line)]

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 120.0) -> list[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(found := [line for line in self.lines if re.search(pattern, line)]) < count:
                left = deadline - time.monotonic()
                # Once serve has exited, its last lines get half a second to arrive.
                if left <= 0 or (self.process.poll() is not None and not self._changed.wait(0.5)):
                    pytest.fail(f"serve never printed {count}× {pattern!r}:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.5))
            return found

    def triton_pid(self) -> int:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def shm_prefix(pid: int) -> str:
    """The shared-memory prefix a tritonserver was started with (from its command line)."""
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    (option,) = [a for a in arguments if "shm-region-prefix-name=" in a]
    return option.split("shm-region-prefix-name=")[1]


def regions(prefix: str) -> list[Path]:
    return sorted(SHARED_MEMORY.glob(f"{prefix}*"))


def infer_ok(port: int) -> bool:
    client = httpclient.InferenceServerClient(f"localhost:{port}")
    request = httpclient.InferInput("input", [1, 1, 28, 28], "FP32")
    request.set_data_from_numpy(fashion_mnist(1))
    return client.infer("tiny", [request]).as_numpy("logits").shape == (1, 10)


@pytest.fixture(scope="module")
def serve(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    # A host name as the address: resolved, not handed to Triton as it is.
    running = Serve(repository, tmp_path_factory.mktemp("serve-log") / "triton.log",
                    "--address", "localhost", "--admin-key", KEY)
    try:
        running.wait_for("Press Ctrl-C to stop")
        yield running
    finally:
        assert running.stop() == 0, "\n".join(running.lines)


def huge_shape(port: int) -> None:
    """A JSON infer request claiming 10,000,000 images with 784 values: std::bad_alloc in 2.51."""
    body = json.dumps({"inputs": [{"name": "input", "shape": [10_000_000, 1, 28, 28], "datatype": "FP32",
                                   "data": [0.0] * 784}]}).encode()
    request = urllib.request.Request(f"http://localhost:{port}/v2/models/tiny/infer", data=body, method="POST")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(request, timeout=30)


def chunked(port: int, path: str = "/v2/models/tiny/infer") -> bytes:
    """600,000 one-byte chunks posted to `path`: SIGSEGV in 2.51 where a handler reads the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for _ in range(60):
                sock.sendall(b"1\r\na\r\n" * 10_000)
            sock.sendall(b"0\r\n\r\n")
            return sock.recv(200)
        except OSError:
            return b""


def test_the_admin_key_refuses_the_chunked_crash_on_the_repository_index(serve: Serve) -> None:
    """The published crash posts to the repository index: restricted, it is refused before its body is read."""
    pid = serve.triton_pid()

    assert chunked(serve.http, "/v2/repository/index").startswith(b"HTTP/1.1 403 Forbidden")
    assert serve.triton_pid() == pid and infer_ok(serve.http)


@pytest.mark.parametrize(("crash", "how"), [(huge_shape, "signal 6 \\(SIGABRT\\)"), (chunked, "signal 11 \\(SIGSEGV\\)")],
                         ids=["huge-shape", "600000-chunks"])
def test_a_request_that_kills_tritonserver_costs_one_restart(serve: Serve, crash, how: str) -> None:
    crashes, restarts = len(serve.matching("crashed:")), len(serve.matching("restarted"))
    pid = serve.triton_pid()
    prefix = shm_prefix(pid)
    assert regions(prefix), "the python stub's shared memory should exist while the server runs"

    crash(serve.http)

    (line,) = serve.wait_for("crashed:", count=crashes + 1)[crashes:]
    assert re.search(f"crashed: tritonserver exited with {how}: .*Signal \\(\\d+\\) received.*; removed 1 shared-memory "
                     "region\\(s\\); restarting in \\d+ s", line), line
    serve.wait_for("Triton restarted and is ready again", count=restarts + 1)
    assert serve.triton_pid() != pid
    assert regions(prefix) == []
    assert infer_ok(serve.http)


def test_bench_with_retries_completes_across_a_kill_under_load(serve: Serve, tmp_path: Path) -> None:
    restarts = len(serve.matching("restarted"))
    result = tmp_path / "bench.json"
    bench = subprocess.Popen(
        [sys.executable, "-m", "resnet_serve.cli", "bench", "--url", f"localhost:{serve.grpc}", "-p", "grpc",
         "-m", "tiny", "--concurrency", "2", "--warmup", "1", "--measurement-interval", "1000",
         "--stability-percentage", "1000", "--max-trials", "20", "--retries", "30", "--json", str(result)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        with InferenceClient(model="tiny", protocol="grpc", url=f"localhost:{serve.grpc}") as probe:
            deadline = time.monotonic() + 60
            while probe.statistics().inference_count < 50 and time.monotonic() < deadline:
                time.sleep(0.2)
        os.kill(serve.triton_pid(), signal.SIGKILL)
        output, _ = bench.communicate(timeout=180)
    finally:
        if bench.poll() is None:
            bench.kill()

    assert bench.returncode == 0, output
    (row,) = json.loads(result.read_text())["results"]
    assert row["retried_requests"] > 0 and row["requests"] > 0
    assert "failed tries were retried" in output
    serve.wait_for("Triton restarted and is ready again", count=restarts + 1)
    assert serve.matching("crashed: tritonserver exited with signal 9 \\(SIGKILL\\)")


def test_with_no_restart_a_crash_is_one_line_and_exit_1(repository: Path, tmp_path: Path) -> None:
    serve = Serve(repository, tmp_path / "triton.log", "--no-restart")
    try:
        serve.wait_for("Press Ctrl-C to stop")
        prefix = shm_prefix(serve.triton_pid())
        huge_shape(serve.http)
        assert serve.process.wait(timeout=60) == 1
    finally:
        serve.stop()
    serve.wait_for("^error:")
    (error,) = [line for line in serve.lines if "error" in line.lower() or "Traceback" in line]
    assert re.match(r"error: tritonserver exited with signal 6 \(SIGABRT\) \(last log lines: .*std::bad_alloc.*\) "
                    r"\(log: .*triton.log\)$", error), error
    assert regions(prefix) == []


SLOW_MODEL = '''
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(2)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
                for r in requests]
'''
SLOW_CONFIG = '''name: "slow"
backend: "python"
max_batch_size: 8
input { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }
output { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }
dynamic_batching { max_queue_delay_microseconds: 300000 }
instance_group { count: 1 kind: KIND_CPU }
'''


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    (tmp_path / "repository" / "slow" / "1").mkdir(parents=True)
    (tmp_path / "repository" / "slow" / "config.pbtxt").write_text(SLOW_CONFIG)
    (tmp_path / "repository" / "slow" / "1" / "model.py").write_text(SLOW_MODEL)
    serve = Serve(tmp_path / "repository", tmp_path / "triton.log")

    def slow_request(value: float) -> float:
        client = httpclient.InferenceServerClient(f"localhost:{serve.http}", network_timeout=60)
        request = httpclient.InferInput("IN", [1, 1], "FP32")
        request.set_data_from_numpy(np.array([[value]], dtype=np.float32))
        return float(client.infer("slow", [request]).as_numpy("OUT")[0, 0])

    try:
        serve.wait_for("Press Ctrl-C to stop")
        with ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(slow_request, float(i)) for i in range(4)]
            time.sleep(1.0)  # all four are in the server: queued together, then in the model's 2 s
            stopped_at = time.monotonic()
            serve.process.send_signal(signal.SIGTERM)
            assert [answer.result(timeout=60) for answer in answers] == [0.0, 1.0, 2.0, 3.0]
        assert serve.process.wait(timeout=60) == 0
        assert time.monotonic() - stopped_at < 30
    finally:
        serve.stop()


class FirstStartFailsTransiently(TritonServer):
    """The first start dies as the python backend's shared-memory lock once made one die."""

    def command(self, installation: TritonInstallation, backend_directory: Path, *, model_repository: Path) -> list[str]:
        if self._starts == 1:
            return ["sh", "-c", "echo \"terminate called after throwing an instance of "
                    "'boost::interprocess::lock_exception'\"; kill -ABRT $$"]
        return super().command(installation, backend_directory, model_repository=model_repository)


def test_a_start_that_fails_the_known_transient_way_is_retried_once(repository: Path, tmp_path: Path) -> None:
    http, grpc, metrics = find_free_ports(3)
    with FirstStartFailsTransiently(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                    log_file=tmp_path / "triton.log") as server:
        assert server.ready_versions() == {"tiny": (1,)}
    # The failed start's log is kept: the retry appends to it.
    log = (tmp_path / "triton.log").read_text()
    assert log.index("boost::interprocess::lock_exception") < log.index("Started GRPCInferenceService")


def test_ipv6_is_served_over_http_and_grpc(repository: Path, tmp_path: Path) -> None:
    http, grpc, metrics = find_free_ports(3)
    with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics, address="::1",
                      log_file=tmp_path / "triton.log") as server:
        assert server.urls.http == f"[::1]:{http}" and server.urls.grpc == f"[::1]:{grpc}"
        for protocol, url in (("http", server.urls.http), ("grpc", server.urls.grpc)):
            with InferenceClient(model="tiny", protocol=protocol, url=url) as client:
                assert client.infer(fashion_mnist(1)).shape == (1, 10)


@pytest.mark.parametrize(("address", "reason"), [
    ("999.1.1.1", "error: '999.1.1.1' is not a valid IP address"),
    ("192.0.2.1", "cannot be used: 192.0.2.1 is not an address of this machine"),
])
def test_an_address_that_cannot_be_served_is_one_line(repository: Path, address: str, reason: str) -> None:
    result = CliRunner().invoke(app, ["serve", "--repository", str(repository), "--address", address])

    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and reason in result.output, result.output
