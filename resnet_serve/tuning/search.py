"""Measure serving configurations of one repository entry and write the best as its next version.

One run:

1. **Runtimes.** The source is the entry's newest version holding an FP32 ONNX file. The OpenVINO
   runtimes are checked before anything is measured, on real test images against onnxruntime
   on that file: OpenVINO compiled with no precision hint, as Triton's OpenVINO backend
   compiles it (that backend has no setting for FP32, so on a CPU with BF16 instructions it
   computes in BF16), and the INT8 file made from the source exactly as
   ``export --precision int8`` makes it (same calibration sample and method). A runtime whose
   top-1 agreement is under ``min_agreement``, or that cannot be made, is reported and left out.
2. **Baseline.** The entry as it is served now, from the user's repository (only read).
3. **Candidates.** Brute mode measures the whole pruned grid; quick mode starts from the
   baseline's settings and varies one setting at a time, keeping the best so far. Each
   candidate is written as the only entry of a scratch repository, with exactly the arguments
   the tuned version would be written with, and served by a fresh embedded server: that server
   serves a snapshot of its repository taken at start, it starts in about 1.5 s and stops in
   about 1 s with nothing in flight, and each candidate then runs with no process, thread or
   memory of the one before. (Loading candidates through the model-control API would save
   those seconds, but needs the admin key wherever that API is restricted.) Each is measured
   by the bench engine: a closed loop over gRPC, windows until perf_analyzer's stability rule
   holds. A candidate that fails to load or does not settle is recorded with why; the search
   goes on.
   With ``images`` (``tune NAME --images DIR``), the entry's image pipeline is searched with
   it: each candidate is written with its ``-preprocess`` step and the ``-image`` ensemble, the
   three served together, and measured by the bench engine's ``--images`` machinery: requests of
   the folder's encoded files sent to the ensemble, as users send them, so decoding costs what
   the files make it cost and the two steps compete for the cores as they will when served. The
   rows keep Triton's statistics of each step (``ConcurrencyResult.steps``).
4. **Choice.** Among everything measured (baseline included) the fastest within the p99
   budget wins; the Pareto front (throughput against p99) is reported beside it.
5. **Writing.** Unless the winner is the baseline, it becomes the entry's next version: the
   chosen runtime's model file and a config with the chosen settings; with ``images``, its
   ``-preprocess`` and ``-image`` entries are rewritten with the chosen step settings too.

Versions and the config: Triton's config belongs to the model, not to a version, so the tuned
settings cannot be given to the new version alone; they apply to the entry; the entry's image
pipeline (``-preprocess``, ``-image``) is rewritten to its new batch limit. The config names
``version_policy: latest 1``, so the tuned version is the one served, and the earlier versions
stay on disk untouched (without ``images`` the ``-preprocess`` step keeps its instances and
delay). All of them hold a ``model.onnx``, which both targets read, so any earlier version can
be served again under the tuned config (a ``specific`` version policy): a rollback of the model
that needs no other change. The settings it replaced, and the figures
measured, and where they were measured (this machine's CPU), are kept in the config's
``tuning`` parameter. The instance kind stays the entry's own (a GPU deployment stays on its
GPU; OpenVINO runs on the CPU only) unless ``instance_kind`` names another.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from resnet_serve.client.bench import benchmark_served_model, read_image_files
from resnet_serve.client.results import ConcurrencyResult
from resnet_serve.client.stability import StabilityRule, UnstableMeasurementError
from resnet_serve.errors import (
    ClientError,
    ExportError,
    MissingDependencyError,
    RepositoryError,
    ResnetServeError,
    ServerError,
    TuningError,
    VerificationError,
    first_line,
)
from resnet_serve.export import CalibrationMethod
from resnet_serve.export.quantize import CALIBRATION_METHODS, quantize_int8
from resnet_serve.files import asdict_with_paths
from resnet_serve.machine import describe_machine
from resnet_serve.parity import DEFAULT_MIN_AGREEMENT, ParityResult, Tolerance, check_parity
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import Reporter, SilentReporter
from resnet_serve.runtimes import OnnxRuntime, OpenVinoRuntime, compare_runtimes
from resnet_serve.selection import ImageSelection, calibration_images, verification_images
from resnet_serve.triton.config import ModelConfig, VersionPolicy
from resnet_serve.triton.repository import (
    PREPROCESSING_PARAMETER,
    TARGET_PARAMETER,
    Classifier,
    ModelEntry,
    entry_target,
    image_pipeline_names,
    read_model_entry,
    read_warmup_images,
    write_image_pipeline,
    write_model_entry,
)
from resnet_serve.triton.server import TritonServer, find_free_ports
from resnet_serve.triton.serving import (
    OPENVINO,
    SERVING_TARGETS,
    TRITON_INSTANCE_KINDS,
    InstanceKind,
    ServingOptions,
)
from resnet_serve.tuning.pareto import best_within, pareto_front, rank
from resnet_serve.tuning.space import PREPROCESS_SETTINGS, SETTINGS, TUNED_RUNTIMES, Candidate, SearchSpace

__all__ = [
    "TUNING_PARAMETER",
    "Measurement",
    "RuntimeCheck",
    "TuneOptions",
    "TuneResult",
    "quick_search",
    "tune_model_entry",
]

# The config parameter of a tuned entry that records what was measured and what it replaced.
TUNING_PARAMETER = "tuning"
# Parameters that say how a runtime runs; every candidate sets its own.
_RUNTIME_SETTINGS = frozenset(
    {target.threads_parameter for target in SERVING_TARGETS.values() if target.threads_parameter} | {"HINT_BF16"}
)
_TUNABLE_TARGETS = ("onnxruntime", "openvino")
# Largest batch the runtime checks run, as export verifies (batch 1 and up to 64).
_CHECK_BATCH = 64
BASELINE_LABEL = "current"

Status = Literal["measured", "unstable", "failed"]


@dataclass(frozen=True)
class TuneOptions:
    """How ``tune_model_entry`` searches, checked on construction.

    Attributes:
        p99_budget_ms: the largest p99 latency the chosen configuration may have (None: any).
        concurrency / batch_size: the load: a closed loop of ``concurrency`` requests in
            flight, each of ``batch_size`` images.
        space: the values searched.
        quick: vary one setting at a time from the current configuration instead of measuring
            the whole grid.
        max_candidates: the most candidates measured, the baseline not counted. Brute mode
            refuses a larger grid before measuring anything; quick mode stops there.
        warmup_seconds / measurement_seconds / stability: the bench engine's settings for
            every candidate.
        selection / calibration_method / min_agreement: the test images that check the
            OpenVINO runtimes and the training images that calibrate INT8, as export uses them.
        write: write the chosen configuration as a new version (False: measure only), and the
            entry's image pipeline (``-preprocess``, ``-image``) to match its batch limit.
        instance_kind: the instance kind the written version gets (None: the entry's own, or
            KIND_CPU for an OpenVINO winner, the only kind that backend runs). Candidates are
            measured on this machine's CPU whatever it is.
        cores: the CPU cores instances × threads may use (None: those this process may run on).
        images: a folder of encoded image files: search the entry's image pipeline with it and
            measure every candidate by sending these files to ``<name>-image``
            (``concurrency`` requests of ``batch_size`` files); None measures the classifier
            with float tensors.

    Raises:
        TuningError: a value out of range.
    """

    p99_budget_ms: float | None = None
    concurrency: int = 4
    batch_size: int = 1
    space: SearchSpace = SearchSpace()
    quick: bool = False
    max_candidates: int = 64
    warmup_seconds: float = 2.0
    measurement_seconds: float = 5.0
    stability: StabilityRule = StabilityRule()
    selection: ImageSelection = ImageSelection()
    calibration_method: CalibrationMethod = "minmax"
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    write: bool = True
    instance_kind: InstanceKind | None = None
    cores: int | None = None
    images: Path | None = None
    # What an OpenVINO runtime must keep of onnxruntime FP32: the top-1 class.
    agreement_tolerance: Tolerance = field(init=False)

    def __post_init__(self) -> None:
        if self.p99_budget_ms is not None and not self.p99_budget_ms > 0:
            raise TuningError(f"the p99 budget must be > 0 ms, got {self.p99_budget_ms}")
        for name in ("concurrency", "batch_size", "max_candidates"):
            if getattr(self, name) < 1:
                raise TuningError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.warmup_seconds < 0 or not self.measurement_seconds > 0:
            raise TuningError("the warm-up must be ≥ 0 s and the measurement window > 0 s")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise TuningError(
                f"unknown calibration method {self.calibration_method!r}; "
                f"choose one of {', '.join(CALIBRATION_METHODS)}"
            )
        # Built now, so that Tolerance refuses a bad fraction before anything is measured.
        object.__setattr__(self, "agreement_tolerance", Tolerance(rtol=None, min_top1_agreement=self.min_agreement))
        if self.cores is not None and self.cores < 1:
            raise TuningError(f"cores must be ≥ 1, got {self.cores}")
        if self.instance_kind is not None and self.instance_kind not in TRITON_INSTANCE_KINDS:
            raise TuningError(
                f"unknown instance kind {self.instance_kind!r}; choose one of {', '.join(TRITON_INSTANCE_KINDS)}"
            )


@dataclass(frozen=True)
class RuntimeCheck:
    """One runtime of the space: what it computes in, its agreement with onnxruntime on the
    source FP32 file (None for onnxruntime itself), and why it was left out (None: searched)."""

    runtime: str
    computes_in: str
    parity: ParityResult | None = None
    refused: str | None = None


@dataclass(frozen=True)
class Measurement:
    """One configuration as measured: its row of bench figures, or why there is none."""

    label: str
    candidate: Candidate
    status: Status
    result: ConcurrencyResult | None = None
    reason: str = ""
    seconds: float = 0.0

    @property
    def point(self) -> tuple[float, float] | None:
        """(throughput, p99 ms), or None unless measured."""
        if self.status != "measured" or self.result is None:
            return None
        return self.result.inferences_per_second, self.result.p99_ms


@dataclass(frozen=True)
class TuneResult:
    """What ``tune_model_entry`` measured and chose. ``measurements`` starts with the baseline
    (label ``current``: the entry as served before, its ``served_version``); ``pareto`` and
    ``chosen`` name measurements by label; ``written_version`` is None when nothing was written
    (the baseline won, nothing met the budget, or ``write`` was off)."""

    model: str
    repository: Path
    source_version: int
    served_version: int
    options: TuneOptions
    cores: int
    machine: str
    runtimes: list[RuntimeCheck]
    pruned: dict[str, int]
    measurements: list[Measurement]
    search_complete: bool
    pareto: list[str]
    chosen: str | None
    written_version: int | None
    seconds: float

    @property
    def baseline(self) -> Measurement:
        return self.measurements[0]

    def measurement(self, label: str) -> Measurement:
        return next(m for m in self.measurements if m.label == label)

    @property
    def speedup(self) -> float | None:
        """The chosen configuration's throughput over the baseline's, when both were measured."""
        if self.chosen is None or self.baseline.point is None:
            return None
        return self.measurement(self.chosen).result.inferences_per_second / self.baseline.point[0]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict_with_paths(self), "speedup": self.speedup}


def tune_model_entry(
    *, repository: Path, name: str, options: TuneOptions = TuneOptions(), reporter: Reporter | None = None
) -> TuneResult:
    """Search serving configurations of the entry ``name`` and write the best as its next version.

    See the module docstring for the steps. The user's repository is only read until the
    chosen configuration is written, and then only by ``write_model_entry`` (atomic, a new
    version; nothing else changes).

    Raises:
        TuningError: an entry of another target, no FP32 ONNX version, or a brute grid larger
            than ``max_candidates``.
        RepositoryError: the entry cannot be read, or the tuned version cannot be written.
    """
    reporter = reporter or SilentReporter()
    began = time.perf_counter()
    cores = options.cores or len(os.sched_getaffinity(0))
    entry = read_model_entry(repository=repository, name=name)
    target = entry_target(entry.config)
    classifier = name.rpartition("-")[0]
    if target in ("ensemble", "python") and classifier and name in image_pipeline_names(classifier):
        raise TuningError(
            f"{name!r} is a step of {classifier!r}'s image pipeline: `tune {classifier} --images DIR` searches the "
            "classifier and the pipeline together, measured with your image files"
        )
    if target not in _TUNABLE_TARGETS:
        raise TuningError(
            f"model {name!r} is served by {target}; tune searches entries of the "
            f"{' and '.join(_TUNABLE_TARGETS)} targets"
        )
    source = _fp32_source(repository, entry)
    pipeline = _image_pipeline(repository, name) if options.images is not None else None
    limits = [("--max-batch-sizes", options.space.max_batch_sizes)]
    if pipeline is not None:
        limits.append(("--preprocess-max-batch-sizes", options.space.preprocess_max_batch_sizes))
    for option, values in limits:
        if options.batch_size > max(values):
            raise TuningError(
                f"no configuration of the search space takes requests of {options.batch_size} images: the largest "
                f"max_batch_size searched is {max(values)} ({option})"
            )
    if pipeline is not None:
        # Read and checked before anything is measured, as bench --images does each time.
        reporter.message(f"{len(read_image_files(options.images))} image files in {options.images} to send to "
                         f"{pipeline[1].name}")
    if options.write:
        for written in (name, *(image_pipeline_names(name) if pipeline is not None else ())):
            _check_can_write(repository, written)
    grid, pruned = ([], {}) if options.quick else options.space.grid(
        batch_size=options.batch_size, concurrency=options.concurrency, cores=cores,
        image_pipeline=pipeline is not None)
    if len(grid) > options.max_candidates:
        raise TuningError(
            f"the search space has {len(grid)} candidates after pruning, more than the {options.max_candidates} "
            "allowed: narrow it, allow more candidates, or search in quick mode"
        )
    try:
        preprocessing = Preprocessing.from_dict(entry.preprocessing)
    except ResnetServeError as error:
        raise TuningError(f"model {name!r} has unusable preprocessing: {error}") from None

    with tempfile.TemporaryDirectory(prefix="resnet-serve-tune-") as scratch_name:
        scratch = Path(scratch_name)
        files, checks = _prepare_runtimes(
            source.model_path, options=options, preprocessing=preprocessing, scratch=scratch, reporter=reporter
        )
        measurer = _Measurer(entry=entry, preprocess=None if pipeline is None else pipeline[0],
                             preprocessing=preprocessing, files=files, options=options, scratch=scratch,
                             reporter=reporter)
        baseline = measurer.measure_current(repository)
        if options.quick:
            measurements, pruned, complete = quick_search(
                baseline, options.space, measure=measurer.measure, searched=tuple(files),
                budget_ms=options.p99_budget_ms, max_candidates=options.max_candidates,
                batch_size=options.batch_size, concurrency=options.concurrency, cores=cores,
            )
        else:
            refused = [c for c in grid if c.runtime not in files]
            if refused:
                pruned["runtime left out by its check"] = len(refused)
            measurements, complete = [measurer.measure(c) for c in grid if c.runtime in files], True
        everything = [baseline, *measurements]
        measured = [m for m in everything if m.point is not None]
        points = [m.point for m in measured]
        best = best_within(points, options.p99_budget_ms)
        chosen = None if best is None else measured[best]
        written = None
        if chosen is not None and chosen is not baseline and options.write:
            reporter.message(f"writing {chosen.label} ({chosen.candidate.describe()}) as the next version of {name}")
            written = measurer.write_tuned(chosen, baseline=baseline, checks=checks, repository=repository).version
    return TuneResult(
        model=name, repository=repository, source_version=source.version, served_version=entry.version,
        options=options, cores=cores, machine=describe_machine(), runtimes=checks,
        pruned=pruned, measurements=everything, search_complete=complete,
        pareto=[measured[i].label for i in pareto_front(points)],
        chosen=None if chosen is None else chosen.label, written_version=written,
        seconds=time.perf_counter() - began,
    )


def _check_can_write(repository: Path, name: str) -> None:
    """Fail before measuring, not after, where the tuned version could not be written: the
    writer makes its lock and staging folder in the repository itself."""
    lock = repository / f".{name}.lock"
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{name}.tune-check-", dir=repository)
        os.close(handle)
        os.unlink(probe)
        if lock.exists():
            with lock.open("a"):
                pass
    except OSError as error:
        raise TuningError(
            f"cannot write the tuned version into {repository} ({error.strerror or error}): measure with --no-write, "
            "or tune a copy you can write"
        ) from None


def quick_search(
    start: Measurement,
    space: SearchSpace,
    *,
    measure: Callable[[Candidate], Measurement],
    searched: tuple[str, ...],
    budget_ms: float | None,
    max_candidates: int,
    batch_size: int,
    concurrency: int,
    cores: int,
) -> tuple[list[Measurement], dict[str, int], bool]:
    """Coordinate search: for each of ``SETTINGS`` in turn (then ``PREPROCESS_SETTINGS`` where
    ``start`` has the image pipeline's), measure the candidates that differ from the best
    configuration so far in that setting only, then move to the best (by ``pareto.rank``).
    Runtimes not in ``searched`` are skipped. Returns the measurements, how
    many candidates each pruning rule left out, and whether the walk finished within
    ``max_candidates``."""
    seen: dict[Candidate, Measurement] = {start.candidate: start}
    measurements: list[Measurement] = []
    pruned: Counter[str] = Counter()
    best = start
    for setting in SETTINGS + (PREPROCESS_SETTINGS if start.candidate.searches_pipeline else ()):
        candidates, left_out = space.neighbours(best.candidate, setting, batch_size=batch_size,
                                                concurrency=concurrency, cores=cores)
        pruned.update(left_out)
        for candidate in candidates:
            if candidate.runtime not in searched or candidate in seen:
                continue
            if len(measurements) == max_candidates:
                return measurements, dict(pruned), False
            seen[candidate] = measure(candidate)
            measurements.append(seen[candidate])
        ranked = [m for m in seen.values() if m.point is not None]
        if ranked:
            best = min(ranked, key=lambda m: rank(m.point, budget_ms))
    return measurements, dict(pruned), True


def _model_precision(path: Path) -> str:
    """The precision export recorded in an ONNX file's metadata (FP32 files may have none)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - onnx raises several unrelated types
        raise TuningError(f"{path} is not a readable ONNX model ({first_line(error)})") from None
    return next((p.value for p in model.metadata_props if p.key == "precision"), "fp32")


def _fp32_source(repository: Path, entry: ModelEntry) -> ModelEntry:
    """The entry's newest version whose model file is an FP32 ONNX: what every runtime is made from."""
    for version in sorted(entry.versions, reverse=True):
        candidate = read_model_entry(repository=repository, name=entry.name, version=version)
        if candidate.model_path is not None and candidate.model_path.is_file() \
                and _model_precision(candidate.model_path) == "fp32":
            return candidate
    raise TuningError(
        f"model {entry.name!r} has no version holding an FP32 ONNX file (versions {list(entry.versions)}); "
        "export one (resnet-serve export --precision fp32) to tune from"
    )


def _image_pipeline(repository: Path, name: str) -> tuple[ModelEntry, ModelEntry]:
    """The ``-preprocess`` and ``-image`` entries beside the classifier ``name``."""
    preprocess, image = image_pipeline_names(name)
    try:
        return (read_model_entry(repository=repository, name=preprocess),
                read_model_entry(repository=repository, name=image))
    except RepositoryError as error:
        raise TuningError(
            f"model {name!r} has no image pipeline to send files to ({error}): export it with --image-pipeline, or "
            "tune without --images"
        ) from None


def _current_candidate(entry: ModelEntry, preprocess: ModelEntry | None = None) -> Candidate:
    """The entry's current settings as a candidate (its first preferred batch size only), with
    its ``-preprocess`` step's where that is searched too."""
    config = entry.config
    runtime = entry_target(config)
    if runtime == OPENVINO.name and entry.model_path is not None and _model_precision(entry.model_path) == "int8":
        runtime = "openvino-int8"
    batching = config.dynamic_batching
    preferred = batching.preferred_batch_size[0] if batching and batching.preferred_batch_size else 0
    threads = config.parameters.get(SERVING_TARGETS[entry_target(config)].threads_parameter)
    step = {}
    if preprocess is not None:
        step_batching = preprocess.config.dynamic_batching
        step = {"preprocess_instances": _instances(preprocess.config),
                "preprocess_max_batch_size": preprocess.config.max_batch_size,
                "preprocess_max_queue_delay_us": step_batching.max_queue_delay_microseconds if step_batching else 0}
    return Candidate(
        runtime=runtime,
        max_batch_size=config.max_batch_size,
        preferred_batch_size=preferred,
        max_queue_delay_us=batching.max_queue_delay_microseconds if batching else 0,
        instances=_instances(config),
        threads=int(threads) if threads and threads.isdigit() else None,
        **step,
    )


def _instances(config: ModelConfig) -> int:
    return sum(group.count for group in config.instance_groups) or 1


def _prepare_runtimes(
    source: Path, *, options: TuneOptions, preprocessing: Preprocessing, scratch: Path, reporter: Reporter
) -> tuple[dict[str, Path], list[RuntimeCheck]]:
    """The model file of each runtime of the space that passed its check, and every check."""
    files: dict[str, Path] = {}
    checks: list[RuntimeCheck] = []
    if any(TUNED_RUNTIMES[name].target is OPENVINO for name in options.space.runtimes):
        images = verification_images(options.selection, preprocessing).images
        reference = OnnxRuntime(source, name="onnxruntime-fp32")
    for name in options.space.runtimes:
        runtime = TUNED_RUNTIMES[name]
        if runtime.target is not OPENVINO:
            files[name] = source
            checks.append(RuntimeCheck(runtime=name, computes_in="f32"))
            continue
        computes_in = ""
        try:
            path = source
            if runtime.int8:
                reporter.message(f"quantizing the source to INT8 as export does ({options.calibration_method})")
                path = quantize_int8(
                    source, scratch / "model-int8.onnx", method=options.calibration_method,
                    calibration_images=calibration_images(options.selection, preprocessing),
                ).path
            reporter.message(f"checking {name} against onnxruntime FP32 on {len(images)} test images")
            served = OpenVinoRuntime(path, precision=None, name=name)
            computes_in = served.inference_precision
            if runtime.int8:
                computes_in = f"int8 where quantized, {computes_in} elsewhere"
            parity = compare_runtimes(reference, served, images, batch_sizes=(1, min(_CHECK_BATCH, len(images))))
        except (ExportError, MissingDependencyError, VerificationError) as error:
            checks.append(RuntimeCheck(runtime=name, computes_in=computes_in, refused=str(error)))
            continue
        try:
            check_parity(parity, options.agreement_tolerance)
        except VerificationError as error:
            checks.append(RuntimeCheck(runtime=name, computes_in=computes_in, parity=parity, refused=str(error)))
            continue
        files[name] = path
        checks.append(RuntimeCheck(runtime=name, computes_in=computes_in, parity=parity))
    return files, checks


class _Measurer:
    """Measures configurations of one entry, each on a fresh embedded server, and writes the
    chosen one with the very arguments its candidate was measured with."""

    def __init__(
        self, *, entry: ModelEntry, preprocess: ModelEntry | None, preprocessing: Preprocessing,
        files: dict[str, Path], options: TuneOptions, scratch: Path, reporter: Reporter,
    ) -> None:
        self.entry = entry
        self.preprocess = preprocess
        self.preprocessing = preprocessing
        self.files = files
        self.options = options
        self.scratch = scratch
        self.reporter = reporter
        self.warmup_images = read_warmup_images(entry)
        self.metadata = {
            key: value for key, value in entry.config.parameters.items()
            if key not in (PREPROCESSING_PARAMETER, TARGET_PARAMETER, TUNING_PARAMETER) and key not in _RUNTIME_SETTINGS
        }
        self.count = 0

    def classifier(self, candidate: Candidate, **metadata: str) -> Classifier:
        """What a candidate serves: the entry's classes and preprocessing, the runtime's file."""
        return Classifier(model_file=self.files[candidate.runtime], class_names=self.entry.class_names,
                          preprocessing=self.preprocessing, metadata={**self.metadata, **metadata})

    @staticmethod
    def settings(candidate: Candidate) -> ServingOptions:
        """The serving settings a candidate is measured with: measured on this machine's CPU,
        whatever the entry will run on."""
        return ServingOptions(
            target=TUNED_RUNTIMES[candidate.runtime].target.name, max_batch_size=candidate.max_batch_size,
            preferred_batch_sizes=(candidate.preferred_batch_size,) if candidate.preferred_batch_size else (),
            max_queue_delay_us=candidate.max_queue_delay_us, instances=candidate.instances, instance_kind="cpu",
            threads=candidate.threads, batch_padding=candidate.batch_padding, image_pipeline=False,
        )

    def measure_current(self, repository: Path) -> Measurement:
        """The entry as the user's repository serves it now: the baseline."""
        candidate = _current_candidate(self.entry, self.preprocess)
        return self._report(self._serve(BASELINE_LABEL, candidate, repository, time.perf_counter()))

    def measure(self, candidate: Candidate) -> Measurement:
        """Write ``candidate`` as the only entry of a scratch repository, serve and measure it."""
        self.count += 1
        label = f"c{self.count:02d}"
        began = time.perf_counter()
        repository = self.scratch / label
        try:
            write_model_entry(repository=repository, name=self.entry.name, classifier=self.classifier(candidate),
                              settings=self.settings(candidate), warmup_images=self.warmup_images)
            if candidate.searches_pipeline:
                self._write_image_pipeline(repository, candidate)
            return self._report(self._serve(label, candidate, repository, began))
        except RepositoryError as error:
            return self._report(Measurement(label, candidate, "failed", reason=str(error)))
        finally:
            shutil.rmtree(repository, ignore_errors=True)

    def _serve(self, label: str, candidate: Candidate, repository: Path, began: float) -> Measurement:
        options = self.options
        http, grpc, metrics = find_free_ports(3)
        # With files, the ensemble is what is measured, and it needs both its steps loaded.
        pipeline = image_pipeline_names(self.entry.name) if options.images is not None else ()
        try:
            # Nothing is in flight when the measurement ends, so the server need not wait to stop.
            with TritonServer(
                repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                model_control="explicit", load_models=(self.entry.name, *pipeline), exit_timeout_s=0,
                log_file=self.scratch / f"{label}.log",
            ) as server:
                run = benchmark_served_model(
                    model=pipeline[-1] if pipeline else self.entry.name, protocol="grpc", url=server.urls.grpc,
                    batch_size=options.batch_size, concurrency=(options.concurrency,),
                    warmup_seconds=options.warmup_seconds, measurement_seconds=options.measurement_seconds,
                    stability=options.stability, images=options.images,
                )
        except UnstableMeasurementError as error:
            return Measurement(label, candidate, "unstable", reason=str(error), seconds=time.perf_counter() - began)
        except (ServerError, ClientError) as error:
            return Measurement(label, candidate, "failed", reason=str(error), seconds=time.perf_counter() - began)
        return Measurement(label, candidate, "measured", run.results[0], seconds=time.perf_counter() - began)

    def _report(self, measurement: Measurement) -> Measurement:
        figures = (
            f"{measurement.point[0]:.1f} infer/s, p99 {measurement.point[1]:.1f} ms" if measurement.point
            else f"{measurement.status}: {measurement.reason}"
        )
        self.reporter.message(f"{measurement.label} {measurement.candidate.describe()}: {figures}")
        return measurement

    def write_tuned(
        self, chosen: Measurement, *, baseline: Measurement, checks: list[RuntimeCheck], repository: Path
    ) -> ModelEntry:
        computes_in = next(c.computes_in for c in checks if c.runtime == chosen.candidate.runtime)
        record = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": describe_machine(),
            # The figures are this machine's CPU through the embedded server's proxies, whatever
            # the instance kind written: a GPU deployment's own figures need a measurement there.
            "measured_on": "CPU, through the embedded Triton server (python-backend proxies of the official backends)",
            "concurrency": self.options.concurrency,
            "batch_size": self.options.batch_size,
            # What each request carried: float tensors to the classifier, or the user's files to its ensemble.
            "images": None if self.options.images is None else str(self.options.images),
            "p99_budget_ms": self.options.p99_budget_ms,
            "computes_in": computes_in,
            "inferences_per_second": round(chosen.point[0], 2),
            "p99_ms": round(chosen.point[1], 2),
            "replaced": {
                "version": self.entry.version,
                "settings": asdict(baseline.candidate),
                "inferences_per_second": None if baseline.point is None else round(baseline.point[0], 2),
                "p99_ms": None if baseline.point is None else round(baseline.point[1], 2),
            },
        }
        measured = self.settings(chosen.candidate)
        settings = dataclasses.replace(
            measured, instance_kind=self._written_instance_kind(measured), retarget=True,
            version_policy=VersionPolicy(kind="latest", num_versions=1),
        )
        written = write_model_entry(
            repository=repository, name=self.entry.name, settings=settings, warmup_images=self.warmup_images,
            classifier=self.classifier(chosen.candidate, **{TUNING_PARAMETER: json.dumps(record, sort_keys=True)}),
        )
        if chosen.candidate.searches_pipeline:
            self._write_image_pipeline(repository, chosen.candidate)
        else:
            self._rewrite_image_pipeline(repository)
        return written

    def _written_instance_kind(self, measured: ServingOptions) -> InstanceKind:
        """The kind the user asked for; else the entry's own, so a GPU deployment stays on its
        GPU (OpenVINO runs on the CPU only: its target's kind)."""
        if self.options.instance_kind is not None:
            return self.options.instance_kind
        if measured.serving_target is OPENVINO or not self.entry.config.instance_groups:
            return "auto"
        kind = self.entry.config.instance_groups[0].kind
        return next(name for name, triton in TRITON_INSTANCE_KINDS.items() if triton == kind or
                    (triton is None and kind == "KIND_AUTO"))

    def _write_image_pipeline(self, repository: Path, candidate: Candidate) -> None:
        """``-preprocess`` and ``-image`` with the candidate's step settings (the ensemble takes
        the smaller of its steps' batch limits: see ``write_image_pipeline``)."""
        write_image_pipeline(
            repository=repository, classifier=self.entry.name, instances=candidate.preprocess_instances,
            max_batch_size=candidate.preprocess_max_batch_size,
            max_queue_delay_us=candidate.preprocess_max_queue_delay_us,
        )

    def _rewrite_image_pipeline(self, repository: Path) -> None:
        """Without ``images``, ``-preprocess`` keeps its instances and delay and ``-image``
        follows the classifier's new batch limit: core refuses an ensemble whose batching steps
        allow less than it does (ensemble_utils.cc:288-302)."""
        preprocess, image = image_pipeline_names(self.entry.name)
        if not (repository / preprocess).is_dir() or not (repository / image).is_dir():
            return
        current = read_model_entry(repository=repository, name=preprocess).config
        batching = current.dynamic_batching
        write_image_pipeline(
            repository=repository, classifier=self.entry.name, instances=_instances(current),
            max_queue_delay_us=batching.max_queue_delay_microseconds if batching else 0,
        )
