"""The reference engine: Triton's own perf_analyzer, run as a program, its CSV read into our rows.

perf_analyzer 2.40 is the last one shipped inside a PyPI wheel (tritonclient 2.40.0's data
folder); `make perf-analyzer` copies that one file into the virtualenv's bin folder. It links
against libb64 (Debian's libb64-0d) and libcudart.so.12 even without a GPU: the nvidia-pytriton
wheel carries a libcudart under a hashed name, so a symlink of the expected name is made in the
run's scratch folder, which goes on LD_LIBRARY_PATH.

Each level runs as one perf_analyzer process (its ranges cannot express 1,2,4) with
``--percentile=99``, so that it judges stability on p99 as our engine does, and with
``--verbose-csv`` (mean latency) and ``--profile-export-file`` (every request of the stable
windows, for the standard deviation and the request count, which its CSV lacks).

Real files are sent through ``--input-data``: a JSON file with one entry per file, which
perf_analyzer goes round (a batch of N takes N consecutive entries). An ensemble's split between
its steps comes from Triton's statistics asked before and after each level's process.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from resnet_serve.client.connection import Endpoint
from resnet_serve.client.inference import ModelStatistics
from resnet_serve.client.load import Distribution
from resnet_serve.client.results import (
    PERF_ANALYZER_COLUMNS,
    REQUEST_RATE_COLUMN,
    BenchmarkResult,
    ConcurrencyResult,
    StepResult,
)
from resnet_serve.client.stability import StabilityRule, UnstableMeasurementError
from resnet_serve.errors import ClientError, MissingDependencyError
from resnet_serve.machine import describe_machine
from resnet_serve.progress import Reporter, SilentReporter

__all__ = ["find_perf_analyzer", "link_cuda_runtime", "read_perf_analyzer_csv", "run_perf_analyzer", "write_input_data"]

INSTALL_HINT = "perf_analyzer is not installed; `make perf-analyzer` takes it from the tritonclient 2.40.0 wheel"
# perf_analyzer's exit codes when a level did not stabilise within --max-trials windows, and
# when a window saw no request complete; our engine reports both as unstable.
_UNSTABLE_EXIT_CODES = {2: "Failed to obtain stable measurement within", 3: "No valid requests recorded"}


def find_perf_analyzer() -> Path:
    """The perf_analyzer beside this interpreter (where `make perf-analyzer` puts it), else on PATH."""
    beside = Path(sys.executable).parent / "perf_analyzer"
    found = beside if beside.is_file() else shutil.which("perf_analyzer")
    if found is None:
        raise MissingDependencyError(INSTALL_HINT)
    return Path(found)


def link_cuda_runtime(folder: Path) -> None:
    """Put a ``libcudart.so.12`` in ``folder``: a symlink to the copy in the nvidia-pytriton wheel."""
    from resnet_serve.triton.server import find_triton_installation

    libraries = find_triton_installation().libraries
    candidates = sorted(libraries.glob("libcudart*.so.12*"))
    if not candidates:
        raise MissingDependencyError(f"perf_analyzer needs libcudart.so.12 and {libraries} has none")
    (folder / "libcudart.so.12").symlink_to(candidates[0])


def connection_arguments(endpoint: Endpoint) -> list[str]:
    """perf_analyzer's options for the endpoint's address, TLS and headers. Its HTTP client takes
    the scheme in the URL; version 2.40 sends -H headers over HTTP only, so a gRPC endpoint with
    headers is refused rather than measured without them."""
    if endpoint.protocol == "grpc" and endpoint.options.headers:
        raise ClientError(
            "perf_analyzer 2.40 cannot send headers over gRPC; use --protocol http or the resnet-serve engine"
        )
    ca_cert = endpoint.options.ca_cert
    if endpoint.protocol == "grpc":
        arguments = ["-u", endpoint.address, "-i", "grpc"]
        if endpoint.tls:
            arguments.append("--ssl-grpc-use-ssl=true")
            arguments += [f"--ssl-grpc-root-certifications-file={ca_cert}"] if ca_cert else []
        return arguments
    arguments = ["-u", str(endpoint) if endpoint.tls else endpoint.address, "-i", "http"]
    if endpoint.tls:
        arguments += [f"--ssl-https-ca-certificates-file={ca_cert}"] if ca_cert else []
        arguments += ["--ssl-https-verify-peer=0", "--ssl-https-verify-host=0"] if endpoint.options.insecure else []
    for name, value in endpoint.http_headers.items():
        arguments += ["-H", f"{name}:{value}"]
    return arguments


def perf_analyzer_command(
    binary: Path,
    *,
    model: str,
    endpoint: Endpoint,
    batch_size: int,
    concurrency: int | None,
    request_rate: float | None,
    distribution: Distribution,
    max_threads: int,
    measurement_seconds: float,
    stability: StabilityRule,
    csv_path: Path,
    export_path: Path,
    input_data: Path | None = None,
) -> list[str]:
    """One level's command line: a concurrency level, or a request rate when ``request_rate`` is set."""
    level = (
        [f"--concurrency-range={concurrency}:{concurrency}"]
        if request_rate is None
        else [f"--request-rate-range={request_rate:g}:{request_rate:g}", f"--request-distribution={distribution}",
              f"--max-threads={max_threads}"]
    )
    return [
        str(binary), "-m", model, *connection_arguments(endpoint), "-b", str(batch_size), *level,
        f"--measurement-interval={max(round(measurement_seconds * 1000), 1)}",
        f"--stability-percentage={stability.percentage:g}", f"--max-trials={stability.max_trials}",
        "--percentile=99", "-f", str(csv_path), "--verbose-csv", f"--profile-export-file={export_path}",
        *([f"--input-data={input_data}"] if input_data is not None else []),
    ]


def write_input_data(path: Path, *, inputs: Mapping[str, Sequence[bytes]]) -> None:
    """perf_analyzer's --input-data JSON: entry i holds element i of every input (BYTES tensors of
    one element each). A BYTES element is base64 of its 4-byte little-endian length, then it."""
    counts = {len(values) for values in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise ClientError(f"input data needs the same, non-zero number of elements for every input, got {counts}")
    entries = [
        {name: {"b64": base64.b64encode(len(values[i]).to_bytes(4, "little") + values[i]).decode("ascii")}
         for name, values in inputs.items()}
        for i in range(counts.pop())
    ]
    path.write_text(json.dumps({"data": entries}))


def read_perf_analyzer_csv(
    path: Path, *, batch_size: int, requests: int = 0, std_ms: float | None = None, windows: int = 1
) -> list[ConcurrencyResult]:
    """Rows of a perf_analyzer CSV (µs) as our rows (ms for latencies). The mean latency comes
    from ``--verbose-csv``'s "Avg latency", or is the sum of the parts when that is absent."""
    with path.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    rows = []
    for entry in table:
        try:
            values = {key: float(value) for key, value in entry.items() if key and value not in (None, "")}
            request_rate = values.get(REQUEST_RATE_COLUMN)
            # Client Send … Client Recv: the parts perf_analyzer splits the mean latency into.
            mean_us = values.get("Avg latency", sum(values[part] for part in PERF_ANALYZER_COLUMNS[2:9]))
            rows.append(ConcurrencyResult(
                concurrency=int(values.get("Concurrency", 0)),
                batch_size=batch_size,
                requests=requests,
                inferences_per_second=values["Inferences/Second"],
                requests_per_second=values["Inferences/Second"] / batch_size,
                p50_ms=values["p50 latency"] / 1000,
                p90_ms=values["p90 latency"] / 1000,
                p95_ms=values["p95 latency"] / 1000,
                p99_ms=values["p99 latency"] / 1000,
                mean_ms=mean_us / 1000,
                std_ms=std_ms,
                server_queue_us=values["Server Queue"],
                server_compute_input_us=values["Server Compute Input"],
                server_compute_infer_us=values["Server Compute Infer"],
                server_compute_output_us=values["Server Compute Output"],
                client_send_us=values["Client Send"],
                client_recv_us=values["Client Recv"],
                request_rate=request_rate,
                windows=windows,
            ))
        except (KeyError, ValueError) as exc:
            raise ClientError(f"{path} is not a perf_analyzer CSV ({type(exc).__name__}: {exc})") from None
    return rows


def _profile_figures(path: Path) -> tuple[int, float | None]:
    """(requests, latency std in ms) of the stable windows, whose requests a profile export holds."""
    try:
        experiment = json.loads(path.read_text())["experiments"][-1]
        latencies = np.array(
            [r["response_timestamps"][-1] - r["timestamp"] for r in experiment["requests"] if r["response_timestamps"]],
            dtype=np.float64,
        )
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return 0, None
    return int(latencies.size), float(latencies.std() / 1e6) if latencies.size else None


def run_perf_analyzer(
    *,
    model: str,
    endpoint: Endpoint,
    batch_size: int = 1,
    concurrency: Sequence[int] = (1, 2, 4),
    request_rates: Sequence[float] = (),
    distribution: Distribution = "constant",
    max_outstanding: int = 16,
    measurement_seconds: float = 5.0,
    stability: StabilityRule | None = None,
    inputs: Mapping[str, Sequence[bytes]] | None = None,
    statistics: Callable[[], ModelStatistics] | None = None,
    reporter: Reporter | None = None,
) -> BenchmarkResult:
    """Run perf_analyzer once per level against ``model`` and return its figures in our schema.

    perf_analyzer sends its own random data, or with ``inputs`` (input name → encoded elements,
    e.g. image files) those elements in turn, and takes no warm-up: its first windows, until
    three agree, are its warm-up. In request-rate mode ``max_outstanding`` is its --max-threads.
    With ``statistics`` (the model's Triton statistics) an ensemble's rows get its steps' split,
    over the whole of each level's process.
    """
    reporter = reporter or SilentReporter()
    stability = stability or StabilityRule()
    binary = find_perf_analyzer()
    levels: list[tuple[int | None, float | None]] = (
        [(None, rate) for rate in request_rates] if request_rates else [(n, None) for n in concurrency]
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as scratch:
        link_cuda_runtime(Path(scratch))
        input_data = None
        if inputs is not None:
            input_data = Path(scratch) / "input-data.json"
            write_input_data(input_data, inputs=inputs)
        environment = dict(os.environ)
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (scratch, environment.get("LD_LIBRARY_PATH")) if p)
        for index, (level, rate) in enumerate(levels):
            label = f"perf_analyzer, concurrency {level}" if rate is None else f"perf_analyzer, request rate {rate:g}/s"
            csv_path, export_path = Path(scratch) / f"{index}.csv", Path(scratch) / f"{index}.json"
            command = perf_analyzer_command(
                binary, model=model, endpoint=endpoint, batch_size=batch_size, concurrency=level,
                request_rate=rate, distribution=distribution, max_threads=max_outstanding,
                measurement_seconds=measurement_seconds, stability=stability, csv_path=csv_path,
                export_path=export_path, input_data=input_data,
            )
            reporter.start(label, total=None)
            try:
                before = statistics() if statistics is not None else None
                finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
                steps = [] if statistics is None or before is None else StepResult.split(statistics() - before)
            except OSError as exc:
                raise MissingDependencyError(f"cannot run {binary}: {exc.strerror}") from None
            finally:
                reporter.finish()
            _check_exit(finished, label=label)
            requests, std_ms = _profile_figures(export_path)
            # perf_analyzer reports a level once its last stability.windows windows agree.
            found = read_perf_analyzer_csv(csv_path, batch_size=batch_size, requests=requests, std_ms=std_ms,
                                           windows=stability.windows)
            if not found:
                raise ClientError(f"{label} wrote no result row")
            rows.extend(replace(row, concurrency=max_outstanding if rate is not None else row.concurrency,
                                steps=steps or None) for row in found)
    return BenchmarkResult(
        model=model, protocol=endpoint.protocol, url=endpoint.address, batch_size=batch_size, warmup_seconds=0.0,
        measurement_seconds=measurement_seconds, results=rows, engine="perf_analyzer",
        mode="request-rate" if request_rates else "concurrency",
        distribution=distribution if request_rates else None, client=None,
        stability_percentage=stability.percentage, max_trials=stability.max_trials, machine=describe_machine(),
    )


def _check_exit(finished: subprocess.CompletedProcess[str], *, label: str) -> None:
    if finished.returncode == 0:
        return
    output = f"{finished.stdout}\n{finished.stderr}"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    missing = next((line for line in lines if "error while loading shared libraries" in line), None)
    if missing is not None:
        library = missing.split("shared libraries:")[-1].split(":")[0].strip()
        hint = " (Debian package libb64-0d: make system-packages)" if "libb64" in library else ""
        raise MissingDependencyError(f"perf_analyzer cannot load {library}{hint}")
    marker = _UNSTABLE_EXIT_CODES.get(finished.returncode)
    unstable = next((line for line in lines if marker and line.startswith(marker)), None)
    if unstable is not None:
        raise UnstableMeasurementError(f"{label}: {unstable}")
    reason = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "no output")
    raise ClientError(f"{label} failed (exit {finished.returncode}): {reason[:300]}")
