"""`resnet-serve tune` without a server: the search space and its pruning, the Pareto
arithmetic, quick mode's walk, and the refusals that come before anything is measured."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from samples import fashion_mnist
from tiny_onnx import CLASS_NAMES, PREPROCESSING, export_tiny_classifier, write_entry
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.client.results import ConcurrencyResult
from resnet_serve.errors import ResnetServeError, TuningError
from resnet_serve.export.quantize import quantize_int8
from resnet_serve.triton.repository import write_image_pipeline
from resnet_serve.triton.serving import PYTHON_ONNXRUNTIME
from resnet_serve.tuning.pareto import best_within, pareto_front, rank
from resnet_serve.tuning.search import Measurement, TuneOptions, quick_search, tune_model_entry
from resnet_serve.tuning.space import PREPROCESS_SETTINGS, SETTINGS, Candidate, SearchSpace

runner = CliRunner()
OVERSUBSCRIBED = "instances × threads above the 2 cores (oversubscribed)"
BELOW_BATCH = "max_batch_size below the request batch of 2"
PREFERRED_ABOVE = "preferred batch size above max_batch_size"
UNBATCHED = "max_batch_size 1 batches nothing: queue delay and preferred size cannot matter"
STEP_OVERSUBSCRIBED = "preprocessing instances above the 2 cores (oversubscribed)"
STEP_BELOW_BATCH = "preprocessing max_batch_size below the request batch of 2"


def test_the_grid_leaves_out_what_cannot_load_or_cannot_differ_and_counts_why() -> None:
    space = SearchSpace(runtimes=("onnxruntime", "openvino"), max_batch_sizes=(1, 8), preferred_batch_sizes=(0, 4, 16),
                        max_queue_delays_us=(0, 500), instances=(1, 2), threads=(1, 2))

    grid, pruned = space.grid(batch_size=2, concurrency=3, cores=2)

    # 2 runtimes × 2 max batch × 3 preferred × 2 delays × 4 (instances, threads) = 96 combinations.
    assert pruned == {OVERSUBSCRIBED: 24, BELOW_BATCH: 36, PREFERRED_ABOVE: 12}
    assert len(grid) == 96 - 72 == 24
    assert {(c.instances, c.threads) for c in grid} == {(1, 1), (1, 2), (2, 1)}
    assert {c.max_batch_size for c in grid} == {8} and {c.preferred_batch_size for c in grid} == {0, 4}
    assert len(set(grid)) == len(grid)

    unbatched, pruned = space.grid(batch_size=1, concurrency=5, cores=4)
    singles = [c for c in unbatched if c.max_batch_size == 1]
    # One representative per runtime and (instances, threads): no preferred size, the smallest delay.
    assert len(singles) == 2 * 4 and {(c.preferred_batch_size, c.max_queue_delay_us) for c in singles} == {(0, 0)}
    assert pruned[UNBATCHED] == 2 * 4 * (2 - 1) and pruned[PREFERRED_ABOVE] == 2 * 4 * 2 * 2 + 2 * 4 * 2


def test_neighbours_differ_in_one_setting_and_are_pruned_like_the_grid() -> None:
    space = SearchSpace(max_batch_sizes=(1, 64), preferred_batch_sizes=(0, 4), max_queue_delays_us=(100, 2000))
    start = Candidate("onnxruntime", 64, 0, 100, 1, None)

    runtimes, _ = space.neighbours(start, "runtime", batch_size=1, concurrency=64, cores=2)
    pairs, pruned = space.neighbours(start, "instances_threads", batch_size=1, concurrency=64, cores=2)
    batches, _ = space.neighbours(start, "max_batch_size", batch_size=1, concurrency=64, cores=2)

    assert [c.runtime for c in runtimes] == ["openvino", "openvino-int8"]
    assert [(c.instances, c.threads) for c in pairs] == [(1, 1), (1, 2), (2, 1)]
    assert pruned == {OVERSUBSCRIBED: 1}
    assert batches == [Candidate("onnxruntime", 1, 0, 100, 1, None)]
    assert set(SETTINGS) == {"runtime", "instances_threads", "max_batch_size", "max_queue_delay_us",
                             "preferred_batch_size"}


def half_padding(in_flight: int) -> str:
    return (f"OpenVINO padding to a max_batch_size at least twice the {in_flight} images in flight "
            "(half of every execution padding)")


def fillable(in_flight: int) -> str:
    return (f"OpenVINO padding to a max_batch_size the {in_flight} images in flight can fill "
            "(the backend fails a full execution after a padded one)")


def test_openvino_padding_that_fails_or_mostly_pads_is_left_out_and_quick_mode_tries_what_is_kept() -> None:
    space = SearchSpace(runtimes=("onnxruntime", "openvino"), max_batch_sizes=(1, 2, 4, 6, 8, 64),
                        preferred_batch_sizes=(0,), max_queue_delays_us=(100,), instances=(1,), threads=(2,))

    grid, pruned = space.grid(batch_size=1, concurrency=4, cores=2)

    # 4 images in flight. OpenVINO pads every execution to its max batch: 2 and 4 can be filled (and a full
    # execution after a padded one fails), 8 and 64 are half padding or more; 6 is neither. onnxruntime batches
    # what arrived without padding and keeps every max batch.
    assert [(c.runtime, c.max_batch_size) for c in grid if c.runtime == "openvino"] == [("openvino", 1), ("openvino", 6)]
    assert len(grid) == 6 + 2 and pruned == {fillable(4): 2, half_padding(4): 2}
    # Requests of exactly the max batch are never padded: 8 stays for requests of 8 images.
    exact, pruned = space.grid(batch_size=8, concurrency=1, cores=2)
    assert [c.max_batch_size for c in exact if c.runtime == "openvino"] == [8] and pruned[half_padding(8)] == 1
    assert ("openvino", 64) in {(c.runtime, c.max_batch_size) for c in space.grid(batch_size=8, concurrency=6,
                                                                                   cores=2)[0]}

    # Quick mode reaches OpenVINO through the runtime step only: from max batch 64, at the largest max batch kept.
    start = Candidate("onnxruntime", 64, 0, 100, 1, 2)
    runtimes, pruned = space.neighbours(start, "runtime", batch_size=1, concurrency=4, cores=2)
    assert runtimes == [Candidate("openvino", 6, 0, 100, 1, 2)] and pruned == {}
    runtimes, _ = space.neighbours(start, "runtime", batch_size=1, concurrency=1, cores=2)
    assert runtimes == [Candidate("openvino", 1, 0, 100, 1, 2)]


def test_with_the_image_pipeline_every_candidate_also_sets_the_preprocessing_step() -> None:
    space = SearchSpace(runtimes=("onnxruntime",), max_batch_sizes=(8,), preferred_batch_sizes=(0,),
                        max_queue_delays_us=(100,), instances=(1,), threads=(1,), preprocess_instances=(1, 2, 3),
                        preprocess_max_batch_sizes=(1, 2, 16), preprocess_max_queue_delays_us=(0, 500))

    grid, pruned = space.grid(batch_size=2, concurrency=4, cores=2, image_pipeline=True)

    # 3 instances × 3 max batch × 2 delays = 18 step settings: 6 with 3 instances on 2 cores, then 4 with max
    # batch 1 below the request's 2 files.
    assert pruned == {STEP_OVERSUBSCRIBED: 6, STEP_BELOW_BATCH: 4}
    assert len(grid) == 18 - 10 == 8 and len(set(grid)) == 8
    assert {(c.preprocess_instances, c.preprocess_max_batch_size) for c in grid} == {(1, 2), (1, 16), (2, 2), (2, 16)}
    assert {c.preprocess_max_queue_delay_us for c in grid} == {0, 500}
    assert all(c.searches_pipeline and (c.max_batch_size, c.instances) == (8, 1) for c in grid)
    # The classifier's own grid is the same with and without the pipeline.
    assert [c.runtime for c in space.grid(batch_size=2, concurrency=4, cores=2)[0]] == ["onnxruntime"]
    assert not space.grid(batch_size=2, concurrency=4, cores=2)[0][0].searches_pipeline

    # A step that never batches has one queue delay: its other delays are the same candidate.
    unbatched, pruned = space.grid(batch_size=1, concurrency=4, cores=2, image_pipeline=True)
    singles = [c for c in unbatched if c.preprocess_max_batch_size == 1]
    assert {(c.preprocess_instances, c.preprocess_max_queue_delay_us) for c in singles} == {(1, 0), (2, 0)}
    assert pruned[UNBATCHED] == 2 and len(unbatched) == 2 * 3 * 2 - 2


def test_the_preprocessing_steps_neighbours_and_quick_mode_walk_them_after_the_classifier() -> None:
    space = SearchSpace(runtimes=("onnxruntime",), max_batch_sizes=(64,), preferred_batch_sizes=(0,),
                        max_queue_delays_us=(100,), instances=(1,), threads=(1,))
    start = Candidate("onnxruntime", 64, 0, 100, 1, 1, 1, 64, 20000)

    instances, _ = space.neighbours(start, "preprocess_instances", batch_size=1, concurrency=4, cores=1)
    batches, _ = space.neighbours(start, "preprocess_max_batch_size", batch_size=1, concurrency=4, cores=2)

    assert instances == [] and batches == [Candidate("onnxruntime", 64, 0, 100, 1, 1, 1, 1, 100)]
    assert "preprocess: 1 instance(s), max batch 64, delay 20000 µs" in start.describe()

    def measure(candidate: Candidate) -> Measurement:
        # Two instances decode twice as fast; a long queue delay costs p99, and so does queueing files
        # one at a time.
        return measured(candidate, 10.0 * candidate.preprocess_instances,
                        50.0 + candidate.preprocess_max_queue_delay_us / 100
                        + (300 if candidate.preprocess_max_batch_size == 1 else 0))

    walked, _, complete = quick_search(measured(start, 10.0, 250.0), space, measure=measure,
                                       searched=("onnxruntime",), budget_ms=100.0, max_candidates=64, batch_size=1,
                                       concurrency=4, cores=2)

    assert complete and set(PREPROCESS_SETTINGS).isdisjoint(SETTINGS)
    # Nothing of the classifier's to vary; then 2 instances, then max batch 1 (its delay the smallest; slower),
    # then the delay the space lists.
    assert [m.candidate for m in walked] == [
        Candidate("onnxruntime", 64, 0, 100, 1, 1, 2, 64, 20000), Candidate("onnxruntime", 64, 0, 100, 1, 1, 2, 1, 100),
        Candidate("onnxruntime", 64, 0, 100, 1, 1, 2, 64, 100),
    ]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"runtimes": ("onnxruntime", "tensorrt")}, r"unknown runtimes \['tensorrt'\]"),
        ({"threads": ()}, "at least one threads"),
        ({"instances": (0, 1)}, r"instances must be ≥ 1, got \[0, 1\]"),
        ({"max_queue_delays_us": (-5,)}, "max_queue_delays_us must be ≥ 0"),
        ({"preprocess_max_batch_sizes": (0,)}, r"preprocess_max_batch_sizes must be ≥ 1, got \[0\]"),
    ],
)
def test_a_bad_space_is_refused_in_one_line(space: dict, message: str) -> None:
    with pytest.raises(TuningError, match=message):
        SearchSpace(**space)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"p99_budget_ms": 0}, "p99 budget must be > 0"), ({"concurrency": 0}, "concurrency must be ≥ 1"),
     ({"min_agreement": 1.5}, "fraction from 0 to 1"), ({"measurement_seconds": 0}, "measurement window")],
)
def test_bad_options_are_refused_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(ResnetServeError, match=message):
        TuneOptions(**options)


def test_the_pareto_front_holds_exactly_the_undominated_points() -> None:
    points = [(100.0, 50.0), (120.0, 40.0), (90.0, 10.0), (120.0, 40.0), (200.0, 90.0), (150.0, 95.0), (80.0, 10.0)]

    front = pareto_front(points)

    # (100, 50) is beaten by (120, 40); (150, 95) by (200, 90); (80, 10) by (90, 10); equal points both stay.
    assert front == [4, 1, 3, 2]


def test_the_best_is_the_fastest_within_the_budget_and_rank_orders_the_misses_by_p99() -> None:
    points = [(100.0, 50.0), (120.0, 40.0), (90.0, 10.0), (200.0, 90.0)]

    assert best_within(points, None) == 3
    assert best_within(points, 60.0) == 1
    assert best_within(points, 40.0) == 1  # a p99 equal to the budget is within it
    assert best_within(points, 15.0) == 2
    assert best_within(points, 5.0) is None
    ordered = sorted(range(len(points)), key=lambda i: rank(points[i], 30.0))
    assert ordered == [2, 1, 0, 3]  # within first, then the misses by how far they miss


def measured(candidate: Candidate, throughput: float, p99: float) -> Measurement:
    row = ConcurrencyResult(concurrency=4, batch_size=1, requests=100, inferences_per_second=throughput,
                            requests_per_second=throughput, p50_ms=p99 / 2, p90_ms=p99, p95_ms=p99, p99_ms=p99,
                            mean_ms=p99 / 2, server_queue_us=0, server_compute_input_us=0,
                            server_compute_infer_us=0, server_compute_output_us=0)
    return Measurement("x", candidate, "measured", row)


def test_quick_mode_walks_one_setting_at_a_time_from_the_best_so_far() -> None:
    space = SearchSpace()
    start = measured(Candidate("onnxruntime", 64, 0, 100, 1, None), 10.0, 100.0)
    visited: list[Candidate] = []

    # At 40 images in flight OpenVINO's padding to 64 neither fills up nor is mostly padding, so
    # every setting has a neighbour to try.
    def measure(candidate: Candidate) -> Measurement:
        # A known landscape: INT8 is 3× faster, a second thread adds half, a second instance
        # 0.6, batching a tenth, and a long queue delay costs p99.
        visited.append(candidate)
        throughput = 10.0 * (3 if candidate.runtime == "openvino-int8" else 1)
        throughput *= 1 + 0.5 * ((candidate.threads or 1) - 1) + 0.6 * (candidate.instances - 1)
        throughput *= 1.1 if candidate.max_batch_size > 1 else 1.0
        return measured(candidate, throughput, 50.0 + candidate.max_queue_delay_us / 100)

    walked, pruned, complete = quick_search(start, space, measure=measure, searched=("onnxruntime", "openvino-int8"),
                                            budget_ms=60.0, max_candidates=64, batch_size=1, concurrency=40,
                                            cores=2)

    assert complete and [m.candidate for m in walked] == visited
    assert visited[0] == Candidate("openvino-int8", 64, 0, 100, 1, None)  # openvino is not searched
    best = min([start, *walked], key=lambda m: rank(m.point, 60.0))
    assert best.candidate == Candidate("openvino-int8", 64, 0, 100, 2, 1)
    assert pruned == {OVERSUBSCRIBED: 1}
    # Each setting is varied once from the best so far: 1 runtime, 3 (instances, threads) pairs,
    # max batch 1, one other delay, one preferred size.
    assert len(visited) == 1 + 3 + 1 + 1 + 1

    stopped, _, complete = quick_search(start, space, measure=measure, searched=("onnxruntime",),
                                        budget_ms=60.0, max_candidates=2, batch_size=1, concurrency=40, cores=2)
    assert len(stopped) == 2 and not complete


@pytest.fixture()
def repository(tmp_path: Path) -> Path:
    onnx_path = tmp_path / "tiny.onnx"
    export_tiny_classifier(onnx_path)
    for name, target in (("tiny", None), ("tiny-python", PYTHON_ONNXRUNTIME), ("bare", None)):
        write_entry(repository=tmp_path / "repo", name=name, model_file=onnx_path, class_names=CLASS_NAMES,
                          preprocessing=PREPROCESSING, **({"target": target} if target else {}))
    write_image_pipeline(repository=tmp_path / "repo", classifier="tiny")
    (tmp_path / "files").mkdir()
    Image.new("L", (40, 30), 128).save(tmp_path / "files" / "grey.png")
    (tmp_path / "not-images").mkdir()
    (tmp_path / "not-images" / "notes.txt").write_text("not an image")
    return tmp_path / "repo"



@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["tiny-python"], "model 'tiny-python' is served by python-onnxruntime; tune searches entries of the "
                          "onnxruntime and openvino targets"),
        (["missing"], "cannot read model 'missing'"),
        (["tiny", "--instances", "1", "--threads", "1", "--max-candidates", "3"],
         "the search space has 7 candidates after pruning, more than the 3 allowed"),
        (["tiny", "--runtimes", "onnxruntime,tensorrt"], "unknown runtimes ['tensorrt']"),
        (["tiny", "--p99-ms", "-1"], "the p99 budget must be > 0 ms"),
        (["tiny", "--batch-size", "100000"], "no configuration of the search space takes requests of 100000 images: "
                                             "the largest max_batch_size searched is 64"),
        (["tiny-image"], "'tiny-image' is a step of 'tiny''s image pipeline: `tune tiny --images DIR` searches the "
                         "classifier and the pipeline together"),
        (["tiny-preprocess", "--images", "{files}"], "'tiny-preprocess' is a step of 'tiny''s image pipeline"),
        (["bare", "--images", "{files}"], "model 'bare' has no image pipeline to send files to"),
        (["tiny", "--images", "{not-images}"], "notes.txt: not a readable image"),
        (["tiny", "--images", "{files}", "--batch-size", "2", "--preprocess-max-batch-sizes", "1"],
         "no configuration of the search space takes requests of 2 images: the largest max_batch_size searched is 1 "
         "(--preprocess-max-batch-sizes)"),
        (["tiny", "--images", "{files}", "--instances", "1", "--threads", "1", "--max-candidates", "3"],
         "the search space has 28 candidates after pruning, more than the 3 allowed"),
    ],
)
def test_tune_refuses_before_measuring_anything(repository: Path, arguments: list[str], message: str, tmp_path: Path) -> None:
    before = sorted(p.relative_to(repository) for p in repository.rglob("*"))

    arguments = [argument.format(files=tmp_path / "files", **{"not-images": tmp_path / "not-images"})
                 for argument in arguments]
    result = runner.invoke(app, ["tune", *arguments, "--repository", str(repository), "-o", str(tmp_path / "out")])

    assert result.exit_code == 1
    assert "Traceback" not in result.output and message in " ".join(result.output.split())
    assert sorted(p.relative_to(repository) for p in repository.rglob("*")) == before
    assert not (tmp_path / "out").exists()


def test_a_repository_it_cannot_write_into_is_refused_before_measuring(repository: Path, tmp_path: Path) -> None:
    # The writer's lock cannot be taken (the tests run as root, whom file modes do not stop).
    (repository / ".tiny.lock").mkdir()

    result = runner.invoke(app, ["tune", "tiny", "--repository", str(repository), "-o", str(tmp_path / "out")])

    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot write the tuned version into {repository} (Is a directory): measure with --no-write" in \
        " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_an_entry_without_an_fp32_version_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "tiny.onnx"
    export_tiny_classifier(source)
    int8 = quantize_int8(source, tmp_path / "int8.onnx", calibration_images=fashion_mnist(16), keep_ends_fp32=False)
    write_entry(repository=tmp_path / "repo", name="tiny", model_file=int8.path, class_names=CLASS_NAMES,
                      preprocessing=PREPROCESSING)

    with pytest.raises(TuningError, match=r"no version holding an FP32 ONNX file \(versions \[1\]\)"):
        tune_model_entry(repository=tmp_path / "repo", name="tiny")
