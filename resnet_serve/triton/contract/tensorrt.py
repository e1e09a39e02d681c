"""What Triton's tensorrt backend refuses (triton-inference-server/tensorrt_backend, read at
r24.10 and r26.07). The engine itself (its TensorRT version, its GPU) is `repo check`'s own
check against the image's facts, not a config rule."""

from __future__ import annotations

from collections.abc import Iterator

from tritonclient.grpc import model_config_pb2

from resnet_serve.triton.contract.facts import EntryFacts
from resnet_serve.triton.contract.rules import Rule, Source
from resnet_serve.triton.entry_files import file_problem

__all__ = ["TENSORRT_RULES"]

_REPO = "tensorrt_backend"
_TENSORRT = frozenset({"tensorrt"})


def _instance_kind(facts: EntryFacts) -> Iterator[str]:
    for host in facts.hosts():
        if any(kind != "KIND_GPU" for kind in facts.instance_kinds(host)):
            where = "on a host without a GPU, where KIND_AUTO is KIND_CPU" if host == "cpu" else "on any host"
            yield f"unable to load model '{facts.name}', TensorRT backend supports only GPU device ({where})"
            return


def _model_file(facts: EntryFacts) -> Iterator[str]:
    for version in facts.versions:
        path = facts.version_path(version) / facts.model_filename
        if not path.exists():
            yield f"version {version}: unable to find '{path}'"
        elif problem := file_problem(path):
            yield f"version {version}: {problem}"


def _data_types(facts: EntryFacts) -> Iterator[str]:
    for kind, tensors in (("input", facts.config.input), ("output", facts.config.output)):
        for tensor in tensors:
            if tensor.data_type == model_config_pb2.DataType.TYPE_STRING:
                yield f"unsupported datatype TYPE_STRING for {kind} '{tensor.name}' for model '{facts.name}'"


TENSORRT_RULES: tuple[Rule, ...] = (
    Rule("tensorrt.instance-kind", "tensorrt", "load",
         "Instances run on a GPU only (KIND_GPU, or KIND_AUTO on a GPU host).",
         "unable to load model '<name>', TensorRT backend supports only GPU device",
         (Source(_REPO, "src/instance_state.cc", "218-224", checked="r26.07 (263-268)"),), _instance_kind, _TENSORRT),
    Rule("tensorrt.model-file", "tensorrt", "load",
         "Each loaded version holds `default_model_filename` (model.plan).",
         "unable to find '<path>'",
         (Source(_REPO, "src/instance_state.cc", "140-152"),), _model_file, _TENSORRT),
    Rule("tensorrt.data-types", "tensorrt", "load",
         "No TYPE_STRING tensors: TensorRT has no such type.",
         "unsupported datatype TYPE_STRING for input '<tensor>' for model '<name>'",
         (Source(_REPO, "src/instance_state.cc", "1866-1874"),), _data_types, _TENSORRT),
)
