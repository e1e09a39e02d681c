"""The observability files: Prometheus's configuration and alert rules checked by the real promtool
(Debian's prometheus package), every PromQL expression of the dashboard, the alerts and the
autoscaler parsed by promtool too, and the Grafana dashboard's structure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from deploy_files import (
    ALERT_RULES,
    GRAFANA,
    PROMETHEUS_CONFIG,
    alert_rules,
    dashboard,
    promql_queries,
    run,
    triton_metric_names,
)


def promtool(*arguments: str | Path) -> tuple[int, str]:
    executable = shutil.which("promtool")
    if executable is None:
        pytest.fail("promtool is missing: `make system-packages` installs Debian's prometheus")
    done = run([executable, *arguments])
    return done.returncode, done.stdout + done.stderr


def recording_rules(queries: dict[str, str]) -> dict:
    """The expressions as recording rules: `promtool check rules` then parses each one."""
    return {"groups": [{"name": "queries", "rules": [
        {"record": f"query_{number}", "expr": expr} for number, expr in enumerate(queries.values())
    ]}]}


def test_promtool_accepts_the_configuration_and_its_rule_file():
    code, output = promtool("check", "config", PROMETHEUS_CONFIG)
    assert code == 0, output
    assert "1 rule files found" in output


def test_promtool_rejects_a_broken_configuration(tmp_path: Path):
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_CONFIG.read_text().replace("scrape_interval: 15s", "scrape_interval: fast"))
    shutil.copy(ALERT_RULES, tmp_path)
    code, output = promtool("check", "config", broken)
    assert code != 0 and "fast" in output


def test_promtool_accepts_the_alert_rules():
    code, output = promtool("check", "rules", ALERT_RULES)
    assert code == 0, output
    assert f"{len(alert_rules())} rules found" in output


def test_promtool_rejects_broken_rules(tmp_path: Path):
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERT_RULES.read_text().replace("sum by (model) (rate(nv_inference_request_failure[5m]))",
                                                      "sum by (model) (rate(nv_inference_request_failure))", 1))
    code, output = promtool("check", "rules", broken)
    assert code != 0 and "range vector" in output


def test_every_query_of_dashboard_alerts_and_autoscaler_parses(tmp_path: Path):
    queries = promql_queries()
    assert {source.split()[0] for source in queries} == {"dashboard", "alert", "adapter"}
    rules = tmp_path / "queries.yml"
    rules.write_text(yaml.safe_dump(recording_rules(queries)))
    code, output = promtool("check", "rules", rules)
    assert code == 0, output
    assert f"{len(queries)} rules found" in output


def test_alerts_cover_failure_rate_and_queue_time():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert {"nv_inference_request_failure", "nv_inference_request_success"} <= triton_metric_names(
        rules["TritonInferenceFailureRate"]["expr"])
    assert "nv_inference_queue_duration_us" in triton_metric_names(rules["TritonQueueTimeHigh"]["expr"])
    for rule in rules.values():
        assert rule["for"] and rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


def test_dashboard_is_a_grafana_dashboard_on_the_provisioned_datasource():
    board = dashboard()
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert panel["type"] == "timeseries" and panel["title"] and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        assert panel["datasource"]["uid"] == datasource["uid"] and panel["datasource"]["type"] == datasource["type"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids)
        assert all(t["expr"] and t["datasource"] == panel["datasource"] for t in panel["targets"])


def test_dashboard_shows_throughput_latency_quantiles_queue_failures_and_gpu():
    expressions = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    metrics = set().union(*map(triton_metric_names, expressions))
    assert {"nv_inference_count", "nv_inference_queue_duration_us", "nv_inference_request_failure",
            "nv_gpu_utilization"} <= metrics
    for quantile in ("0.5", "0.99"):
        assert any(f'nv_inference_request_summary_us{{quantile="{quantile}"}}' in e for e in expressions)
