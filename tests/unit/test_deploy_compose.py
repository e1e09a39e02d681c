"""The compose file is checked against the Compose specification: no Docker engine runs here."""

from pathlib import Path

import compose_spec
import pytest
import yaml

from resnet_serve.triton import TRITON_CONTAINER_TAG

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_file_satisfies_the_compose_specification():
    compose_spec.PyCompose.from_yaml(COMPOSE_FILE.read_text()).validate()


def test_the_validator_rejects_what_the_specification_forbids():
    with pytest.raises(ValueError):
        compose_spec.PyCompose.from_yaml("services:\n  t:\n    image: x\n    ports: [{published: 1}]\n")
    with pytest.raises(ValueError):
        compose_spec.PyCompose.from_yaml("services:\n  t:\n    image: x\n    healthchek: {}\n")


def test_triton_service_runs_the_pinned_official_image_on_our_repository(compose):
    triton = compose["services"]["triton"]
    assert triton["image"] == f"nvcr.io/nvidia/tritonserver:{TRITON_CONTAINER_TAG}"
    assert "--model-repository=/models" in triton["command"]
    (volume,) = triton["volumes"]
    assert (COMPOSE_FILE.parent / volume["source"]).resolve() == COMPOSE_FILE.parents[1] / "model_repository"
    assert volume["target"] == "/models"


def test_triton_service_publishes_http_grpc_metrics_and_reserves_one_gpu(compose):
    triton = compose["services"]["triton"]
    assert sorted(triton["ports"]) == ["8000:8000", "8001:8001", "8002:8002"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == 1 and "gpu" in device["capabilities"]


def test_healthcheck_asks_triton_readiness(compose):
    test = compose["services"]["triton"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[-1] == "http://localhost:8000/v2/health/ready"
