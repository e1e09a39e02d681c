"""Starting the CLI as a user's terminal would, for tests that stop it with Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def start_interruptible(command: list[str], **options: Any) -> subprocess.Popen:
    """``subprocess.Popen(command, **options)`` with SIGINT delivered as a terminal's Ctrl-C,
    however the tests were started: a shell without job control starts background jobs with
    SIGINT ignored, and exec keeps "ignored" while it resets a handler to the default. So a
    handler is set here around the start, not in a ``preexec_fn``. With one, Python code runs
    between fork and exec in a one-thread copy of this process, gRPC's threads gone (a `serve`
    started so once printed nothing but gRPC's "epoll_wait error: Bad file descriptor" and
    ended); without one, subprocess uses vfork and nothing of this process runs in the child."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, **options)
    finally:
        signal.signal(signal.SIGINT, previous)
