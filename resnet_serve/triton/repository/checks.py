"""Would each entry of a repository load in the official container? One module for `repo check`,
for `serve` (which loads only what passes, so the two never disagree) and for the writer (which
writes nothing that breaks the contract).

Per entry:
- the folder: a hidden one (a writer's staging folder, or anything Triton would try as a model),
  what would hang, stop or exhaust a reader (``resnet_serve.triton.entry_files``), a
  ``config.pbtxt`` that reads and parses with Triton's own schema;
- file names in the config that reach out of the entry;
- the contract (``resnet_serve.triton.contract``): what core and the entry's official backend
  refuse, on the host it is checked for;
- with an image named (`repo check`): what it holds (``image_checks``);
- resnet-serve's own: a label file larger than it may be (an error: read whole), or naming
  another number of classes than its output has (a warning: Triton serves it, with labels that
  are off).

And across entries: an ensemble with a refused step is refused, as core refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tritonclient.grpc import model_config_pb2

from resnet_serve.errors import RepositoryError
from resnet_serve.triton.config import ModelConfig, parse_model_config
from resnet_serve.triton.contract import EntryFacts, Host, Severity, When, entry_host, entry_violations
from resnet_serve.triton.entry_files import (
    MAX_CONFIG_BYTES,
    MAX_LABEL_BYTES,
    name_problem,
    read_bounded,
    tree_problems,
)
from resnet_serve.triton.images import OfficialImage, deploy_image
from resnet_serve.triton.repository.image_checks import image_problems
from resnet_serve.triton.repository.layout import CONFIG_FILENAME
from resnet_serve.triton.repository.writing import writer_folder

__all__ = [
    "CheckedHost",
    "EntryCheck",
    "Problem",
    "check_entries",
    "check_repository",
    "refuse_what_would_not_load",
]

# "auto": an entry whose instance groups ask for KIND_GPU is meant for a GPU host and checked for
# one; any other entry must load on both (compose's GPU and CPU profiles serve one repository).
CheckedHost = Host | Literal["auto"]


@dataclass(frozen=True)
class Problem:
    """One reason an entry would not load (``when`` "load") or would answer requests with
    errors ("request") in the image; ``rule`` is the contract rule it breaks, "" for the others."""

    entry: str
    message: str
    rule: str = ""
    severity: Severity = "error"
    when: When = "load"

    def __str__(self) -> str:
        warning = "warning: " if self.severity == "warning" else ""
        return f"{self.entry}: {warning}{self.message}" + (f" [{self.rule}]" if self.rule else "")


@dataclass(frozen=True)
class EntryCheck:
    """One folder of a repository: the entry as core reads it (None without a config that
    parses) and its problems."""

    name: str
    folder: Path
    facts: EntryFacts | None
    problems: tuple[Problem, ...]
    # Refused because this server cannot run it, or an ensemble step of it: the official
    # container would load it.
    cannot_run: bool = False

    @property
    def refused(self) -> bool:
        """Whether the official container would not load it (an entry that loads and then fails
        requests is served: the proxies fail them as the backend does)."""
        return any(self._refusals())

    def _refusals(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error" and p.when == "load"]

    @property
    def reason(self) -> str:
        """The first refusal, as `serve` says why it skipped the entry."""
        first, *more = self._refusals()
        rule = f" [{first.rule}]" if first.rule else ""
        return first.message + rule + (f" (and {len(more)} more: resnet-serve repo check lists them)" if more else "")


def _read_config(folder: Path) -> tuple[model_config_pb2.ModelConfig | None, str]:
    """The folder's config, or the one line that says why there is none to use (the folder's
    own problems first: nothing is read from a folder that would hang or exhaust a reader)."""
    if folder.name.startswith("."):
        written = writer_folder(folder)
        what = written.describe() if written else "a hidden folder"
        return None, f"{what}, which Triton would try to load as a model"
    problem = name_problem(folder.name) or next(tree_problems(folder), "")
    if problem:
        return None, problem
    path = folder / CONFIG_FILENAME
    if not path.exists():
        return None, f"no {CONFIG_FILENAME}"
    try:
        return parse_model_config(read_bounded(path, limit=MAX_CONFIG_BYTES).decode("utf-8")), ""
    except UnicodeDecodeError:
        return None, f"{CONFIG_FILENAME} is not UTF-8 text (Triton reads it as a text protobuf)"
    except RepositoryError as error:
        return None, f"{CONFIG_FILENAME}: {error}"


def check_entries(
    repository: Path,
    *,
    host: CheckedHost,
    triton_version: str,
    image: OfficialImage | None = None,
    cannot_run: Callable[[EntryFacts], str] | None = None,
) -> list[EntryCheck]:
    """Every folder of ``repository``, checked for the official container of ``triton_version``
    on ``host`` (and, with ``image``, against what that image holds). ``cannot_run`` says why
    the server the repository is checked for cannot run an entry ("" where it can): that is
    then its only problem.

    Raises:
        RepositoryError: ``repository`` is not a folder.
    """
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist")
    folders = sorted(p for p in repository.iterdir() if p.is_dir())
    read = {folder.name: _read_config(folder) for folder in folders}
    configs = {name: config for name, (config, _) in read.items() if config is not None}
    checks: dict[str, EntryCheck] = {}
    for folder in folders:
        config, unreadable = read[folder.name]
        if config is None:
            checks[folder.name] = EntryCheck(folder.name, folder, None, (Problem(folder.name, unreadable),))
            continue
        facts = EntryFacts(folder=folder, config=config, host=entry_host(config) if host == "auto" else host,
                           triton_version=triton_version, repository=configs)
        reason = cannot_run(facts) if cannot_run else ""
        if reason:
            # Nothing else matters to a server that cannot run the entry at all.
            checks[folder.name] = EntryCheck(folder.name, folder, facts, (Problem(folder.name, reason),),
                                             cannot_run=True)
            continue
        # A path out of the entry is refused before any rule reads the file it names.
        problems = list(_path_problems(folder, config)) or [
            *(Problem(folder.name, v.message, v.rule, v.severity, v.when) for v in entry_violations(facts)),
            *_label_problems(folder, config),
        ]
        if image is not None:
            problems += [Problem(folder.name, m) for m in image_problems(facts, image)]
        checks[folder.name] = EntryCheck(folder.name, folder, facts, tuple(problems))
    return list(_refuse_ensembles_of_refused(checks).values())


def _path_problems(folder: Path, config: model_config_pb2.ModelConfig) -> Iterator[Problem]:
    """File names a config gives that reach outside the entry: Triton joins them to the entry's
    folders as they are, so "../../../etc/passwd" hands a backend a file of the machine."""
    names = [("default_model_filename", config.default_model_filename)]
    names += [(f"output {t.name!r} label_filename", t.label_filename) for t in config.output]
    names += [(f"warm-up {w.name!r} input_data_file", v.input_data_file)
              for w in config.model_warmup for v in w.inputs.values()]
    for field, name in names:
        if name and ("/" in name or "\\" in name or name in (".", "..")):
            yield Problem(folder.name, f"{field} {name!r} must be a file name in the entry, not a path")


def _label_problems(folder: Path, config: model_config_pb2.ModelConfig) -> Iterator[Problem]:
    """A label file Triton would read whole however large (an error), or one naming another
    number of classes than its output has: Triton serves it (label_provider.cc never counts),
    labelling some classes wrongly or not at all (a warning). Lines are counted as Triton
    splits them, on '\n' alone."""
    for tensor in config.output:
        if not tensor.label_filename or not (folder / tensor.label_filename).exists():
            continue  # a missing one is the contract's (core.label-file)
        try:
            data = read_bounded(folder / tensor.label_filename, limit=MAX_LABEL_BYTES)
        except RepositoryError as error:
            yield Problem(folder.name, f"label file {error}")
            continue
        count = len(data.removesuffix(b"\n").split(b"\n")) if data else 0
        classes = int(np.prod(tensor.dims))
        if count != classes:
            yield Problem(folder.name, f"{tensor.label_filename} has {count} class names, output {tensor.name!r} has "
                                       f"{classes} classes", severity="warning")


def _refuse_ensembles_of_refused(checks: dict[str, EntryCheck]) -> dict[str, EntryCheck]:
    """An ensemble whose step is refused is refused too (model_repository_manager.cc:1812-1862),
    and so on up, until nothing changes."""
    changed = True
    while changed:
        changed = False
        for name, check in checks.items():
            if check.facts is None or check.facts.backend != "ensemble" or check.refused:
                continue
            bad = [s.model_name for s in check.facts.config.ensemble_scheduling.step
                   if s.model_name in checks and checks[s.model_name].refused]
            if bad:
                problem = Problem(name, f"ensemble '{name}' depends on '{bad[0]}' which is not valid")
                checks[name] = EntryCheck(name, check.folder, check.facts, (*check.problems, problem),
                                          cannot_run=checks[bad[0]].cannot_run)
                changed = True
    return checks


def check_repository(*, repository: Path, image: OfficialImage, host: CheckedHost = "auto") -> list[Problem]:
    """`repo check`: every problem of every entry, for ``image`` on ``host``."""
    if not repository.is_dir():
        return [Problem(str(repository), "no such model repository")]
    checks = check_entries(repository, host=host, triton_version=image.triton_version, image=image)
    return [problem for check in checks for problem in check.problems]


def refuse_what_would_not_load(
    folder: Path, *, name: str, config: ModelConfig, source: Path | None = None,
    repository: Mapping[str, model_config_pb2.ModelConfig] | None = None,
) -> None:
    """The staged entry against the backend contract, for the official image deploy/ builds:
    an entry the official container would refuse is never swapped in."""
    message = config.to_protobuf()
    facts = EntryFacts(folder=folder, entry_name=name, config=message, host=entry_host(message),
                       triton_version=deploy_image().triton_version, repository=repository or {})
    errors = [v for v in entry_violations(facts) if v.severity == "error"]
    if errors:
        raise RepositoryError(f"{source or name}: the official container would refuse model {name!r}: {errors[0]}")
