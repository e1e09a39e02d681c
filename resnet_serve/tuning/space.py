"""What `resnet-serve tune` searches: the runtimes, and the grid of serving settings.

A candidate is one serving configuration of an entry: the runtime that runs its model file,
Triton's `max_batch_size`, one preferred batch size (or none), the dynamic batcher's queue
delay, the instance count and each instance's intra-op threads. When the image pipeline is
searched with it (`tune --images`), a candidate also holds the `-preprocess` step's instances,
`max_batch_size` and queue delay: the two steps share the cores, and what one of them is given
the other lacks, so they are searched together rather than one after the other. The space is a
few explicit value lists per setting, as in Model Analyzer's brute search; its grid is their
product, less the combinations that cannot load or cannot differ, each left out with its reason
counted:

- instances × threads above the CPU cores: the instances run side by side, so more threads
  than cores only make them preempt each other (oversubscription);
- a `max_batch_size` below the request's batch: the server would refuse every request (for
  the preprocessing step too: the ensemble takes at most the smaller of its steps' limits);
- a preferred batch size above `max_batch_size`: Triton refuses the config;
- `max_batch_size` 1: nothing is ever batched, so the queue delay and preferred sizes cannot
  change anything; one candidate stays (no preferred size, the smallest delay); the same for
  the preprocessing step's queue delay;
- more preprocessing instances than cores: each decodes on one core, so more only preempt each
  other (the classifier's instances are not counted against them: the two steps of one request
  run one after the other, and a core idle in one is busy in the other);
- OpenVINO batching that pads, unless every request is exactly `max_batch_size` images (then
  nothing is ever padded). The backend pads every execution to `max_batch_size`, and two ranges
  of it cannot serve: one the images in flight (concurrency × batch) can fill, because a full
  execution after a padded one returns too few rows and fails its requests (the pad size is
  never reset: the `openvino.batch-padding` rule of the contract); and one at least twice the
  images in flight, where half of every execution's compute or more is padding, which no CPU's
  gain from batching makes up (measured on ResNet-50, 2 cores: padding 1-image requests to 4 at
  concurrency 2 halved the throughput, and to 64 at concurrency 4 left 0–1 inferences/s where
  max batch 1 answered 33.5; benchmarks/results/openvino-batching-2core-cpu.md and
  tune-resnet50-2core-cpu.md). What is left is above the images in flight and below twice them.

Every candidate is one the official backend accepts: an OpenVINO candidate with
`max_batch_size` above 1 gets `ENABLE_BATCH_PADDING`, without which the backend fails every
execution that is not exactly `max_batch_size` images; it is then measured with the padding the
backend does (the compute of `max_batch_size` images for every batch).

Quick mode walks the same space one setting at a time (``SETTINGS`` order) instead of
measuring its whole grid.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, replace

from resnet_serve.errors import TuningError
from resnet_serve.triton.serving import ONNXRUNTIME, OPENVINO, ServingTarget

__all__ = [
    "PREPROCESS_SETTINGS",
    "SETTINGS",
    "TUNED_RUNTIMES",
    "Candidate",
    "SearchSpace",
    "TunedRuntime",
]


@dataclass(frozen=True)
class TunedRuntime:
    """A runtime the search can choose: the serving target that runs it and its model file."""

    name: str
    target: ServingTarget
    int8: bool
    description: str


TUNED_RUNTIMES: dict[str, TunedRuntime] = {
    runtime.name: runtime for runtime in (
        TunedRuntime("onnxruntime", ONNXRUNTIME, False, "the entry's FP32 ONNX in onnxruntime"),
        TunedRuntime("openvino", OPENVINO, False, "the same FP32 ONNX in OpenVINO (BF16 on CPUs that have it)"),
        TunedRuntime("openvino-int8", OPENVINO, True,
                     "that ONNX quantized to INT8 (static QDQ, calibrated as export does) in OpenVINO"),
    )
}

# The settings quick mode varies, one after the other; instances and threads move together
# because their product is what the cores bound. The preprocessing step's come after the
# classifier's, when the image pipeline is searched.
SETTINGS = ("runtime", "instances_threads", "max_batch_size", "max_queue_delay_us", "preferred_batch_size")
PREPROCESS_SETTINGS = ("preprocess_instances", "preprocess_max_batch_size", "preprocess_max_queue_delay_us")


@dataclass(frozen=True)
class Candidate:
    """One serving configuration. ``preferred_batch_size`` 0 is none; ``threads`` None is the
    backend's own default (only an entry's current configuration has it). The ``preprocess_``
    settings are the image pipeline's `-preprocess` step's, None where the pipeline is not
    searched."""

    runtime: str
    max_batch_size: int
    preferred_batch_size: int
    max_queue_delay_us: int
    instances: int
    threads: int | None
    preprocess_instances: int | None = None
    preprocess_max_batch_size: int | None = None
    preprocess_max_queue_delay_us: int | None = None

    @property
    def searches_pipeline(self) -> bool:
        return self.preprocess_instances is not None

    @property
    def batch_padding(self) -> bool:
        """Whether the official backend must pad: OpenVINO fixes its batch to max_batch_size and
        fails any other total unless ENABLE_BATCH_PADDING pads every execution to it."""
        return TUNED_RUNTIMES[self.runtime].target is OPENVINO and self.max_batch_size > 1

    def describe(self) -> str:
        preferred = self.preferred_batch_size or "–"
        threads = "default" if self.threads is None else self.threads
        padded = ", every batch padded to it" if self.batch_padding else ""
        pipeline = (f"; preprocess: {self.preprocess_instances} instance(s), max batch "
                    f"{self.preprocess_max_batch_size}, delay {self.preprocess_max_queue_delay_us} µs"
                    if self.searches_pipeline else "")
        return (f"{self.runtime}, max batch {self.max_batch_size}{padded}, preferred {preferred}, "
                f"delay {self.max_queue_delay_us} µs, {self.instances} instance(s) × {threads} thread(s){pipeline}")


def _values(name: str, values: tuple[int, ...], *, least: int) -> tuple[int, ...]:
    if not values:
        raise TuningError(f"the search space needs at least one {name}")
    if any(value < least for value in values):
        raise TuningError(f"{name} must be ≥ {least}, got {list(values)}")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class SearchSpace:
    """The values the search tries for each setting (defaults sized for a 2-core CPU).

    ``preferred_batch_sizes`` lists single preferred sizes, 0 meaning none. The ``preprocess_``
    lists are the image pipeline's `-preprocess` step's, searched only with ``image_pipeline``.

    Raises:
        TuningError: an empty list, an unknown runtime or a value out of range.
    """

    runtimes: tuple[str, ...] = tuple(TUNED_RUNTIMES)
    max_batch_sizes: tuple[int, ...] = (1, 64)
    preferred_batch_sizes: tuple[int, ...] = (0, 4)
    max_queue_delays_us: tuple[int, ...] = (100, 2000)
    instances: tuple[int, ...] = (1, 2)
    threads: tuple[int, ...] = (1, 2)
    preprocess_instances: tuple[int, ...] = (1, 2)
    # 1: each file of a request is decoded by whichever instance is free, never queued behind
    # another request's files on a busy one; 64: one execution decodes all that waited.
    preprocess_max_batch_sizes: tuple[int, ...] = (1, 64)
    preprocess_max_queue_delays_us: tuple[int, ...] = (100,)

    def __post_init__(self) -> None:
        unknown = [name for name in self.runtimes if name not in TUNED_RUNTIMES]
        if unknown or not self.runtimes:
            raise TuningError(f"unknown runtimes {unknown}; choose from {', '.join(TUNED_RUNTIMES)}")
        object.__setattr__(self, "runtimes", tuple(dict.fromkeys(self.runtimes)))
        for name, least in (("max_batch_sizes", 1), ("preferred_batch_sizes", 0), ("max_queue_delays_us", 0),
                            ("instances", 1), ("threads", 1), ("preprocess_instances", 1),
                            ("preprocess_max_batch_sizes", 1), ("preprocess_max_queue_delays_us", 0)):
            object.__setattr__(self, name, _values(name, tuple(getattr(self, name)), least=least))

    def values(self, setting: str) -> tuple:
        """The values of one of ``SETTINGS`` or ``PREPROCESS_SETTINGS``; (instances, threads)
        pairs for instances_threads."""
        if setting == "instances_threads":
            return tuple(itertools.product(self.instances, self.threads))
        plural = {"runtime": "runtimes", "max_batch_size": "max_batch_sizes",
                  "max_queue_delay_us": "max_queue_delays_us", "preferred_batch_size": "preferred_batch_sizes",
                  "preprocess_instances": "preprocess_instances",
                  "preprocess_max_batch_size": "preprocess_max_batch_sizes",
                  "preprocess_max_queue_delay_us": "preprocess_max_queue_delays_us"}
        return getattr(self, plural[setting])

    def grid(
        self, *, batch_size: int, concurrency: int, cores: int, image_pipeline: bool = False
    ) -> tuple[list[Candidate], dict[str, int]]:
        """Every candidate of the space in a stable order (with the preprocessing step's
        settings when ``image_pipeline``), and how many combinations each pruning rule left out
        (see the module docstring)."""
        pruned: Counter[str] = Counter()
        kept: dict[Candidate, None] = {}
        steps = itertools.product(self.preprocess_instances, self.preprocess_max_batch_sizes,
                                  self.preprocess_max_queue_delays_us) if image_pipeline else [(None, None, None)]
        for runtime, max_batch, preferred, delay, (instances, threads), step in itertools.product(
            self.runtimes, self.max_batch_sizes, self.preferred_batch_sizes, self.max_queue_delays_us,
            self.values("instances_threads"), list(steps),
        ):
            candidate = Candidate(runtime, max_batch, preferred, delay, instances, threads, *step)
            reason = prune_reason(candidate, batch_size=batch_size, concurrency=concurrency, cores=cores)
            if reason:
                pruned[reason] += 1
                continue
            collapsed = collapse_unbatched(candidate, self)
            if collapsed in kept:
                pruned[_UNBATCHED] += 1
                continue
            kept[collapsed] = None
        return list(kept), dict(pruned)

    def neighbours(
        self, candidate: Candidate, setting: str, *, batch_size: int, concurrency: int, cores: int
    ) -> tuple[list[Candidate], dict[str, int]]:
        """The candidates that differ from ``candidate`` in ``setting`` only (a runtime that
        refuses its max batch, at the largest it takes), and the prunings that left others out
        (as in ``grid``)."""
        pruned: Counter[str] = Counter()
        found: dict[Candidate, None] = {}
        for value in self.values(setting):
            if setting == "instances_threads":
                changed = replace(candidate, instances=value[0], threads=value[1])
            else:
                changed = replace(candidate, **{setting: value})
            reason = prune_reason(changed, batch_size=batch_size, concurrency=concurrency, cores=cores)
            if reason and setting == "runtime":
                # Quick mode reaches a runtime through this step only: where the runtime refuses the
                # current max batch (OpenVINO's padding), it is tried at the largest one it takes.
                for max_batch in reversed(self.max_batch_sizes):
                    fallback = collapse_unbatched(replace(changed, max_batch_size=max_batch), self)
                    if not prune_reason(fallback, batch_size=batch_size, concurrency=concurrency, cores=cores):
                        changed, reason = fallback, ""
                        break
            if reason:
                pruned[reason] += 1
                continue
            changed = collapse_unbatched(changed, self)
            if changed != candidate:
                found[changed] = None
        return list(found), dict(pruned)


def prune_reason(candidate: Candidate, *, batch_size: int, concurrency: int, cores: int) -> str:
    """Why a candidate cannot load or cannot help ("" when it can)."""
    if candidate.threads is not None and candidate.instances * candidate.threads > cores:
        return f"instances × threads above the {cores} cores (oversubscribed)"
    if candidate.max_batch_size < batch_size:
        return f"max_batch_size below the request batch of {batch_size}"
    in_flight = concurrency * batch_size
    if candidate.batch_padding and batch_size < candidate.max_batch_size <= in_flight:
        return (f"OpenVINO padding to a max_batch_size the {in_flight} images in flight can fill "
                "(the backend fails a full execution after a padded one)")
    if candidate.batch_padding and candidate.max_batch_size >= 2 * in_flight:
        return (f"OpenVINO padding to a max_batch_size at least twice the {in_flight} images in flight "
                "(half of every execution padding)")
    if candidate.preferred_batch_size > candidate.max_batch_size:
        return "preferred batch size above max_batch_size"
    if candidate.searches_pipeline:
        if candidate.preprocess_instances > cores:
            return f"preprocessing instances above the {cores} cores (oversubscribed)"
        if candidate.preprocess_max_batch_size < batch_size:
            return f"preprocessing max_batch_size below the request batch of {batch_size}"
    return ""


_UNBATCHED = "max_batch_size 1 batches nothing: queue delay and preferred size cannot matter"


def collapse_unbatched(candidate: Candidate, space: SearchSpace) -> Candidate:
    """With max_batch_size 1 nothing is batched: the one representative of all such delays
    and preferred sizes (no preferred size, the space's smallest delay); the same for the
    preprocessing step's delay."""
    if candidate.max_batch_size == 1:
        candidate = replace(candidate, preferred_batch_size=0, max_queue_delay_us=space.max_queue_delays_us[0])
    if candidate.preprocess_max_batch_size == 1:
        candidate = replace(candidate, preprocess_max_queue_delay_us=space.preprocess_max_queue_delays_us[0])
    return candidate
