"""deploy/Dockerfile, checked by hadolint (no Docker engine here to build it), and the one pinned
Triton release that the Dockerfile, compose, Kubernetes and KServe all run."""

from pathlib import Path

from deploy_files import (
    DOCKERFILE,
    HADOLINT,
    K8S,
    KSERVE,
    OVERLAYS,
    kustomize,
    only,
    render_compose,
    run,
    triton_container,
)

from resnet_serve.official_image import TRITON_CONTAINER_TAG


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile without line continuations, which ours has none of."""
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    pairs = [tuple(line.split(maxsplit=1)) for line in lines if line and not line.startswith("#")]
    return [(instruction.upper(), arguments) for instruction, arguments in pairs]


def test_hadolint_passes_the_dockerfile():
    done = run([HADOLINT, "--failure-threshold", "info", DOCKERFILE])
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_rejects_a_broken_dockerfile(tmp_path: Path):
    broken = tmp_path / "Dockerfile"
    # An unpinned pip install, and a final user that is root again.
    broken.write_text(DOCKERFILE.read_text().replace("pillow==12.0.0", "pillow") + "USER root\n")
    done = run([HADOLINT, "--failure-threshold", "info", broken])
    assert done.returncode != 0
    assert "DL3013" in done.stdout and "DL3002" in done.stdout


def test_the_image_is_the_official_triton_plus_pillow_run_as_triton_server():
    steps = instructions(DOCKERFILE)
    assert steps[0] == ("ARG", f"TRITON_CONTAINER_TAG={TRITON_CONTAINER_TAG}")
    assert steps[1] == ("FROM", "nvcr.io/nvidia/tritonserver:${TRITON_CONTAINER_TAG}")
    assert [s for s in steps if s[0] == "RUN"] == [("RUN", "pip3 install --no-cache-dir pillow==12.0.0")]
    # uid:gid 1000 is triton-server in the official image (its build.py checks the numbers).
    assert steps[-1] == ("USER", "1000:1000")


def test_every_deploy_file_runs_the_pinned_triton_release():
    image = f"resnet-serve-triton:{TRITON_CONTAINER_TAG}"
    compose = render_compose(profiles=("gpu", "cpu"), environment={"TRITON_ADMIN_KEY": "x"})["services"]
    for service in ("triton", "triton-cpu"):
        assert compose[service]["image"] == image
        assert compose[service]["build"]["args"] == {"TRITON_CONTAINER_TAG": TRITON_CONTAINER_TAG}
    for overlay in OVERLAYS:
        assert triton_container(kustomize(K8S / "overlays" / overlay))["image"] == image
    for folder in KSERVE:
        assert only(kustomize(folder), "InferenceService")["spec"]["predictor"]["model"]["image"] == image
