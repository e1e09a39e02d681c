"""Serving benchmark in perf_analyzer's vocabulary, with two engines and one result schema.

- ``resnet-serve``: our own load generator (`client/load.py`) sending prepared requests
  (`client/prepared.py`), at fixed concurrency levels (closed loop) or request rates (open
  loop, constant or Poisson), measured in windows until stable (`client/stability.py`).
- ``perf_analyzer``: the real perf_analyzer binary (`client/perf_analyzer.py`), its CSV read
  into the same rows.

Both report throughput, p50/p90/p95/p99, mean and standard deviation of the latency, the
client's send/receive time and the server's split (queue, compute input/infer/output) over
the stable windows, and write perf_analyzer's CSV columns, so the two can be compared row by
row and plotted by the same tools.
"""

from __future__ import annotations

import csv
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np

from resnet_serve.client.inference import InferenceClient, Protocol
from resnet_serve.client.load import (
    AsyncClosedLoop,
    ClosedLoop,
    Distribution,
    LoadGenerator,
    OpenLoop,
    Window,
    measure_load,
)
from resnet_serve.client.prepared import prepare_request
from resnet_serve.client.stability import StabilityRule
from resnet_serve.errors import ClientError
from resnet_serve.files import replacing_atomically
from resnet_serve.progress import Reporter, SilentReporter

Engine = Literal["resnet-serve", "perf_analyzer"]
ENGINES: tuple[str, ...] = ("resnet-serve", "perf_analyzer")
ClientKind = Literal["threads", "asyncio"]

# perf_analyzer's CSV header after its first column ("Concurrency", or "Request Rate" in
# request-rate mode), so tools that plot its output read ours. Values in µs.
PERF_ANALYZER_COLUMNS = (
    "Concurrency",
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
)
REQUEST_RATE_COLUMN = "Request Rate"
# The CPU features that decide how fast a CPU runs a ResNet; recorded with every benchmark.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class ConcurrencyResult:
    """One point of a sweep. Latencies are per request, in milliseconds; client and server
    figures are averages per request, in microseconds.

    In request-rate mode ``request_rate`` is the rate asked for, ``requests_per_second`` the rate
    achieved, and ``concurrency`` the bound on requests in flight.
    """

    concurrency: int
    batch_size: int
    requests: int
    inferences_per_second: float
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    server_queue_us: float
    server_compute_input_us: float
    server_compute_infer_us: float
    server_compute_output_us: float
    std_ms: float | None = None
    client_send_us: float = 0.0
    client_recv_us: float = 0.0
    request_rate: float | None = None
    # Open loop only (None otherwise): requests sent over 1 ms after their time, and not sent.
    late_requests: int | None = None
    dropped_requests: int | None = None
    windows: int = 1

    @property
    def server_us(self) -> float:
        return (
            self.server_queue_us
            + self.server_compute_input_us
            + self.server_compute_infer_us
            + self.server_compute_output_us
        )

    @property
    def network_us(self) -> float:
        """perf_analyzer's "Network+Server Send/Recv": what the mean latency leaves after the
        client's send and receive and the server's queue and compute."""
        return max(self.mean_ms * 1000 - self.client_send_us - self.client_recv_us - self.server_us, 0.0)

    def perf_analyzer_row(self) -> list[float]:
        return [
            self.concurrency if self.request_rate is None else round(self.request_rate, 2),
            round(self.inferences_per_second, 2),
            round(self.client_send_us),
            round(self.network_us),
            round(self.server_queue_us),
            round(self.server_compute_input_us),
            round(self.server_compute_infer_us),
            round(self.server_compute_output_us),
            round(self.client_recv_us),
            round(self.p50_ms * 1000),
            round(self.p90_ms * 1000),
            round(self.p95_ms * 1000),
            round(self.p99_ms * 1000),
        ]


@dataclass(frozen=True)
class BenchmarkResult:
    model: str
    protocol: str
    url: str
    batch_size: int
    warmup_seconds: float
    measurement_seconds: float
    results: list[ConcurrencyResult] = field(default_factory=list)
    engine: str = "resnet-serve"
    mode: Literal["concurrency", "request-rate"] = "concurrency"
    distribution: str | None = None
    client: str | None = "threads"
    stability_percentage: float = 10.0
    max_trials: int = 10
    machine: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BenchmarkResult:
        """Read a result written by any version: unknown keys are ignored, missing ones default."""
        row_keys = {f.name for f in fields(ConcurrencyResult)}
        rows = [ConcurrencyResult(**{k: v for k, v in row.items() if k in row_keys}) for row in data["results"]]
        keys = {f.name for f in fields(cls)} - {"results"}
        return cls(**{k: v for k, v in data.items() if k in keys}, results=rows)

    def write_csv(self, path: Path) -> None:
        """perf_analyzer's CSV: its columns in its order, values in µs."""
        header = list(PERF_ANALYZER_COLUMNS)
        if self.mode == "request-rate":
            header[0] = REQUEST_RATE_COLUMN
        with replacing_atomically(path) as temporary, temporary.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(row.perf_analyzer_row() for row in self.results)


def describe_machine() -> str:
    """The CPU model, its core count and the features that matter for a ResNet (from
    /proc/cpuinfo), so that a measured speed says where it was measured."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    present = [flag for flag in CPU_FLAGS if flag in flags]
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(present) or 'none of ' + '/'.join(CPU_FLAGS)}"


def summarize_windows(windows: Sequence[Window], *, concurrency: int, request_rate: float | None) -> ConcurrencyResult:
    """One row from the stable windows: their requests pooled, the server's counters over the
    same span."""
    latencies = np.concatenate([w.latencies_ns for w in windows]) / 1e6
    seconds = sum(w.seconds for w in windows)
    delta = windows[-1].server_after - windows[0].server_before
    # Requests that finish after the last edge still reach the server's counters; averaging
    # per executed request keeps the split right regardless.
    per_request = max(delta.success_count, 1) * 1000
    p50, p90, p95, p99 = np.percentile(latencies, [50, 90, 95, 99])
    return ConcurrencyResult(
        concurrency=concurrency,
        batch_size=windows[0].batch_size,
        requests=int(latencies.size),
        inferences_per_second=latencies.size * windows[0].batch_size / seconds,
        requests_per_second=latencies.size / seconds,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=float(latencies.mean()),
        std_ms=float(latencies.std()),
        server_queue_us=delta.queue_ns / per_request,
        server_compute_input_us=delta.compute_input_ns / per_request,
        server_compute_infer_us=delta.compute_infer_ns / per_request,
        server_compute_output_us=delta.compute_output_ns / per_request,
        client_send_us=float(np.concatenate([w.send_ns for w in windows]).mean()) / 1000,
        client_recv_us=float(np.concatenate([w.recv_ns for w in windows]).mean()) / 1000,
        request_rate=request_rate,
        late_requests=None if request_rate is None else sum(w.late for w in windows),
        dropped_requests=None if request_rate is None else sum(w.dropped for w in windows),
        windows=len(windows),
    )


def check_levels(*, concurrency: Sequence[int], request_rates: Sequence[float]) -> None:
    if request_rates:
        if any(rate <= 0 for rate in request_rates):
            raise ClientError(f"request rates must be > 0, got {list(request_rates)}")
    elif not concurrency or any(level < 1 for level in concurrency):
        raise ClientError(f"concurrency levels must be ≥ 1, got {list(concurrency)}")


def benchmark(
    *,
    probe: InferenceClient,
    batch: np.ndarray,
    concurrency: Sequence[int] = (1, 2),
    request_rates: Sequence[float] = (),
    distribution: Distribution = "constant",
    max_outstanding: int = 16,
    seed: int = 0,
    client: ClientKind = "threads",
    warmup_seconds: float = 2.0,
    measurement_seconds: float = 5.0,
    stability: StabilityRule | None = None,
    reporter: Reporter | None = None,
) -> BenchmarkResult:
    """Measure the model ``probe`` is connected to with ``batch`` ([N, C, H, W], preprocessed).

    With ``request_rates`` each rate is an open loop of at most ``max_outstanding`` requests in
    flight; otherwise each ``concurrency`` level is a closed loop of that many ``client``
    workers. Every level warms up, then is measured in windows of ``measurement_seconds`` until
    ``stability`` holds (UnstableMeasurementError otherwise).
    """
    reporter = reporter or SilentReporter()
    stability = stability or StabilityRule()
    check_levels(concurrency=concurrency, request_rates=request_rates)
    if client not in ("threads", "asyncio"):
        raise ClientError(f"unknown client {client!r}; choose threads or asyncio")
    request = prepare_request(served=probe.model, batch=batch, protocol=probe.protocol, url=probe.url)
    levels: list[tuple[int, float | None]] = (
        [(max_outstanding, rate) for rate in request_rates] if request_rates else [(n, None) for n in concurrency]
    )
    rows = []
    for level, rate in levels:
        label = f"concurrency {level}" if rate is None else f"request rate {rate:g}/s"
        load: LoadGenerator
        if rate is not None:
            load = OpenLoop(request, rate=rate, distribution=distribution, max_outstanding=level, seed=seed)
        elif client == "asyncio":
            load = AsyncClosedLoop(request, concurrency=level)
        else:
            load = ClosedLoop(request, concurrency=level)
        reporter.start(label, total=None)
        try:
            windows = measure_load(
                load, statistics=probe.statistics, batch_size=request.batch_size, warmup_seconds=warmup_seconds,
                interval_seconds=measurement_seconds, rule=stability, label=label,
            )
        finally:
            reporter.finish()
        rows.append(summarize_windows(windows, concurrency=level, request_rate=rate))
    return BenchmarkResult(
        model=probe.model.name,
        protocol=probe.protocol,
        url=probe.url,
        batch_size=request.batch_size,
        warmup_seconds=warmup_seconds,
        measurement_seconds=measurement_seconds,
        results=rows,
        engine="resnet-serve",
        mode="request-rate" if request_rates else "concurrency",
        distribution=distribution if request_rates else None,
        client=None if request_rates else client,
        stability_percentage=stability.percentage,
        max_trials=stability.max_trials,
        machine=describe_machine(),
    )


def benchmark_served_model(
    *,
    model: str | None = None,
    protocol: Protocol = "grpc",
    url: str | None = None,
    engine: Engine = "resnet-serve",
    batch_size: int = 1,
    concurrency: Sequence[int] = (1, 2, 4),
    request_rates: Sequence[float] = (),
    distribution: Distribution = "constant",
    max_outstanding: int = 16,
    client: ClientKind = "threads",
    warmup_seconds: float = 2.0,
    measurement_seconds: float = 5.0,
    stability: StabilityRule | None = None,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> BenchmarkResult:
    """Benchmark a served model with a batch of the shape it declares, with either engine.

    The pixel values do not change a ResNet's cost, so a seeded random batch stands in for
    images (perf_analyzer sends its own random data) and the benchmark works for any served
    classifier.
    """
    if batch_size < 1:
        raise ClientError(f"batch size must be ≥ 1, got {batch_size}")
    if engine not in ENGINES:
        raise ClientError(f"unknown engine {engine!r}; choose {' or '.join(ENGINES)}")
    check_levels(concurrency=concurrency, request_rates=request_rates)
    stability = stability or StabilityRule()
    with InferenceClient(model=model, protocol=protocol, url=url) as probe:
        if engine == "perf_analyzer":
            from resnet_serve.client.perf_analyzer import run_perf_analyzer

            return run_perf_analyzer(
                served=probe.model, protocol=protocol, url=probe.url, batch_size=batch_size,
                concurrency=concurrency, request_rates=request_rates, distribution=distribution,
                max_outstanding=max_outstanding, measurement_seconds=measurement_seconds, stability=stability,
                reporter=reporter,
            )
        batch = np.random.default_rng(seed).standard_normal((batch_size, *probe.model.input_shape), dtype=np.float32)
        return benchmark(
            probe=probe, batch=batch, concurrency=concurrency, request_rates=request_rates,
            distribution=distribution, max_outstanding=max_outstanding, seed=seed, client=client,
            warmup_seconds=warmup_seconds, measurement_seconds=measurement_seconds, stability=stability,
            reporter=reporter,
        )
