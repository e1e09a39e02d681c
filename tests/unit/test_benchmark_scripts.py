"""The scripts under benchmarks/ are run by hand, rarely: each must still import what it uses."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script", sorted(BENCHMARKS.glob("*.py")), ids=lambda path: path.name)
def test_each_benchmark_script_imports_what_it_uses(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As `python benchmarks/x.py` does: the script's folder first on the path, so sibling
    # scripts import; the run name keeps `main()` from running.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    namespace = runpy.run_path(str(script), run_name="benchmark_import_check")
    assert callable(namespace["main"])
