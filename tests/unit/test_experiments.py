"""The paper's experiments at a tiny size: real Fashion-MNIST, real nets, every output file."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from resnet_serve.checkpoints import read_checkpoint_meta
from resnet_serve.errors import UnknownArchitectureError
from resnet_serve.experiments import run_degradation, run_gradients
from resnet_serve.progress import SilentReporter

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread():
    # Two intra-op threads on two shared cores stall waiting for each other; one is steadier.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_degradation_trains_plain_and_residual_twins_and_plots_them(tmp_path: Path) -> None:
    result = run_degradation(depths=(20, 32), epochs=2, limit=128, test_limit=50, flip=False, output_dir=tmp_path,
                             reporter=SilentReporter())

    assert [(run.architecture, run.depth, run.residual) for run in result.runs] == [
        ("plain20", 20, False), ("resnet20", 20, True), ("plain32", 32, False), ("resnet32", 32, True)
    ]
    for run in result.runs:
        assert len(run.train_error) == len(run.test_error) == 2
        assert all(0.0 <= error <= 1.0 for error in run.train_error + run.test_error)
        # flip is changed, pad stays the CIFAR recipe's.
        assert {key: read_checkpoint_meta(run.checkpoint).training[key] for key in ("flip", "pad")} == {
            "flip": False, "pad": 4
        }
    assert (result.train_images, result.test_images) == (128, 50)

    rows = list(csv.DictReader(result.csv.open()))
    assert list(rows[0]) == ["architecture", "depth", "residual", "epoch", "train_error", "test_error"]
    assert len(rows) == 4 * 2
    assert [(row["architecture"], row["epoch"]) for row in rows[:2]] == [("plain20", "1"), ("plain20", "2")]
    assert float(rows[-1]["test_error"]) == pytest.approx(result.runs[-1].test_error[-1])
    assert result.plot.read_bytes()[:8] == PNG_MAGIC


def test_a_depth_without_a_registered_net_fails_before_any_training(tmp_path: Path) -> None:
    with pytest.raises(UnknownArchitectureError, match="plain21"):
        run_degradation(depths=(21,), output_dir=tmp_path, reporter=SilentReporter())
    assert not any(tmp_path.iterdir())


def test_gradients_reach_every_block_and_shortcuts_keep_them_even(tmp_path: Path) -> None:
    result = run_gradients(depths=(20, 56), steps=2, batch_size=16, output_dir=tmp_path, reporter=SilentReporter())

    saved = json.loads(result.json.read_text())
    assert saved["steps"] == 2 and saved["batch_size"] == 16
    profiles = {profile["architecture"]: profile for profile in saved["profiles"]}
    assert list(profiles) == ["plain20", "resnet20", "plain56", "resnet56"]
    for name, profile in profiles.items():
        blocks = (profile["depth"] - 2) // 2  # two convolutions per block
        assert len(profile["at_init"]) == len(profile["after_steps"]) == blocks, name
        assert all(math.isfinite(v) and v > 0 for v in profile["at_init"] + profile["after_steps"]), name
        assert len(profile["losses"]) == 2
    assert result.plot.read_bytes()[:8] == PNG_MAGIC

    # With BatchNorm a plain net's gradient does not vanish toward the input at initialisation,
    # it grows, and exponentially with depth (measured first/last block ratio: ~20 for plain-20,
    # ~5e3 for plain-56, ~3e7 for plain-110 over two seeds); shortcuts keep it within ~10-100×.
    def spread(name: str) -> float:
        return profiles[name]["at_init"][0] / profiles[name]["at_init"][-1]

    assert spread("plain56") > 10 * spread("resnet56")
    assert spread("plain56") / spread("plain20") > 10 * spread("resnet56") / spread("resnet20")
