"""Commands that run and inspect the server side: serve, and repo list/check."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.markup import escape

from resnet_serve.cli.console import command, console, err_console
from resnet_serve.cli.options import DEFAULT_REPOSITORY, RepositoryOption
from resnet_serve.cli.render import repository_table
from resnet_serve.triton import ADMIN_KEY_VARIABLE

if TYPE_CHECKING:
    from resnet_serve.triton.server import SkippedEntry, TritonServer
    from resnet_serve.triton.supervisor import RestartPolicy, SupervisorEvent

__all__ = ["repo_app", "serve"]


@command
def serve(
    repository: Annotated[Path, typer.Option(help="Triton model repository to serve.")] = DEFAULT_REPOSITORY,
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    address: Annotated[str, typer.Option(
        help="Address to listen on: an IPv4 or IPv6 address or a host name; 0.0.0.0 or :: for every interface (the "
        "embedded server is for local use: see docs/serving.md, Security)."
    )] = "127.0.0.1",
    log_file: Annotated[Path | None, typer.Option(help="Write the server log here.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the models to load.")] = 180.0,
    admin_key: Annotated[str | None, typer.Option(
        "--admin-key", envvar=ADMIN_KEY_VARIABLE, show_envvar=False,
        help="The key of the server's restricted APIs (model repository, shared memory, logging, trace); also read "
        "from RESNET_SERVE_ADMIN_KEY.",
    )] = None,
    restart: Annotated[bool, typer.Option(
        "--restart/--no-restart",
        help="Restart tritonserver when it dies, after a backoff that doubles (1 s, 2 s, 4 s, …).",
    )] = True,
    strict: Annotated[bool, typer.Option(
        "--strict",
        help="All or nothing: refuse to serve when any entry is skipped as the official container would refuse it, "
        "or fails to load (default: skip it with one line and serve the rest).",
    )] = False,
    max_restarts: Annotated[int, typer.Option(help="Give up after more than this many crashes within 5 minutes.")] = 5,
) -> None:
    """Run the embedded Triton Inference Server on a repository until Ctrl-C or SIGTERM.

    The repository is only read: onnxruntime and OpenVINO entries run through python-backend
    proxies in a private copy, and entries this server cannot run are skipped. The restricted
    APIs need the admin key (generated and printed unless given)."""
    from resnet_serve.errors import ServerError
    from resnet_serve.triton.server import TritonServer, generate_admin_key
    from resnet_serve.triton.supervisor import RestartPolicy, Supervisor

    policy = RestartPolicy(max_restarts=max_restarts)
    server = TritonServer(
        repository=repository, http_port=http_port, grpc_port=grpc_port,
        metrics_port=metrics_port, address=address, log_file=log_file,
        admin_key=generate_admin_key() if admin_key is None else admin_key,
        on_load_failure="fail" if strict else "skip",
    )
    supervisor = Supervisor(
        server, policy=policy if restart else None, ready_timeout_s=timeout,
        on_event=lambda event: _print_supervisor_event(event, policy),
    )
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        server.start()
        _print_skipped(server.skipped)
        refused = next((entry for entry in server.skipped if entry.kind == "refused"), None)
        if strict and refused is not None:
            raise ServerError(f"--strict: {refused.name} would not load in the official container ({refused.reason})")
        with err_console.status("waiting for the models to load…"):
            server.wait_until_ready(timeout=timeout)
        _print_skipped(entry for entry in server.skipped if entry.kind == "failed to load")
        _print_ready(server, show_admin_key=admin_key is None)
        console.print("Press Ctrl-C to stop.")
        supervisor.run(stopping)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server.is_running:
            err_console.print("stopping Triton…")
        server.close()


def _print_skipped(skipped: Iterable[SkippedEntry]) -> None:
    for entry in skipped:
        err_console.print(
            f"[yellow]skipped[/] {escape(entry.name)}: {escape(entry.reason)}", highlight=False, soft_wrap=True
        )


def _print_ready(server: TritonServer, *, show_admin_key: bool) -> None:
    from resnet_serve.triton import ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER

    urls = server.urls
    ready = server.ready_versions()
    console.print(f"[green]✓[/] Triton is ready with {', '.join(sorted(ready)) or 'no models'}")
    for entry in server.served:
        if entry.name not in ready:
            continue
        runs = f"{entry.runtime} (python-backend proxy)" if entry.served_as == "proxy" else entry.runtime
        versions = ready[entry.name]
        console.print(
            f"  {entry.name}: {runs}, version{'s' * (len(versions) > 1)} {', '.join(map(str, versions))}",
            highlight=False,
        )
        for note in entry.notes:
            console.print(f"    note: {note}", highlight=False, soft_wrap=True)
    console.print(f"  HTTP    http://{urls.http}\n  gRPC    {urls.grpc}\n  metrics http://{urls.metrics}/metrics")
    console.print(f"  log     {server.log_file}", highlight=False)
    if show_admin_key:
        console.print(
            f"  admin key {server.admin_key}\n    (HTTP header {ADMIN_KEY_HEADER}, gRPC metadata "
            f"{GRPC_ADMIN_KEY_HEADER}; clients take it as --admin-key or RESNET_SERVE_ADMIN_KEY)",
            highlight=False, soft_wrap=True,
        )


def _print_supervisor_event(event: SupervisorEvent, policy: RestartPolicy) -> None:
    from resnet_serve.triton.supervisor import ServerCrashed

    if not isinstance(event, ServerCrashed):
        console.print(
            f"[green]✓[/] Triton restarted and is ready again (restart {event.restarts}, pid {event.pid}, "
            f"{event.seconds:.1f} s)", highlight=False,
        )
    elif event.restart_in_s is not None:  # when it gives up, its error is the line
        tail = f": {' | '.join(event.log_tail)}" if event.log_tail else ""
        err_console.print(
            f"[bold red]crashed:[/] {escape(event.reason + tail)}; removed {event.removed_regions} shared-memory "
            f"region(s); restarting in {event.restart_in_s:g} s (crash {event.crashes_in_window} of at most "
            f"{policy.max_restarts} in {policy.window_s / 60:g} min; log: {event.log_file})",
            highlight=False, soft_wrap=True,
        )


repo_app = typer.Typer(
    help="Inspect a Triton model repository: its entries, and whether an official image would load them.",
    no_args_is_help=True,
)


@repo_app.command("list")
@command
def repo_list(
    repository: RepositoryOption = DEFAULT_REPOSITORY,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Entries with their target, versions, file sizes and the test accuracy recorded at export."""
    from resnet_serve.triton.repository import summarize_repository

    summaries = summarize_repository(repository)
    if as_json:
        print(json.dumps([summary.to_dict() for summary in summaries], indent=2))
        return
    console.print(repository_table(summaries, title=str(repository)))
    for summary in summaries:
        if summary.problem:
            err_console.print(f"{summary.name}: {summary.problem}", highlight=False, soft_wrap=True, markup=False)


@repo_app.command("check")
@command
def repo_check(
    repository: RepositoryOption = DEFAULT_REPOSITORY,
    image: Annotated[str, typer.Option(
        help="deploy (the image deploy/Dockerfile builds: the pinned official image plus Pillow) or an official tag "
        "such as 24.10-py3."
    )] = "deploy",
    host: Annotated[Literal["auto", "any", "cpu", "gpu"], typer.Option(
        help="The host the container runs on: cpu, gpu, any (both: what compose's two profiles serve), or auto (gpu "
        "for entries whose instance groups ask for KIND_GPU, any for the rest)."
    )] = "auto",
) -> None:
    """Would each entry load, and answer, in that image?

    Checks the backend contract (docs/backend-contract.md), python imports, TensorRT plans and labels.

    One line per problem; warnings are marked and exit 0.
    """
    from resnet_serve.triton.images import find_image
    from resnet_serve.triton.repository import check_repository

    facts = find_image(image)
    problems = check_repository(repository=repository, image=facts, host=host)
    for problem in problems:
        err_console.print(str(problem), highlight=False, soft_wrap=True, markup=False)
    if any(problem.severity == "error" for problem in problems):
        raise typer.Exit(1)
    warned = f" ({len(problems)} warning{'s' * (len(problems) > 1)})" if problems else ""
    console.print(
        f"[green]✓[/] every entry of {repository} would load in {facts.reference}{warned}",
        highlight=False, soft_wrap=True,
    )
