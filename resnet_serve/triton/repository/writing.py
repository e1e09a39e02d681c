"""Atomic, locked writing of repository entries: a general mechanism, apart from what an entry
holds.

Every write is atomic: the entry is built in a hidden folder inside the repository (earlier
versions hard-linked in, not copied), read back and checked, then swapped in with renames.

Writers of one entry take turns: each holds an exclusive lock (`fcntl.flock`) on the hidden file
`.<name>.lock` from reading the entry's versions to the swap, so concurrent exports of one name
serialise (or, after a timeout, fail with one line) instead of racing on the renames. The
holder removes the file before it lets go, so a repository at rest has none; a waiter that
finds it has locked a removed file tries again. The writer's folders carry its pid,
`.<name>.staging-<pid>-<random>` (the entry being built) and `.<name>.old-<pid>-<random>` (the
entry it replaces), so that what a killed writer leaves is recognised: the next writer of that
name removes its staging folder (or puts back an entry it had moved aside), and `serve` skips
it with a line saying so. Triton loads folders only: a lock file is nothing to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from resnet_serve.errors import RepositoryError, first_line
from resnet_serve.files import give_default_permissions, pid_running
from resnet_serve.progress import Reporter
from resnet_serve.triton.config import ModelConfig
from resnet_serve.triton.repository.layout import CONFIG_FILENAME, check_model_name

__all__ = [
    "ENTRY_LOCK_TIMEOUT_S",
    "WriterFolder",
    "copy_resource",
    "write_config",
    "write_entry_atomically",
    "writer_folder",
    "writing_entry",
]

# How long a writer waits for another writer of the same entry. A writer holds the lock only
# while it writes the entry (export and verification come before), seconds even for large models.
ENTRY_LOCK_TIMEOUT_S = 120.0

_WRITER_FOLDER = re.compile(r"^\.(?P<entry>.+)\.(?P<kind>staging|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class WriterFolder:
    """A hidden folder an entry writer makes in the repository: ``staging`` (the entry it
    builds) or ``old`` (the entry it replaces, until the swap is done), with its pid."""

    path: Path
    entry: str
    kind: Literal["staging", "old"]
    pid: int

    @property
    def writer_running(self) -> bool:
        """Whether the process that made it still runs (a recycled pid reads as running)."""
        return pid_running(self.pid)

    def describe(self) -> str:
        what = "staging folder" if self.kind == "staging" else f"replaced copy of {self.entry!r}"
        if self.writer_running:
            return f"the {what} of running export pid {self.pid}"
        return f"a stale {what} of dead export pid {self.pid} (the next export of {self.entry!r} cleans it up)"


def writer_folder(path: Path) -> WriterFolder | None:
    """The writer folder ``path`` is, or None for any other name."""
    found = _WRITER_FOLDER.match(path.name)
    if found is None:
        return None
    kind: Literal["staging", "old"] = "staging" if found["kind"] == "staging" else "old"
    return WriterFolder(path=path, entry=found["entry"], kind=kind, pid=int(found["pid"]))


def write_config(folder: Path, config: ModelConfig) -> None:
    text = config.render()
    # Read back through Triton's schema and our dataclasses: what lands on disk must parse to
    # exactly the config we meant.
    if ModelConfig.parse(text) != config:
        raise RepositoryError(f"model {config.name!r}: the rendered config does not read back")
    (folder / CONFIG_FILENAME).write_text(text, encoding="utf-8")


def copy_resource(package: str, filename: str, destination: Path) -> None:
    destination.write_text(resources.files(package).joinpath(filename).read_text(encoding="utf-8"), encoding="utf-8")

@contextlib.contextmanager
def writing_entry(repository: Path, name: str, *, timeout_s: float, reporter: Reporter) -> Iterator[None]:
    """Hold the entry's lock (waiting up to ``timeout_s`` for another writer), and clean up
    what dead writers of it left, before the block writes the entry."""
    check_model_name(name)
    lock_path = repository / f".{name}.lock"
    deadline = time.monotonic() + timeout_s
    waiting = False
    while True:
        try:
            repository.mkdir(parents=True, exist_ok=True)
            # Appending: a writer that does not hold the lock yet never truncates the holder's pid.
            lock = lock_path.open("a+", encoding="utf-8")
        except OSError as error:
            raise RepositoryError(f"cannot write to model repository {repository}: {first_line(error)}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            holder = _read_holder(lock_path)
            if time.monotonic() >= deadline:
                raise RepositoryError(
                    f"model {name!r} in {repository} is being written by export pid {holder}; "
                    f"gave up after waiting {timeout_s:g} s"
                ) from None
            if not waiting:
                reporter.message(f"waiting for export pid {holder}, which is writing {name!r} in {repository}")
                waiting = True
            time.sleep(0.05)
            continue
        if _same_file(lock, lock_path):
            break
        lock.close()  # its holder removed it before letting go: lock the file now at that path
    with lock:
        try:
            try:
                # Who holds it, for a writer that waits; the lock itself is the flock.
                lock.seek(0)
                lock.truncate()
                lock.write(f"{os.getpid()}\n")
                lock.flush()
                cleaned = _clean_up_dead_writers(repository, name)
            except OSError as error:
                raise RepositoryError(f"cannot write to model repository {repository}: {first_line(error)}") from None
            for message in cleaned:
                reporter.message(message)
            yield
        finally:
            # Removed while still held, so the next writer never locks a file that is gone.
            lock_path.unlink(missing_ok=True)


def _read_holder(lock_path: Path) -> str:
    try:
        return lock_path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def _same_file(handle: Any, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except FileNotFoundError:
        return False


def _clean_up_dead_writers(repository: Path, name: str) -> list[str]:
    """Remove what killed writers of ``name`` left, and say what was done.

    Called under the entry's lock, so no live writer of ``name`` is at work. A staging folder
    is half-built and goes. An ``old`` folder is the entry a writer moved aside just before
    its new one went in: where the entry is missing, the writer died between the two renames,
    and the old entry is put back; otherwise the swap was done and the old copy goes.
    """
    done = []
    destination = repository / name
    for path in sorted(repository.glob(f".{glob.escape(name)}.*")):
        found = writer_folder(path)
        if found is None or found.entry != name or found.writer_running:
            continue
        if found.kind == "old" and not destination.exists():
            path.rename(destination)
            done.append(f"restored {name!r} from {path.name}, where export pid {found.pid} left it when it died")
        else:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name}, {found.describe()}")
    return done


def write_entry_atomically(repository: Path, name: str, build: Callable[[Path], None]) -> None:
    """Build the entry in a staging folder and swap it in; the caller holds the entry's lock."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-{os.getpid()}-", dir=repository))
        give_default_permissions(staging)
    except OSError as error:
        raise RepositoryError(f"cannot write to model repository {repository}: {error}") from None
    try:
        build(staging)
        _swap_in(staging, repository / name)
    except OSError as error:
        raise RepositoryError(f"writing model {name!r} to {repository} failed: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, destination: Path) -> None:
    if not destination.exists():
        staging.rename(destination)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-{os.getpid()}-", dir=destination.parent))
    # rename() replaces an empty folder: the name is reserved by mkdtemp, then taken over.
    destination.rename(old)
    try:
        staging.rename(destination)
    except OSError:
        old.rename(destination)
        raise
    shutil.rmtree(old, ignore_errors=True)
