"""Files that appear whole or not at all, results that name the files they wrote, and the
processes that leave files named for them."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from resnet_serve.errors import OutputError

__all__ = [
    "asdict_with_paths",
    "check_output_file",
    "check_output_folder",
    "give_default_permissions",
    "pid_running",
    "replacing_atomically",
]

# Read once: os.umask can only be read by setting it, which would race with other threads.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def replacing_atomically(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``destination``, moved onto it only if the block succeeds.

    On any failure the temporary file is removed and an existing ``destination`` is untouched,
    so a reader never sees a half-written file. The file ends with the permissions a plain
    ``open()`` would give it.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        give_default_permissions(temporary)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def check_output_file(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a file path that ``replacing_atomically`` could not fill.

    The file may exist (it is replaced) if it is a regular file; missing parent folders are
    fine if they can be made. A folder, a device or pipe (a rename would replace the node
    itself), a parent that is a file, and a folder without write permission are refused. The
    check creates nothing, and cannot foresee a full disk or a change made after it.

    Raises:
        OutputError: one line naming the path and what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path} exists and is not a regular file; give a file name")
    _check_creatable(path)


def check_output_folder(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a folder path that files could not be written into: an
    existing file, a parent that is a file, or a folder without write permission.

    Raises:
        OutputError: one line naming the path and what is wrong with it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a folder")
    if path.is_dir():
        _check_writable_folder(path, shown=path)
        return
    _check_creatable(path)


def _check_creatable(path: Path) -> None:
    """``path`` can be made: its nearest existing ancestor is a writable folder."""
    ancestor = next((parent for parent in path.absolute().parents if parent.exists()), None)
    if ancestor is None:  # only the root could be missing, and it never is
        return
    if not ancestor.is_dir():
        raise OutputError(f"cannot write {path}: {ancestor} is a file, not a folder")
    _check_writable_folder(ancestor, shown=path)


def _check_writable_folder(folder: Path, *, shown: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {shown}: no permission to write in {folder}")


def give_default_permissions(path: Path) -> None:
    """Give ``path`` the mode ``open()`` or ``mkdir()`` would have under the umask.

    ``tempfile.mkstemp`` and ``mkdtemp`` make owner-only files and folders; renamed into place
    they would stay so, and a server running as another user (Triton's container, a Kubernetes
    pod) could not read a model repository or checkpoint written here.
    """
    path.chmod((0o777 if path.is_dir() else 0o666) & ~_UMASK)


def asdict_with_paths(result: Any) -> dict[str, Any]:
    """A dataclass as JSON-ready data: nested dataclasses, lists, tuples and dicts converted all
    the way down, every ``Path`` as a string, and fields declared with
    ``field(metadata={"json": False})`` (a model, a session) left out.

    Unlike ``dataclasses.asdict`` it copies nothing it does not convert.
    """
    return {
        item.name: _json_ready(getattr(result, item.name))
        for item in fields(result)
        if item.metadata.get("json", True)
    }


def _json_ready(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict_with_paths(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    return value


def pid_running(pid: int) -> bool:
    """Whether a process of this pid runs (a recycled pid reads as running): what tells the
    folders a killed process left from those of a live one."""
    if pid < 1:  # 0 would ask about this process's own group; no writer has it
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return False
    except PermissionError:  # another user's process
        return True
    return True
