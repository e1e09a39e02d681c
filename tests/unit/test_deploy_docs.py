"""The docs' Deploy page matches the files: the paths, profiles and kustomizations its commands
name exist, and its sizing follows from the committed benchmark."""

import json
import math
import re

import yaml
from deploy_files import COMPOSE_FILE, ROOT

PAGE = ROOT / "docs" / "deploy.md"
BENCHMARK = ROOT / "benchmarks" / "results" / "demo-summary-2core-cpu.json"
TARGET_RATE = 5000
HEADROOM = 0.7


def test_every_deploy_path_the_page_names_exists():
    paths = set(re.findall(r"\bdeploy/[\w./-]*\w", PAGE.read_text()))
    assert "deploy/docker-compose.yml" in paths
    assert not [p for p in paths if not (ROOT / p).exists()]


def test_the_page_uses_the_compose_files_profiles():
    profiles = {p for s in yaml.safe_load(COMPOSE_FILE.read_text())["services"].values() for p in s.get("profiles", [])}
    assert set(re.findall(r"--profile (\w+)", PAGE.read_text())) == profiles == {"gpu", "cpu", "observability"}


def test_every_kustomization_the_page_applies_exists():
    targets = re.findall(r"kubectl (?:apply -k|kustomize) (\S+)", PAGE.read_text())
    assert len(targets) >= 4
    assert all((ROOT / t / "kustomization.yaml").is_file() for t in targets)


def test_sizing_follows_from_the_committed_benchmark():
    section = PAGE.read_text()
    results = json.loads(BENCHMARK.read_text())["benchmark"]["results"]
    for result in results:
        row = (f"| {result['concurrency']} | {result['requests_per_second']:.0f} requests/s | "
               f"{result['p50_ms']:.2f} ms | {result['p99_ms']:.2f} ms |")
        assert row in section
    for budget_ms in (5, 10):
        fitting = [r for r in results if r["p99_ms"] <= budget_ms]
        best = max(fitting, key=lambda r: r["concurrency"])
        replicas = math.ceil(TARGET_RATE / (best["requests_per_second"] * HEADROOM))
        assert f"p99 budget {budget_ms} ms" in section and f"**{replicas} replicas**" in section
