"""Several processes, one run: joining the process group that torchrun sets up, and starting one.

torchrun (``torch.distributed.run``, PyTorch's elastic launcher) starts N copies of a command on
each node and tells each, in its environment, its ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and
where to meet. ``joined`` turns that into a process group (gloo on CPUs, NCCL on GPUs) for the
training loop, which then wraps its model in ``DistributedDataParallel``; without torchrun it is
a world of one process and nothing is set up. ``launch`` is ``torchrun --standalone`` called as
a function, for ``train --nproc N``.

When one process dies, the others must not wait for it forever: a collective that loses a peer
fails (gloo sees the closed connection), and the launcher stops the survivors with SIGTERM.
Both become a ``ProcessGroupError`` here, marked as a consequence in the error file torchrun
reads (``TORCHELASTIC_ERROR_FILE``), so that ``launch`` reports the process that failed first,
not the ones that stopped because of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING

import torch
from torch import nn

from resnet_serve.errors import TrainingError, first_line

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

__all__ = [
    "LAUNCHED_BY_RESNET_SERVE",
    "ProcessGroupError",
    "World",
    "all_sum",
    "cores_per_process",
    "joined",
    "launch",
    "peers_watched",
    "record_failure",
    "synchronized_batchnorm",
    "world_from_environment",
]

# Set by ``launch`` for the processes it starts: they leave reporting a failure to it.
LAUNCHED_BY_RESNET_SERVE = "RESNET_SERVE_LAUNCHED"
# The key of our error-file entries that marks a failure caused by another process's.
_CONSEQUENCE = "resnet_serve_consequence"
# How the transports word a lost peer in the errors they raise.
_TRANSPORT_FAILURES = ("gloo", "NCCL", "Connection reset", "Connection closed")
# How long a collective may wait for a peer that is alive but silent (a hung node) before failing;
# a dead peer on this machine fails it at once.
_COLLECTIVE_TIMEOUT = timedelta(minutes=10)


class ProcessGroupError(TrainingError):
    """This process stopped because another process of the run did (or the launcher stopped it)."""


@dataclass(frozen=True)
class World:
    """Where this process stands among the run's processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def main(self) -> bool:
        """The process that writes checkpoints, history and plots, and reports progress."""
        return self.rank == 0


def cores_per_process(world: World) -> int:
    """The usable cores divided among this machine's processes of the run: the default of both
    torch's threads and the DataLoader's workers, so N processes do not oversubscribe the cores."""
    return max(1, len(os.sched_getaffinity(0)) // world.local_world_size)


def world_from_environment() -> World:
    """This process's place in a torchrun launch, from its environment; a world of one otherwise."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return World()
    try:
        return World(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
        )
    except ValueError:
        raise TrainingError(
            f"RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r} are not the numbers torchrun sets"
        ) from None


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise ProcessGroupError(
        "stopped by SIGTERM: the launcher stops every process of a run when one fails (it names the first)"
    )


@contextlib.contextmanager
def joined(world: World, *, device: torch.device) -> Iterator[None]:
    """Join the run's process group for the block (NCCL for CUDA devices, gloo otherwise); a
    world of one joins nothing. SIGTERM raises ``ProcessGroupError`` inside the block."""
    if world.world_size == 1:
        yield
        return
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        try:
            dist.init_process_group(backend=backend, timeout=_COLLECTIVE_TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise TrainingError(f"cannot join the run's {backend} process group: {first_line(exc)}") from None
        try:
            yield
        finally:
            dist.destroy_process_group()
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def peers_watched(world: World) -> Iterator[None]:
    """Turn the failure of a collective (a peer that died, a broken connection) into one
    ``ProcessGroupError`` line; a world of one has no collectives."""
    if world.world_size == 1:
        yield
        return
    import torch.distributed as dist

    try:
        yield
    except RuntimeError as exc:
        # DDP's gradient all-reduce reports a lost peer as a plain RuntimeError from the transport
        # ("gloo/transport/tcp/pair.cc: Read error ... Connection reset by peer"), other
        # collectives as a DistError; errors of the process's own are left as they are.
        message = str(exc)
        if not isinstance(exc, dist.DistError) and not any(
            mark in message for mark in _TRANSPORT_FAILURES
        ):
            raise
        raise ProcessGroupError(f"another process of the run stopped ({first_line(exc)})") from None


class _CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the whole global batch, for processes
    that train on CPUs: ``nn.SyncBatchNorm`` has kernels for GPUs only and refuses CPU inputs.

    Mean and variance are sums all-reduced through ``torch.distributed.nn.functional.all_reduce``,
    which autograd differentiates (its backward all-reduces the gradients), in two passes
    (mean, then squared deviations from it) so no large E[x²] − E[x]² cancels in float32.
    Eval mode, and a world of one, is plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_reduce

        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
        dist.all_reduce(count)
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        var = all_reduce(centred.square().sum(dims)) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                # Running variance is unbiased, as BatchNorm keeps it.
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            return centred * (scale * self.weight)[None, :, None, None] + self.bias[None, :, None, None]
        return centred * scale[None, :, None, None]


def synchronized_batchnorm(model: nn.Module, *, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm normalising over the global batch of all processes:
    ``nn.SyncBatchNorm`` on GPUs, its CPU counterpart here otherwise; weights and statistics kept."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = _CpuSyncBatchNorm(
                child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                track_running_stats=child.track_running_stats,
            )
            synced.load_state_dict(child.state_dict())
            synced.requires_grad_(any(p.requires_grad for p in child.parameters()))
            setattr(model, name, synced)
        else:
            synchronized_batchnorm(child, device=device)
    return model


def all_sum(values: Sequence[float], *, world: World, device: torch.device) -> list[float]:
    """``values`` summed element-wise over every process (float64, so counts stay exact)."""
    if world.world_size == 1:
        return [float(v) for v in values]
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def record_failure(error: BaseException) -> None:
    """Write ``error`` as this process's failure to torchrun's error file, for the launcher to
    report; a ``ProcessGroupError`` is marked as the consequence of another process's failure."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    entry = {"message": str(error), "timestamp": int(time.time()), _CONSEQUENCE: isinstance(error, ProcessGroupError)}
    with contextlib.suppress(OSError), open(path, "w") as handle:
        json.dump(entry, handle)


def _describe_failure(rank: int, failure: ProcessFailure, world_size: int) -> str:
    if failure.exitcode < 0:
        return f"process {rank} of {world_size} (pid {failure.pid}) was killed by {failure.signal_name()}"
    data = failure.error_file_data
    if _CONSEQUENCE in data:  # our own one-line message
        return str(data["message"])
    if isinstance(data.get("message"), dict):  # torch's @record: "Type: message"
        return first_line(Exception(data["message"].get("message", "")))
    return f"process {rank} of {world_size} exited with code {failure.exitcode}"


def launch(*, nproc: int, arguments: Sequence[str]) -> None:
    """Run ``python -m resnet_serve <arguments>`` as ``nproc`` processes on this machine through
    torchrun's own launcher (``torchrun --standalone --nproc-per-node nproc``), and wait.

    Raises:
        TrainingError: one line about the process that failed first (its own error, or the
            signal that killed it); the others are stopped by the launcher.
    """
    if nproc < 1:
        raise TrainingError(f"nproc must be ≥ 1, got {nproc}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "resnet_serve", *arguments]
    )
    # The launcher's own log lines (its thread settings, the rendezvous, each failed process's
    # error file) would bury the one line this function raises; its loggers each set their own
    # level, so only disabling logging quiets them all.
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    os.environ[LAUNCHED_BY_RESNET_SERVE] = "1"
    try:
        run(args)
    except ChildFailedError as failed:
        def consequence(failure: ProcessFailure) -> bool:
            # SIGTERM is how the launcher stops the processes that outlived a failure.
            return bool(failure.error_file_data.get(_CONSEQUENCE)) or failure.exitcode == -signal.SIGTERM

        rank, failure = min(
            failed.failures.items(), key=lambda item: (consequence(item[1]), item[1].timestamp, item[0])
        )
        raise TrainingError(_describe_failure(rank, failure, nproc)) from None
    finally:
        del os.environ[LAUNCHED_BY_RESNET_SERVE]
        logging.disable(disabled)
