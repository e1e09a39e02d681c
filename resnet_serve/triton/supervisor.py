"""Keep the embedded tritonserver serving: restart it when it dies, with backoff, up to a limit.

One request can end the wheel's tritonserver 2.51: a JSON infer request that claims a huge
shape aborts it (`std::bad_alloc`), and a body of 600,000 one-byte chunks crashes it (SIGSEGV).
Triton 2.51 has no option that refuses such a request before it allocates, and the fixed
releases (25.07 and later, which `deploy/` runs) are not available as a wheel. So the embedded
server is supervised: `Supervisor.run` watches the process, and when it exits without being
asked to, the crash is reported with the last lines of its log, `TritonServer.stop` ends the
orphaned python stubs and removes the shared-memory regions of the dead server (only its own),
and a fresh server starts after a backoff that doubles with each crash in the window. More than
`max_restarts` crashes within `window_s` means the server cannot stay up: `run` gives up with a
`ServerError` instead of restarting forever. A restart that fails counts as one more crash.

Library code does not print: every crash and restart is an event handed to `on_event`.
The restart happens in the thread that calls `run`; Linux ends the server when the thread that
started it exits (see `TritonServer`), so call `run` from a thread that outlives the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from resnet_serve.errors import ServerError
from resnet_serve.triton.server import TritonServer, describe_exit

__all__ = ["RestartPolicy", "ServerCrashed", "ServerRestarted", "Supervisor", "SupervisorEvent"]


@dataclass(frozen=True)
class RestartPolicy:
    """At most `max_restarts` restarts within `window_s` seconds, the n-th after
    `first_backoff_s * 2**(n-1)` seconds (at most `max_backoff_s`)."""

    max_restarts: int = 5
    window_s: float = 300.0
    first_backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window_s <= 0 or self.first_backoff_s < 0 or \
                self.max_backoff_s < self.first_backoff_s:
            raise ServerError(
                "a restart policy needs max_restarts ≥ 0, a window > 0 s and 0 ≤ first backoff ≤ max backoff, "
                f"got {self.max_restarts}, {self.window_s:g} s, {self.first_backoff_s:g} s and {self.max_backoff_s:g} s"
            )

    def backoff_s(self, restart: int) -> float:
        """Seconds to wait before the `restart`-th restart of the window (1 for the first)."""
        return min(self.first_backoff_s * 2 ** max(restart - 1, 0), self.max_backoff_s)


@dataclass(frozen=True)
class ServerCrashed:
    """tritonserver died (or a restart failed). `restart_in_s` is None when no restart follows."""

    reason: str
    log_tail: tuple[str, ...]
    removed_regions: int
    log_file: Path | None
    crashes_in_window: int
    restart_in_s: float | None


@dataclass(frozen=True)
class ServerRestarted:
    """A restarted tritonserver is ready again."""

    pid: int | None
    restarts: int
    seconds: float


SupervisorEvent = ServerCrashed | ServerRestarted


class Supervisor:
    """Watches one started `TritonServer` and restarts it after crashes (none when `policy` is
    None). Not thread-safe: one thread calls `run`."""

    def __init__(
        self,
        server: TritonServer,
        *,
        policy: RestartPolicy | None = RestartPolicy(),
        ready_timeout_s: float = 180.0,
        on_event: Callable[[SupervisorEvent], None] | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.server = server
        self.policy = policy
        self.ready_timeout_s = ready_timeout_s
        self._on_event = on_event or (lambda event: None)
        self._poll_s = poll_s
        self._crashes: list[float] = []
        self.restarts = 0

    def run(self, stopping: threading.Event) -> None:
        """Watch until `stopping` is set, restarting the server after each crash; the caller
        stops the server afterwards. Raises ServerError once the policy gives up."""
        if self.server.pid is None:
            raise ServerError("start the server before supervising it")
        while not stopping.is_set():
            code = self.server.wait_for_exit(timeout=self._poll_s)
            if code is not None and not stopping.is_set():
                self._recover(f"tritonserver exited with {describe_exit(code)}", stopping)

    def _recover(self, reason: str, stopping: threading.Event) -> None:
        while True:
            delay = self._after_crash(reason)
            if stopping.wait(delay):
                return
            began = time.monotonic()
            try:
                self.server.start()
                self.server.wait_until_ready(timeout=self.ready_timeout_s)
            except ServerError as error:
                reason = f"the restart failed: {error}"
                continue
            self.restarts += 1
            self._on_event(ServerRestarted(pid=self.server.pid, restarts=self.restarts,
                                           seconds=time.monotonic() - began))
            return

    def _after_crash(self, reason: str) -> float:
        """Clean up after the dead server, report it, and return the backoff before the next
        start; raise ServerError when the policy allows no more restarts."""
        now = time.monotonic()
        window = self.policy.window_s if self.policy else 0.0
        self._crashes = [t for t in self._crashes if now - t < window] + [now]
        tail = tuple(self.server.log_tail())
        removed = len(self.server.shared_memory_regions())
        self.server.stop()
        allowed = self.policy is not None and len(self._crashes) <= self.policy.max_restarts
        delay = self.policy.backoff_s(len(self._crashes)) if allowed and self.policy else None
        self._on_event(ServerCrashed(
            reason=reason, log_tail=tail, removed_regions=removed, log_file=self.server.log_file,
            crashes_in_window=len(self._crashes), restart_in_s=delay,
        ))
        if delay is None:
            limit = (f"; {len(self._crashes)} crashes within {self.policy.window_s:g} s, more than the "
                     f"{self.policy.max_restarts} restarts allowed") if self.policy else ""
            last = f" (last log lines: {' | '.join(tail)})" if tail else ""
            raise ServerError(f"{reason}{limit}{last} (log: {self.server.log_file})")
        return delay
