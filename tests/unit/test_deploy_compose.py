"""deploy/docker-compose.yml as Docker Compose itself reads it (no Docker engine runs here):
`docker compose config` checks the file against the Compose specification, interpolates the
variables and resolves the profiles."""

from pathlib import Path

import pytest
import yaml
from deploy_files import (
    COMPOSE_FILE,
    DEPLOY,
    GRAFANA,
    PROMETHEUS_CONFIG,
    loaded_models,
    option,
    render_compose,
    restricted_api_arguments,
    tritonserver_arguments,
)

KEY = "compose-test-key"


@pytest.fixture(scope="module")
def gpu() -> dict:
    return render_compose(environment={"TRITON_ADMIN_KEY": KEY})


@pytest.fixture(scope="module")
def cpu_with_observability() -> dict:
    return render_compose(profiles=("cpu", "observability"), environment={"TRITON_ADMIN_KEY": KEY})


def test_docker_compose_rejects_a_file_the_specification_forbids(tmp_path: Path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("healthcheck:", "healthchek:"))
    with pytest.raises(ValueError, match="healthchek"):
        render_compose(environment={"TRITON_ADMIN_KEY": KEY}, file=broken)


def test_the_admin_key_must_come_from_the_environment():
    with pytest.raises(ValueError, match="TRITON_ADMIN_KEY"):
        render_compose(environment={})
    assert KEY not in COMPOSE_FILE.read_text()


def test_gpu_is_the_default_and_cpu_a_profile(gpu: dict, cpu_with_observability: dict):
    (device,) = gpu["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert list(gpu["services"]) == ["triton"]
    assert device["count"] == 1 and device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert sorted(cpu_with_observability["services"]) == ["grafana", "prometheus", "triton-cpu"]
    cpu = cpu_with_observability["services"]["triton-cpu"]
    assert "deploy" not in cpu
    cpu_without_profile = {k: v for k, v in cpu.items() if k not in ("profiles", "networks")}
    gpu_without_profile = {k: v for k, v in gpu["services"]["triton"].items() if k not in ("profiles", "networks", "deploy")}
    assert cpu_without_profile == gpu_without_profile


def test_triton_runs_the_extended_image_read_only_as_non_root(gpu: dict):
    triton = gpu["services"]["triton"]
    assert Path(triton["build"]["context"]) == DEPLOY and triton["build"]["dockerfile"] == "Dockerfile"
    assert triton["user"] == "1000:1000" and triton["read_only"] is True
    assert triton["cap_drop"] == ["ALL"] and "no-new-privileges:true" in triton["security_opt"]
    (repository,) = triton["volumes"]
    assert repository["read_only"] is True and repository["target"] == "/models"
    assert Path(repository["source"]) == DEPLOY.parent / "model_repository"
    assert option(triton["command"], "--model-repository") == "/models"


def exported(repository: Path, name: str, *, image_pipeline: bool) -> Path:
    """The entry folders an export writes, as far as the entrypoint looks (their config.pbtxt)."""
    for entry in (name, *((f"{name}-preprocess", f"{name}-image") if image_pipeline else ())):
        (repository / entry).mkdir(parents=True)
        (repository / entry / "config.pbtxt").write_text(f'name: "{entry}"\n')
    return repository


@pytest.mark.parametrize("image_pipeline", [True, False], ids=["exported", "no-image-pipeline"])
def test_only_the_named_model_and_its_exported_image_pipeline_load(tmp_path: Path, image_pipeline: bool):
    service = render_compose(environment={"TRITON_ADMIN_KEY": KEY, "TRITON_MODEL": "resnet50-imagenet"})[
        "services"]["triton"]
    repository = exported(tmp_path, "resnet50-imagenet", image_pipeline=image_pipeline)

    arguments = tritonserver_arguments(service["command"], service["environment"], repository=repository)

    assert option(arguments, "--model-control-mode") == "explicit"
    pipeline = ["resnet50-imagenet-preprocess", "resnet50-imagenet-image"] if image_pipeline else []
    assert loaded_models(arguments) == ["resnet50-imagenet", *pipeline]
    # A repository the entrypoint cannot look into (object storage) is told by TRITON_IMAGE_PIPELINE.
    remote = [a if not a.startswith("--model-repository=") else "--model-repository=s3://bucket/models"
              for a in service["command"]]
    assert loaded_models(tritonserver_arguments(remote, service["environment"]))[1:] == [
        "resnet50-imagenet-preprocess", "resnet50-imagenet-image"]
    assert loaded_models(tritonserver_arguments(remote, {**service["environment"], "TRITON_IMAGE_PIPELINE": "no"})) \
        == ["resnet50-imagenet"]


def test_the_entrypoint_refuses_a_model_list_it_cannot_make():
    command = ["resnet-serve-triton", "--model-repository=/models"]
    with pytest.raises(ValueError, match="set TRITON_MODEL"):
        tritonserver_arguments(command, {})
    with pytest.raises(ValueError, match="TRITON_IMAGE_PIPELINE must be auto, yes or no, not 'maybe'"):
        tritonserver_arguments(command, {"TRITON_MODEL": "m", "TRITON_IMAGE_PIPELINE": "maybe"})


def test_admin_apis_answer_only_with_the_key_header(gpu: dict):
    command = gpu["services"]["triton"]["command"]
    assert set(restricted_api_arguments(KEY)) <= set(command)


def test_healthcheck_asks_triton_readiness(gpu: dict):
    test = gpu["services"]["triton"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[-1] == "http://localhost:8000/v2/health/ready"


def test_prometheus_scrapes_triton_under_either_profile(gpu: dict, cpu_with_observability: dict):
    (job,) = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    cpu = cpu_with_observability["services"]["triton-cpu"]
    assert host == "triton" and host in cpu["networks"]["default"]["aliases"]
    assert f"{port}:{port}" in [f"{p['published']}:{p['target']}" for p in gpu["services"]["triton"]["ports"]]


def test_prometheus_and_grafana_get_their_configuration_read_only(cpu_with_observability: dict):
    services = cpu_with_observability["services"]
    mounts = {(Path(v["source"]), v["target"]) for s in ("prometheus", "grafana") for v in services[s]["volumes"]
              if v["type"] == "bind"}
    assert mounts == {
        (PROMETHEUS_CONFIG.parent, "/etc/prometheus"),
        (GRAFANA / "provisioning", "/etc/grafana/provisioning"),
        (GRAFANA / "dashboards", "/var/lib/grafana/dashboards"),
    }
    assert all(v["read_only"] for s in ("prometheus", "grafana") for v in services[s]["volumes"] if v["type"] == "bind")
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "resnet-serve.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
