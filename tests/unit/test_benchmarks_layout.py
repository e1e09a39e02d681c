"""benchmarks/ without running a benchmark: every script is plain (no import-path edits) and
documented with its results, and the harness writes what every results file records."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from resnet_serve.errors import MissingDependencyError
from resnet_serve.machine import CPU_FLAGS, cpu_flags, describe_machine
from resnet_serve.samples import photo_crops

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
README = BENCHMARKS / "README.md"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


@functools.cache
def load_harness() -> ModuleType:
    """benchmarks/_harness.py from its file: the scripts import it as their sibling."""
    spec = importlib.util.spec_from_file_location("benchmarks_harness", BENCHMARKS / "_harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclass looks its module up while the class is made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def touches_sys_path(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            return True
        if isinstance(node, ast.ImportFrom) and node.module in ("sys", "site") and \
                any(alias.name in ("path", "addsitedir") for alias in node.names):
            return True
    return False


def results_named_in_readme() -> list[str]:
    """The backticked names in every README table column headed "results in `results/`"."""
    names: list[str] = []
    column = None
    for line in README.read_text().splitlines():
        if not line.startswith("|"):
            column = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if column is None:
            column = next((i for i, cell in enumerate(cells) if cell.startswith("results in")), -1)
        elif column >= 0 and not re.fullmatch(r"[-:| ]+", line):
            names += re.findall(r"`([^`]+)`", cells[column])
    return names


def test_there_are_scripts_and_a_readme():
    assert len(SCRIPTS) > 10 and README.is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_each_script_parses_and_leaves_the_import_path_alone(script: Path):
    text = script.read_text()
    assert not touches_sys_path(ast.parse(text, filename=str(script)))
    assert "E402" not in text  # imports at the top need no exemption


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_each_script_is_in_the_readme(script: Path):
    assert f"`{script.name}`" in README.read_text()


def test_every_results_file_the_readme_names_exists():
    names = results_named_in_readme()
    assert "runtimes-2core-cpu.json" in names and "degradation/" in names
    missing = [name for name in names if not (BENCHMARKS / "results" / name).exists()]
    assert not missing


def test_every_committed_result_is_in_the_readme():
    named = {name.rstrip("/") for name in results_named_in_readme()}
    assert not [path.name for path in (BENCHMARKS / "results").iterdir() if path.name not in named]


def test_write_results_writes_json_and_markdown_with_the_machine(tmp_path: Path):
    harness = load_harness()
    load = harness.Load()
    load.stop()
    report = {"value": 1.5, "what": "a test", "file": tmp_path / "model.onnx"}
    record = harness.write_results(
        tmp_path / "out" / "run", report, load=load, markdown=lambda r: f"# {r['what']}\n\n{r['machine']['description']}\n"
    )
    written = json.loads((tmp_path / "out" / "run.json").read_text())
    assert written == json.loads(json.dumps(record, default=str))
    assert list(written)[:2] == ["what", "machine"]  # the machine right after what the file is
    machine = written["machine"]
    assert machine["description"] == describe_machine() and machine["cpu_flags"] == list(cpu_flags())
    assert machine["cpus"] >= machine["usable_cpus"] >= 1
    assert [len(machine["load_average"][key]) for key in ("before", "after")] == [3, 3]
    assert written["file"] == str(tmp_path / "model.onnx")
    assert (tmp_path / "out" / "run.md").read_text() == f"# a test\n\n{describe_machine()}\n"
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["run.json", "run.md"]


def test_write_results_leaves_the_old_files_when_the_markdown_fails(tmp_path: Path):
    harness = load_harness()
    (tmp_path / "run.md").write_text("old table\n")

    def broken(record: dict) -> str:
        raise KeyError("a key the table needs")

    with pytest.raises(KeyError):
        harness.write_results(tmp_path / "run", {"value": 1}, load=harness.Load(), markdown=broken)
    assert (tmp_path / "run.md").read_text() == "old table\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.json", "run.md"]  # no temporary left


def test_write_results_refuses_a_report_with_its_own_machine(tmp_path: Path):
    harness = load_harness()
    with pytest.raises(ValueError, match="machine"):
        harness.write_results(tmp_path / "run", {"machine": "mine"}, load=harness.Load())
    assert not list(tmp_path.iterdir())


def test_the_machine_names_the_flags_present_in_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    described = describe_machine().split("flags: ", 1)[1].split()
    for flag in CPU_FLAGS:
        assert (flag in described) == (flag in flags), flag
    assert cpu_flags() == tuple(flag for flag in CPU_FLAGS if flag in flags)


def test_photo_crops_without_scikit_image_is_one_of_our_errors(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(MissingDependencyError, match="scikit-image"):
        photo_crops(1, size=32)
