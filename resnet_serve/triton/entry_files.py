"""What resnet-serve refuses in an entry's folder before anything reads it, for `serve`,
`repo check` and `repo list` alike: the things that would hang, stop or exhaust a server that
tried, where Triton's own checks come too late.

- names: Triton turns a folder into a model name that also goes into URLs and the python
  backend's stub arguments; a space hangs the embedded server's load, a non-ASCII letter stops
  its stub, so a name is letters, digits, ``_``, ``-`` and ``.``, as the writer makes them;
- file types: a model, config or label "file" that is a FIFO blocks its reader forever, and a
  link to a device (``/dev/zero``) never ends; only regular files are read;
- sizes: a config or label file is read whole (Triton's label provider holds every line), so a
  1 GB sparse ``labels.txt`` cost tritonserver 4 GB of memory: both are bounded;
- the tree: a folder that links back into itself never ends a walk, and an entry of more
  files than any model has is refused before it is mirrored.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

from resnet_serve.errors import RepositoryError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_ENTRY_FILES",
    "MAX_LABEL_BYTES",
    "MODEL_NAME",
    "file_problem",
    "name_problem",
    "read_bounded",
    "tree_problems",
]

MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# A config.pbtxt is a few kilobytes; a label file of 100,000 long class names is a few megabytes.
MAX_CONFIG_BYTES = 1 << 20
MAX_LABEL_BYTES = 16 << 20
MAX_ENTRY_FILES = 10_000

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe): reading it waits forever"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a folder"))


def name_problem(name: str) -> str:
    """Why Triton should not be given a model of this name ("" when it may)."""
    if MODEL_NAME.match(name) and name not in (".", ".."):
        return ""
    return (f"the name {name!r} is not one a server can take: use letters, digits, '_', '-' and '.' (a space "
            "hangs the python backend's load, a non-ASCII letter stops its stub)")


def file_problem(path: Path) -> str:
    """Why ``path`` (links followed) is no regular file to read ("" when it is one)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path.name} does not exist" + (" (a link to nothing)" if path.is_symlink() else "")
    except OSError as error:
        return f"{path.name} cannot be read: {error.strerror or error}"
    if stat.S_ISREG(mode):
        return ""
    kind = next((what for test, what in _KINDS if test(mode)), "not a regular file")
    return f"{path.name} is {kind}, not a file a model can be read from"


def read_bounded(path: Path, *, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Raises:
        RepositoryError: not a regular file, or larger than ``limit``.
    """
    problem = file_problem(path)
    if problem:
        raise RepositoryError(problem)
    size = path.stat().st_size
    if size > limit:
        raise RepositoryError(f"{path.name} is {size:,} bytes, more than the {limit:,} it may have")
    with path.open("rb") as handle:
        return handle.read(limit + 1)


def tree_problems(folder: Path) -> Iterator[str]:
    """Links that loop back into the entry and files that are no files, anywhere in it; an
    entry of more than ``MAX_ENTRY_FILES`` files stops the walk with one line."""
    seen = 0
    pending = [(folder, frozenset({folder.resolve()}))]
    while pending:
        current, above = pending.pop()
        try:
            children = sorted(current.iterdir())
        except OSError as error:
            yield f"{current.relative_to(folder.parent)} cannot be listed: {error.strerror or error}"
            continue
        for child in children:
            seen += 1
            if seen > MAX_ENTRY_FILES:
                yield f"holds more than {MAX_ENTRY_FILES:,} files, more than a model repository entry has"
                return
            shown = child.relative_to(folder.parent)
            try:
                mode = child.stat().st_mode
            except OSError as error:
                if error.errno == 40:  # ELOOP: a link that points back at itself
                    yield f"{shown} is a link that loops"
                continue  # a link to nothing is not read (the mirror leaves it out)
            if stat.S_ISDIR(mode):
                real = child.resolve()
                if real in above:
                    yield f"{shown} links back to a folder that contains it"
                else:
                    pending.append((child, above | {real}))
            elif not stat.S_ISREG(mode):
                yield file_problem(child).replace(child.name, str(shown), 1)
