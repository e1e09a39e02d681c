"""What every benchmark script shares: where results go, the machine a run measured on, and
writing its results.

A figure measured on a shared 2-core machine means little without the CPU (its vector
extensions decide the kernels) and how busy the machine was, so every results file records
both, in one place and one shape: its "machine" entry (see ``machine``).

The scripts run as ``python benchmarks/<script>.py``, which puts this folder first on the
import path: they ``import _harness`` as they import each other. Run on its own, it prints the
machine entry a results file would record here.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_serve.files import replacing_atomically
from resnet_serve.machine import cpu_flags, cpu_model, describe_machine

__all__ = ["RESULTS", "ROOT", "Load", "group_memory_kib", "machine", "write_results"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

LoadAverage = tuple[float, float, float]


def _load_average() -> LoadAverage:
    return os.getloadavg()


@dataclass
class Load:
    """The 1, 5 and 15 minute load averages when a run began (this object's creation) and when
    it ended (``stop``, or when its results are written): a neighbour's load on a shared machine
    slows every timing, so a result says how busy the machine was."""

    before: LoadAverage = field(default_factory=_load_average)
    after: LoadAverage | None = None

    def stop(self) -> None:
        """The run has ended: what comes after (shutting a server down, writing) is not its load."""
        self.after = _load_average()

    def to_dict(self) -> dict[str, list[float]]:
        after = self.after if self.after is not None else _load_average()
        return {"before": [round(v, 2) for v in self.before], "after": [round(v, 2) for v in after]}


def machine(load: Load | None = None) -> dict[str, Any]:
    """The machine entry of a results file: the one-line description `bench` and `tune` record,
    the CPU model, its core counts, the CPU flags that matter for a ResNet, Python's version and
    the load average: the run's before and after with ``load``, else now (1, 5, 15 min)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "description": describe_machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        # Fewer than ``cpus`` under taskset or a container's CPU set: what the run could use.
        "usable_cpus": usable,
        "cpu_flags": list(cpu_flags()),
        "python": platform.python_version(),
        "load_average": load.to_dict() if load is not None else [round(v, 2) for v in _load_average()],
    }


def group_memory_kib(group: int) -> dict[str, int]:
    """The summed resident memory (VmRSS) and proportional set size (Pss: shared pages divided
    among the processes sharing them, so forked workers' copy-on-write pages count once) of every
    live process in process ``group``, in KiB."""
    total = {"rss": 0, "pss": 0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) != group or fields[0] == "Z":
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (OSError, ValueError):
            continue
        total["rss"] += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        total["pss"] += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return total


def write_results(
    path: Path,
    report: dict[str, Any],
    *,
    load: Load,
    markdown: Callable[[dict[str, Any]], str] | None = None,
) -> dict[str, Any]:
    """Write ``report`` with its machine entry as ``path``.json, and ``markdown`` of it as
    ``path``.md when given; return what was written (``report`` and its "machine").

    ``path`` names the results without a suffix (one given is replaced). Each file appears whole
    or not at all, so an interrupted run never leaves half a result over a good one.
    """
    if "machine" in report:
        raise ValueError("the report has its own 'machine' entry; write_results records it")
    # After what the file is and when it ran, where existing results have it.
    head = {key: report[key] for key in ("what", "date") if key in report}
    record = {**head, "machine": machine(load), **report}
    # Non-JSON values (paths, enums) are written as their text rather than failing the run at its end.
    text = json.dumps(record, indent=2, default=str) + "\n"
    path = Path(path)
    with replacing_atomically(path.with_suffix(".json")) as temporary:
        temporary.write_text(text)
    if markdown is not None:
        with replacing_atomically(path.with_suffix(".md")) as temporary:
            temporary.write_text(markdown(record))
    return record


def main() -> None:
    print(json.dumps(machine(), indent=2))


if __name__ == "__main__":
    main()
