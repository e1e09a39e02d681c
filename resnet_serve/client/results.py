"""What a serving benchmark measured, in one schema for both engines: one row per concurrency
level or request rate (``ConcurrencyResult``), a run (``BenchmarkResult``) written as JSON or as
perf_analyzer's CSV."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from resnet_serve.files import replacing_atomically

if TYPE_CHECKING:
    from resnet_serve.client.inference import ModelStatistics

__all__ = [
    "PERF_ANALYZER_COLUMNS",
    "REQUEST_RATE_COLUMN",
    "SERVER_PARTS",
    "BenchmarkResult",
    "ConcurrencyResult",
    "StepResult",
]

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
# Triton's statistics of where a request's server time goes.
SERVER_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class StepResult:
    """One step of an ensemble (e.g. the image pipeline's preprocessing, then the classifier) over
    a level's measurement, from Triton's statistics of that model: microseconds per request it
    executed, and how many requests it executed in how many batches (its dynamic batching)."""

    model: str
    requests: int
    executions: int
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float

    @property
    def compute_us(self) -> float:
        return self.compute_input_us + self.compute_infer_us + self.compute_output_us

    @classmethod
    def split(cls, delta: ModelStatistics) -> list[StepResult]:
        """An ensemble's steps over a span (``delta``: the difference of two statistics)."""
        return [
            cls(model=name, requests=stats.success_count, executions=stats.execution_count,
                **{f"{part}_us": getattr(stats, f"{part}_ns") / max(stats.success_count, 1) / 1000
                   for part in SERVER_PARTS})
            for name, stats in delta.steps
        ]


@dataclass(frozen=True)
class ConcurrencyResult:
    """One point of a sweep. Latencies are per request, in milliseconds; client and server
    figures are averages per request, in microseconds.

    In request-rate mode ``request_rate`` is the rate asked for, ``requests_per_second`` the rate
    achieved, and ``concurrency`` the bound on requests in flight.

    For an ensemble the server figures are Triton's for the ensemble itself, as perf_analyzer
    reports them (its own queue, which is near zero, and its steps' compute added up), and
    ``steps`` splits the time between its models, each step's queue included.
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
    # With retries only (None otherwise): the level's tries that failed and were tried again.
    retried_requests: int | None = None
    steps: list[StepResult] | None = None

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
        row_keys = {f.name for f in fields(ConcurrencyResult)} - {"steps"}
        step_keys = {f.name for f in fields(StepResult)}
        rows = [
            ConcurrencyResult(
                **{k: v for k, v in row.items() if k in row_keys},
                steps=None if row.get("steps") is None else [
                    StepResult(**{k: v for k, v in step.items() if k in step_keys}) for step in row["steps"]
                ],
            )
            for row in data["results"]
        ]
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

