"""Classify image files on a running server, prepared exactly as the served model says."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from resnet_serve.client.connection import ConnectionOptions, Protocol
from resnet_serve.client.inference import InferenceClient, ModelStatistics, Prediction, rank_classes
from resnet_serve.errors import ClientError, ImageError, first_line


@dataclass(frozen=True)
class ImageClassification:
    path: str
    predictions: list[Prediction]


@dataclass(frozen=True)
class ClassificationResult:
    """Each file's top classes: ranked here from the served logits (``classify_files``) or by
    the server's classification extension (``classify_files_server_side``)."""

    model: str
    protocol: str
    url: str
    images: list[ImageClassification] | list[ServerSideClassification]

    def to_dict(self) -> dict:
        return asdict(self)


def classify_files(
    *,
    paths: Sequence[Path],
    model: str | None = None,
    protocol: Protocol = "http",
    url: str | None = None,
    top_k: int = 3,
    connection: ConnectionOptions | None = None,
) -> ClassificationResult:
    """Top-k classes of each image, with softmax probabilities over the served logits.

    Every file is read and checked before the first request, so one bad file costs no traffic.
    """
    if top_k < 1:
        raise ClientError(f"--top-k must be at least 1, got {top_k}")
    with InferenceClient(model=model, protocol=protocol, url=url, connection=connection) as client:
        served = client.model
        batch = np.stack([served.preprocessing.load_image(path) for path in paths])
        limit = served.max_batch_size or len(batch)
        logits = np.concatenate(
            [client.infer(batch[i : i + limit]) for i in range(0, len(batch), limit)]
        )
        ranked = rank_classes(logits, served.class_names, k=min(top_k, served.num_classes))
        return ClassificationResult(
            model=served.name,
            protocol=client.protocol,
            url=client.url,
            images=[ImageClassification(str(p), r) for p, r in zip(paths, ranked, strict=True)],
        )



@dataclass(frozen=True)
class EncodedImageModel:
    """A served model that takes encoded image files: one BYTES input, one labelled output of
    ``num_classes`` scores; ``steps`` are its composing models where it is an ensemble."""

    name: str
    input_name: str
    output_name: str
    max_batch_size: int
    num_classes: int
    steps: tuple[str, ...] = ()


class EncodedImageClient(InferenceClient):
    """A connection to an image ensemble (BYTES in, labelled top-k out) on one Triton server.

    ``model`` names the ensemble, or the classifier it wraps (then `<model>-image` is used).
    Its `model` is an `EncodedImageModel`. Not thread-safe, like its base.
    """

    def _only_model(self) -> str:
        takes_images = [name for name in self.ready_models() if self._classifies_images(name)]
        if len(takes_images) != 1:
            raise ClientError(
                f"name the model to use (--model): the server at {self.endpoint} has {len(takes_images)} "
                f"ready models that classify encoded images{': ' + ', '.join(takes_images) if takes_images else ''}"
            )
        return takes_images[0]

    def _config(self, name: str) -> dict:
        config = self._json(self._client.get_model_config, name)
        return config.get("config", config)  # gRPC wraps it, HTTP does not

    def _classifies_images(self, name: str) -> bool:
        """One BYTES input (encoded files) and one labelled output (the classification extension)."""
        config = self._config(name)
        inputs, outputs = config.get("input", []), config.get("output", [])
        return (len(inputs) == 1 and inputs[0].get("data_type") == "TYPE_STRING"
                and len(outputs) == 1 and bool(outputs[0].get("label_filename")))

    def _is_ready(self, name: str) -> bool:
        try:
            return bool(self._client.is_model_ready(name))
        except Exception:  # tritonclient raises for unknown names as for broken connections
            return False

    def _describe(self, name: str) -> EncodedImageModel:
        # Asked one model at a time: the list of models is restricted where the server has an admin key.
        if self._is_ready(name) and not self._classifies_images(name) and self._is_ready(f"{name}-image"):
            name = f"{name}-image"
        if not self._is_ready(name):
            raise ClientError(f"model {name!r} is not ready on {self.endpoint}{self._ready_models_note()}")
        if not self._classifies_images(name):
            raise ClientError(
                f"model {name!r} does not take encoded images: expected one BYTES input and one labelled output"
            )
        config = self._config(name)
        output = config["output"][0]
        return EncodedImageModel(
            name=name, input_name=config["input"][0]["name"], output_name=output["name"],
            max_batch_size=int(config.get("max_batch_size", 0)),
            num_classes=int(next(iter(output.get("dims", [])), 0)),
            steps=tuple(step["model_name"] for step in config.get("ensemble_scheduling", {}).get("step", [])),
        )

    def statistics(self) -> ModelStatistics:
        """The model's statistics, and for an ensemble its steps' (where Triton times its work)."""
        return replace(super().statistics(), steps=tuple((name, self.statistics_of(name)) for name in self.model.steps))

    def classify(self, encoded: Sequence[bytes], *, top_k: int) -> list[list[bytes]]:
        """`score:index:label` strings of the top-k classes of each encoded file."""
        batch = np.array(list(encoded), dtype=np.object_).reshape(len(encoded), 1)
        request = self._tc.InferInput(self.model.input_name, list(batch.shape), "BYTES")
        request.set_data_from_numpy(batch)
        output = self._tc.InferRequestedOutput(self.model.output_name, class_count=top_k)
        try:
            result = self._client.infer(self.model.name, [request], outputs=[output])
        except Exception as exc:
            raise ClientError(f"inference on {self.model.name!r} failed: {first_line(exc)}") from None
        answer = result.as_numpy(self.model.output_name)
        if answer is None or answer.shape[0] != len(encoded):
            raise ClientError(f"model {self.model.name!r} answered {None if answer is None else list(answer.shape)}")
        return [list(row) for row in answer.reshape(len(encoded), -1)]


@dataclass(frozen=True)
class LabelledScore:
    """One of the top-k classes as Triton's classification extension reports it: the model's
    output value (a logit), the class index and its label."""

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class ServerSideClassification:
    path: str
    top: list[LabelledScore]


def _parse_labelled(entry: bytes | str, shown: str) -> LabelledScore:
    # "score:index:label"; the label itself may contain colons.
    text = entry.decode("utf-8") if isinstance(entry, bytes) else entry
    try:
        score, index, label = text.split(":", 2)
        return LabelledScore(index=int(index), label=label, score=float(score))
    except ValueError:
        raise ClientError(f"{shown}: the server answered {text!r}, not score:index:label") from None


def classify_files_server_side(
    *,
    paths: Sequence[Path],
    model: str | None = None,
    protocol: Protocol = "http",
    url: str | None = None,
    top_k: int = 3,
    connection: ConnectionOptions | None = None,
) -> ClassificationResult:
    """Top-k labels of each image file, prepared on the server: the files' bytes go to an image
    ensemble (`<model>-image`, written beside every exported classifier), which decodes them
    with the model's own preprocessing and answers through the classification extension.

    ``model`` names the ensemble or its classifier; without it, the server's only ready model
    that takes encoded images (a BYTES input) is used. Nothing is decoded here.
    """
    if top_k < 1:
        raise ClientError(f"--top-k must be at least 1, got {top_k}")
    encoded = []
    for path in paths:
        try:
            encoded.append(Path(path).read_bytes())
        except OSError as error:
            raise ImageError(f"{path}: cannot read ({error.strerror or error})") from None
    with EncodedImageClient(model=model, protocol=protocol, url=url, connection=connection) as client:
        limit = client.model.max_batch_size or len(encoded)
        rows = []
        for start in range(0, len(encoded), limit):
            rows.extend(client.classify(encoded[start : start + limit], top_k=top_k))
        return ClassificationResult(
            model=client.model.name,
            protocol=protocol,
            url=client.url,
            images=[
                ServerSideClassification(str(path), [_parse_labelled(item, str(path)) for item in row])
                for path, row in zip(paths, rows, strict=True)
            ],
        )
