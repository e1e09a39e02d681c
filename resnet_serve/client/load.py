"""Load generation: closed-loop concurrency and open-loop request rates, measured in windows.

Every worker owns one sender (one connection) and appends the four timestamps of each request
it completes to a list of its own, so the hot loop holds the call and one append, nothing
else. The measuring thread cuts those lists into windows by completion time and asks the
server for its statistics at each window's edges, so the server split covers the same span.

- `ClosedLoop`: ``concurrency`` threads, each sending its next request as soon as the last
  one is answered, like perf_analyzer's synchronous mode (one thread per slot).
- `AsyncClosedLoop`: the same closed loop as ``concurrency`` coroutines on one asyncio event
  loop (gRPC only).
- `OpenLoop`: requests sent on a schedule (constant gaps, or Poisson arrivals from a seeded
  generator) that never waits for the server; at most ``max_outstanding`` are in flight.
  A request sent more than 1 ms after its time is counted late; one that finds no free slot
  within ``drop_after_ms`` of its time is dropped, so an overloaded server shows as drops
  rather than as a quietly lower rate.

With `Retries`, a failed request is tried again on a new connection (`RetryingSender`), so a
load survives a server restart; a window in which a try failed is not measured (its requests
waited for the restart, and the server's counters started again from zero), and the next one
is taken instead.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import grpc
import numpy as np

from resnet_serve.client.inference import ModelStatistics
from resnet_serve.client.prepared import (
    GRPC_OPTIONS,
    MODEL_INFER_METHOD,
    PreparedRequest,
    RequestSender,
    RequestTimes,
    RetryingSender,
    grpc_reason,
    read_grpc_answer,
)
from resnet_serve.client.retries import Retries
from resnet_serve.client.stability import StabilityRule, measure_until_stable
from resnet_serve.errors import ClientError, first_line

Distribution = Literal["constant", "poisson"]
LATE_AFTER_NS = 1_000_000


@dataclass(frozen=True)
class Window:
    """The requests that completed in one measurement window, and the server's counters at its
    edges. Times are in nanoseconds."""

    seconds: float
    batch_size: int
    latencies_ns: np.ndarray
    send_ns: np.ndarray
    recv_ns: np.ndarray
    late: int
    dropped: int
    server_before: ModelStatistics
    server_after: ModelStatistics
    # Tries that failed and were retried (with Retries only).
    failed: int = 0

    @property
    def requests(self) -> int:
        return int(self.latencies_ns.size)

    @property
    def inferences_per_second(self) -> float:
        return self.requests * self.batch_size / self.seconds

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ns, 99)) / 1e6 if self.requests else float("inf")


class LoadGenerator(ABC):
    """Workers that record request timestamps until stopped; `window` reads them out."""

    def __init__(self, workers: int, *, retries: Retries = Retries()) -> None:
        self._records: list[list[RequestTimes]] = [[] for _ in range(workers)]
        self._late: list[list[int]] = [[] for _ in range(workers)]
        self._dropped: list[list[int]] = [[] for _ in range(workers)]
        self._failed: list[list[int]] = [[] for _ in range(workers)]
        self._cursors = {id(lst): 0 for lst in (*self._records, *self._late, *self._dropped, *self._failed)}
        self._retries = retries
        self._errors: list[Exception] = []
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @abstractmethod
    def _targets(self) -> list[Callable[[], None]]:
        """The bodies of the worker threads, each appending to its own lists."""

    def _open(self, request: PreparedRequest, worker: int) -> RequestSender:
        if not self._retries.count:
            return request.open()
        return RetryingSender(request, retries=self._retries, stopping=self.stopping, failures=self._failed[worker])

    @property
    def failed_tries(self) -> int:
        """Every try that failed and was retried so far."""
        return sum(len(failures) for failures in self._failed)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._guarded, args=(t,), daemon=True) for t in self._targets()]
        for thread in self._threads:
            thread.start()

    def _guarded(self, target: Callable[[], None]) -> None:
        try:
            target()
        except Exception as exc:  # surfaced by window() or stop()
            self._errors.append(exc if isinstance(exc, ClientError) else ClientError(first_line(exc)))
            self.stopping.set()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join()
        self.raise_failure()

    def raise_failure(self) -> None:
        if self._errors:
            raise self._errors[0]

    def _take(self, lists: list[list], ended_ns: int, stamp: Callable[[object], int]) -> list:
        # Each worker's list is in completion order: take what completed before the edge.
        taken = []
        for items in lists:
            start = index = self._cursors[id(items)]
            while index < len(items) and stamp(items[index]) < ended_ns:
                index += 1
            taken.extend(items[start:index])
            self._cursors[id(items)] = index
        return taken

    def skip(self, until_ns: int) -> None:
        """Forget what completed before ``until_ns`` (the warm-up)."""
        self._take(self._records, until_ns, lambda r: r[3])
        self._take(self._late, until_ns, int)
        self._take(self._dropped, until_ns, int)
        self._take(self._failed, until_ns, int)

    def window(
        self, *, began_ns: int, ended_ns: int, batch_size: int, before: ModelStatistics, after: ModelStatistics
    ) -> Window:
        self.raise_failure()
        records = np.array(self._take(self._records, ended_ns, lambda r: r[3]), dtype=np.int64).reshape(-1, 4)
        return Window(
            seconds=(ended_ns - began_ns) / 1e9,
            batch_size=batch_size,
            latencies_ns=records[:, 3] - records[:, 0],
            send_ns=records[:, 1] - records[:, 0],
            recv_ns=records[:, 3] - records[:, 2],
            late=len(self._take(self._late, ended_ns, int)),
            dropped=len(self._take(self._dropped, ended_ns, int)),
            server_before=before,
            server_after=after,
            failed=len(self._take(self._failed, ended_ns, int)),
        )


class ClosedLoop(LoadGenerator):
    """``concurrency`` threads, each with its own sender, each always waiting on one request."""

    def __init__(self, request: PreparedRequest, *, concurrency: int, retries: Retries = Retries()) -> None:
        super().__init__(concurrency, retries=retries)
        self._request = request

    def _targets(self) -> list[Callable[[], None]]:
        return [lambda worker=worker: self._run(worker) for worker in range(len(self._records))]

    def _run(self, worker: int) -> None:
        # Opened in the worker's own thread; the connection happens during the warm-up.
        records = self._records[worker]
        sender = self._open(self._request, worker)
        send, record, stopping = sender.send, records.append, self.stopping
        try:
            while not stopping.is_set():
                record(send())
        finally:
            sender.close()


class AsyncClosedLoop(LoadGenerator):
    """The closed loop as ``concurrency`` coroutines on one event loop, one gRPC channel each."""

    def __init__(self, request: PreparedRequest, *, concurrency: int) -> None:
        if request.protocol != "grpc":
            raise ClientError("the asyncio client speaks gRPC only; use --protocol grpc or the threads client")
        super().__init__(concurrency)
        self._request = request

    def _targets(self) -> list[Callable[[], None]]:
        return [lambda: asyncio.run(self._main())]

    async def _main(self) -> None:
        channels = [self._request.endpoint.grpc_aio_channel(GRPC_OPTIONS) for _ in self._records]
        try:
            await asyncio.gather(*(self._slot(c, r) for c, r in zip(channels, self._records, strict=True)))
        finally:
            for channel in channels:
                await channel.close()

    async def _slot(self, channel: grpc.aio.Channel, records: list[RequestTimes]) -> None:
        request, clock = self._request, time.perf_counter_ns
        call, record, stopping = channel.unary_unary(MODEL_INFER_METHOD), records.append, self.stopping
        metadata = request.endpoint.grpc_metadata or None
        bodies = itertools.cycle(request.bodies)
        while not stopping.is_set():
            body = next(bodies)
            began = clock()
            try:
                answer = await call(body, timeout=request.timeout_s, metadata=metadata)
            except grpc.RpcError as exc:
                raise ClientError(f"inference on {request.model!r} failed: {grpc_reason(exc)}") from None
            answered = clock()
            read_grpc_answer(request, answer)
            record((began, began, answered, clock()))


class Schedule:
    """Send times of an open loop, shared by its workers: constant gaps or Poisson arrivals."""

    def __init__(self, *, rate: float, distribution: Distribution, seed: int) -> None:
        if rate <= 0:
            raise ClientError(f"a request rate must be > 0, got {rate:g}")
        if distribution not in ("constant", "poisson"):
            raise ClientError(f"unknown request distribution {distribution!r}; choose constant or poisson")
        self._gap_ns = 1e9 / rate
        self._random = random.Random(seed) if distribution == "poisson" else None
        self._next = 0.0
        self._lock = threading.Lock()

    def begin(self, start_ns: int) -> None:
        """The first request is due at ``start_ns``."""
        self._next = float(start_ns)

    def take(self) -> int:
        with self._lock:
            scheduled = self._next
            self._next += self._random.expovariate(1.0) * self._gap_ns if self._random else self._gap_ns
        return int(scheduled)


class OpenLoop(LoadGenerator):
    """Requests on a schedule, at most ``max_outstanding`` in flight (one thread each)."""

    def __init__(
        self,
        request: PreparedRequest,
        *,
        rate: float,
        distribution: Distribution = "constant",
        max_outstanding: int = 16,
        seed: int = 0,
        drop_after_ms: float = 100.0,
        retries: Retries = Retries(),
    ) -> None:
        if max_outstanding < 1:
            raise ClientError(f"max outstanding requests must be ≥ 1, got {max_outstanding}")
        super().__init__(max_outstanding, retries=retries)
        self._request = request
        self._schedule = Schedule(rate=rate, distribution=distribution, seed=seed)
        self._drop_after_ns = int(drop_after_ms * 1e6)

    def _targets(self) -> list[Callable[[], None]]:
        self._schedule.begin(time.perf_counter_ns())
        return [lambda worker=worker: self._run(worker) for worker in range(len(self._records))]

    def _run(self, worker: int) -> None:
        records, late, dropped = self._records[worker], self._late[worker], self._dropped[worker]
        sender = self._open(self._request, worker)
        take, send, clock, stopping = self._schedule.take, sender.send, time.perf_counter_ns, self.stopping
        try:
            while not stopping.is_set():
                scheduled = take()
                lag = clock() - scheduled
                if lag > self._drop_after_ns:
                    dropped.append(scheduled + lag)
                    continue
                if lag < 0:
                    if stopping.wait(-lag / 1e9):
                        break
                elif lag > LATE_AFTER_NS:
                    late.append(scheduled + lag)
                records.append(send())
        finally:
            sender.close()


def measure_load(
    load: LoadGenerator,
    *,
    statistics: Callable[[], ModelStatistics],
    batch_size: int,
    warmup_seconds: float,
    interval_seconds: float,
    rule: StabilityRule,
    label: str,
) -> list[Window]:
    """Run ``load``: an unmeasured warm-up, then windows of ``interval_seconds`` until ``rule``
    holds. Returns the agreeing windows; raises UnstableMeasurementError or the load's error.

    A window in which a try failed (and was retried) is replaced by the next one, at most
    ``rule.max_trials`` times per level."""
    if warmup_seconds < 0 or interval_seconds <= 0:
        raise ClientError(
            "the warm-up must be ≥ 0 s and the measurement interval > 0 s, "
            f"got {warmup_seconds:g} and {interval_seconds:g}"
        )
    load.start()
    try:
        load.stopping.wait(warmup_seconds)
        began, before = time.perf_counter_ns(), statistics()
        load.skip(began)

        replaced = 0

        def next_window() -> Window:
            nonlocal began, before, replaced
            while True:
                load.stopping.wait(max(began / 1e9 + interval_seconds - time.perf_counter(), 0.0))
                ended, after = time.perf_counter_ns(), statistics()
                window = load.window(began_ns=began, ended_ns=ended, batch_size=batch_size, before=before, after=after)
                began, before = ended, after
                if not window.failed or replaced >= rule.max_trials:
                    return window
                replaced += 1

        return measure_until_stable(next_window, rule=rule, label=label)
    finally:
        load.stop()
