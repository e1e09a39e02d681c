"""Launch the real Triton Inference Server carried by the `nvidia-pytriton` wheel.

That wheel holds tritonserver with only the python backend. The server never loads the user's
repository itself: it loads a copy made at start in a private temporary folder (removed on
stop), where `onnxruntime_onnx` and `openvino` entries become python-backend proxies and
entries it cannot run are left out (`resnet_serve.triton.proxy`). Making it run from a
virtualenv takes three more things this module does for the caller:

- a backend directory: `python/` = the wheel's python backend plus the stub built for this
  interpreter's Python version (cached, built once per pytriton and Python version);
- `LD_LIBRARY_PATH` starting with this interpreter's LIBDIR, so the stub embeds the same
  libpython, then the wheel's bundled libraries;
- `PATH` starting with this interpreter's bin folder. The stub runs an *isolated* embedded
  interpreter (it ignores PYTHONPATH) that finds its prefix by looking `python3` up on PATH;
  finding the virtualenv's `python3` makes it read `pyvenv.cfg` and use the virtualenv's
  site-packages (numpy < 2, onnxruntime) instead of the base interpreter's.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from resnet_serve.errors import MissingDependencyError, RepositoryError, ServerError
from resnet_serve.triton.proxy import ProxyRepository, ServedEntry, SkippedEntry, build_proxy_repository

__all__ = [
    "ModelControl",
    "ServerUrls",
    "TritonInstallation",
    "TritonServer",
    "find_free_port",
    "find_free_ports",
    "find_triton_installation",
    "prepare_backend_directory",
]

# No "poll": the server loads a copy of the repository made at start, which never changes.
ModelControl = Literal["none", "explicit"]

_INSTALL_HINT = "the embedded Triton server needs `pip install resnet-serve[embedded]`"
# glog prefix of tritonserver's error lines: E1127 10:55:32.131418 4424 file.cc:724] "message"
_ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] (.*)$")


@dataclass(frozen=True)
class TritonInstallation:
    """Where the pieces of the wheel's tritonserver are."""

    version: str
    binary: Path
    python_backend: Path
    stub: Path
    libraries: Path


@dataclass(frozen=True)
class ServerUrls:
    """Addresses in the `host:port` form that tritonclient's clients take."""

    http: str
    grpc: str
    metrics: str


def find_triton_installation() -> TritonInstallation:
    """Locate tritonserver in the installed nvidia-pytriton wheel, without importing pytriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(_INSTALL_HINT)
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    installation = TritonInstallation(
        version=importlib.metadata.version("nvidia-pytriton"),
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / python_version / "triton_python_backend_stub",
        libraries=package.parent / "nvidia_pytriton.libs",
    )
    if not installation.binary.is_file() or not installation.python_backend.is_dir():
        raise MissingDependencyError(f"{_INSTALL_HINT} (no tritonserver under {root})")
    if not installation.stub.is_file():
        raise MissingDependencyError(
            f"nvidia-pytriton {installation.version} has no python backend stub for "
            f"Python {python_version}"
        )
    return installation


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "resnet-serve"


def prepare_backend_directory(
    installation: TritonInstallation, *, cache_dir: Path | None = None
) -> Path:
    """Return a `--backend-directory` whose `python/` matches this interpreter; build it once."""
    cache = cache_dir or _default_cache_dir()
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = cache / f"triton-backends-pytriton{installation.version}-py{python_version}"
    backend = folder / "python"
    if (backend / "triton_python_backend_stub").is_file():
        return folder
    try:
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=cache))
    except OSError as error:
        raise ServerError(f"cannot prepare the Triton backend directory in {cache}: {error}") \
            from None
    try:
        shutil.copytree(installation.python_backend, staging / "python",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(installation.stub, staging / "python" / "triton_python_backend_stub")
        staging.rename(folder)
    except OSError as error:
        # Another process may have finished the same folder first; theirs is as good as ours.
        if not (backend / "triton_python_backend_stub").is_file():
            raise ServerError(
                f"cannot prepare the Triton backend directory in {cache}: {error}"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def find_free_ports(count: int, *, address: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that are free now (another process may still take them)."""
    sockets: list[socket.socket] = []
    try:
        # Hold every socket open until all are chosen so that the kernel cannot hand out the
        # same port twice.
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((address, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def find_free_port(*, address: str = "127.0.0.1") -> int:
    """One TCP port that is free now."""
    return find_free_ports(1, address=address)[0]


def port_in_use(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option tritonserver binds with: a port in TIME_WAIT is usable, a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGTERM the server when the process
    # that started it dies, so a killed CLI or test run does not leave a server holding ports.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """One tritonserver process serving a model repository.

    Use it as a context manager (start, wait until every model is ready, stop on exit), or call
    `start`, `wait_until_ready` and `stop` yourself. The process runs in its own session, so a
    Ctrl-C in the terminal reaches only the caller, which then calls `stop`. On Linux the server
    also gets SIGTERM when the thread that started it exits.

    After `start`, `served` lists the entries the server loads and `skipped` the ones it
    cannot run, each with its reason. `repository` itself is only read.
    """

    def __init__(
        self,
        *,
        repository: Path,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        address: str = "127.0.0.1",
        log_file: Path | None = None,
        log_verbose: int = 0,
        model_control: ModelControl = "none",
        load_models: Sequence[str] = (),
        exit_timeout_s: int = 5,
        cache_dir: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if not repository.is_dir():
            raise RepositoryError(f"model repository {repository} does not exist")
        ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        if len(set(ports.values())) != len(ports):
            raise ServerError(f"the http, grpc and metrics ports must differ, got {ports}")
        bad = {k: p for k, p in ports.items() if not 0 < p < 65536}
        if bad:
            raise ServerError(f"invalid port numbers {bad}")
        if model_control not in ("none", "explicit"):
            raise ServerError(f"model_control must be none or explicit, not {model_control!r}")
        if exit_timeout_s < 0:
            raise ServerError(f"exit_timeout_s must be >= 0, got {exit_timeout_s}")
        if load_models and model_control != "explicit":
            raise ServerError("load_models needs model_control='explicit'")
        if any(arg.split("=")[0] in ("--model-repository", "--model-store") for arg in extra_args):
            # tritonserver would load that folder as well, as it is, beside the served copy.
            raise ServerError("give the model repository as repository=, not in extra_args")
        self.repository = repository.resolve()
        self.ports = ports
        self.address = address
        self.log_file = log_file
        self.log_verbose = log_verbose
        self.model_control = model_control
        self.load_models = tuple(load_models)
        self.exit_timeout_s = exit_timeout_s
        self.cache_dir = cache_dir
        self.extra_args = tuple(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._proxy: ProxyRepository | None = None

    @property
    def urls(self) -> ServerUrls:
        host = "localhost" if self.address in ("0.0.0.0", "127.0.0.1") else self.address
        return ServerUrls(
            http=f"{host}:{self.ports['http']}",
            grpc=f"{host}:{self.ports['grpc']}",
            metrics=f"{host}:{self.ports['metrics']}",
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def served_repository(self) -> Path | None:
        """The private copy of the repository that tritonserver loads, while it exists."""
        return self._proxy.path if self._proxy and self._proxy.path.is_dir() else None

    @property
    def served(self) -> tuple[ServedEntry, ...]:
        """The entries this server loads (known after `start`)."""
        return self._proxy.served if self._proxy else ()

    @property
    def skipped(self) -> tuple[SkippedEntry, ...]:
        """The repository's folders this server cannot run, each with why (after `start`)."""
        return self._proxy.skipped if self._proxy else ()

    def _models_to_load(self) -> tuple[str, ...]:
        """In explicit mode, the asked-for models minus the skipped ones."""
        skipped = {entry.name for entry in self.skipped}
        return tuple(name for name in self.load_models if name not in skipped)

    def command(
        self, installation: TritonInstallation, backend_directory: Path, *, model_repository: Path
    ) -> list[str]:
        """The tritonserver command line this server runs on `model_repository` (the proxy)."""
        args = [
            str(installation.binary),
            f"--model-repository={model_repository}",
            f"--backend-directory={backend_directory}",
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-port={self.ports['metrics']}",
            f"--http-address={self.address}",
            f"--grpc-address={self.address}",
            f"--metrics-address={self.address}",
            # Without a GPU the GPU metrics only add warnings to the log.
            "--allow-gpu-metrics=false",
            f"--model-control-mode={self.model_control}",
            f"--log-verbose={self.log_verbose}",
            # On SIGTERM tritonserver waits this long for in-flight requests and for clients'
            # idle keep-alive connections; its default (30 s) makes every Ctrl-C slow.
            f"--exit-timeout-secs={self.exit_timeout_s}",
        ]
        args += [f"--load-model={name}" for name in self._models_to_load()]
        return [*args, *self.extra_args]

    def environment(self, installation: TritonInstallation) -> dict[str, str]:
        """The process environment; see the module docstring for why each entry is there."""
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, str(installation.libraries), env.get("LD_LIBRARY_PATH", "")) if p
        )
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
        return env

    def start(self) -> None:
        """Build the served copy of the repository and start tritonserver on it; returns at once
        (see `wait_until_ready`)."""
        if self.is_running:
            raise ServerError(f"tritonserver is already running (pid {self.pid})")
        installation = find_triton_installation()
        backend_directory = prepare_backend_directory(installation, cache_dir=self.cache_dir)
        for label, port in self.ports.items():
            if port_in_use(self.address, port):
                raise ServerError(
                    f"{label} port {port} on {self.address} is already in use "
                    "(another server running? choose other ports)"
                )
        if self.log_file is None:
            handle, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(handle)
            self.log_file = Path(name)
        try:
            # Readable by this user only; stop() removes it.
            proxy_folder = Path(tempfile.mkdtemp(prefix="resnet-serve-repository-"))
        except OSError as error:
            raise ServerError(f"cannot make a temporary folder for the served repository: {error}") \
                from None
        try:
            self._proxy = build_proxy_repository(source=self.repository, destination=proxy_folder)
        except BaseException:
            shutil.rmtree(proxy_folder, ignore_errors=True)
            raise
        try:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_file, "wb")  # noqa: SIM115 - closed in stop()
        except OSError as error:
            self._remove_proxy()
            raise ServerError(f"cannot write the server log {self.log_file}: {error}") from None
        try:
            self._process = subprocess.Popen(
                self.command(installation, backend_directory, model_repository=proxy_folder),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.environment(installation),
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as error:
            self._log.close()
            self._remove_proxy()
            raise ServerError(f"cannot start {installation.binary}: {error}") from None

    def _remove_proxy(self) -> None:
        if self._proxy is not None:
            shutil.rmtree(self._proxy.path, ignore_errors=True)

    def _url(self, path: str) -> str:
        host = "127.0.0.1" if self.address == "0.0.0.0" else self.address
        return f"http://{host}:{self.ports['http']}{path}"

    def _get(self, path: str) -> tuple[int, bytes]:
        return self._request(urllib.request.Request(self._url(path)))

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return self._request(urllib.request.Request(self._url(path), data=body, method="POST"))

    @staticmethod
    def _request(request: urllib.request.Request) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""

    def model_states(self) -> dict[str, tuple[str, str]]:
        """`{model: (state, reason)}` from the repository index, for models Triton knows of."""
        status, body = self._post("/v2/repository/index", b"{}")
        if status != 200:
            return {}
        return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in json.loads(body)}

    def ready_versions(self) -> dict[str, tuple[int, ...]]:
        """`{model: versions}` of the model versions that are loaded and ready."""
        status, body = self._post("/v2/repository/index", b"{}")
        if status != 200:
            return {}
        ready: dict[str, list[int]] = {}
        for model in json.loads(body):
            if model.get("state") == "READY" and str(model.get("version", "")).isdigit():
                ready.setdefault(model["name"], []).append(int(model["version"]))
        return {name: tuple(sorted(versions)) for name, versions in ready.items()}

    def wait_until_ready(
        self, *, timeout: float = 120.0, models: Sequence[str] | None = None
    ) -> None:
        """Block until the server and `models` are ready; ServerError with the log's errors if not.

        `models` defaults to the explicitly loaded ones in explicit mode (less the skipped ones),
        and to every model the server loads otherwise.
        """
        if self._process is None:
            raise ServerError("tritonserver was not started")
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise ServerError(self._failure(f"tritonserver exited with code {code}"))
            if self._get("/v2/health/ready")[0] == 200:
                pending = self._unready_models(models)
                if not pending:
                    return
            if time.monotonic() > deadline:
                raise ServerError(self._failure(f"tritonserver was not ready after {timeout:g} s"))
            time.sleep(0.1)

    def _unready_models(self, models: Sequence[str] | None) -> list[str]:
        states = self.model_states()
        if models is None:
            models = self._models_to_load() if self.model_control == "explicit" else list(states)
        failed = {n: states[n][1] for n in models if states.get(n, ("",))[0] == "UNAVAILABLE"}
        if failed:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            raise ServerError(self._failure(f"models failed to load ({reasons})"))
        return [n for n in models if self._get(f"/v2/models/{n}/ready")[0] != 200]

    def _failure(self, headline: str) -> str:
        """One line: what went wrong plus the server's last error messages and the log path."""
        errors: list[str] = []
        if self.log_file and self.log_file.is_file():
            for line in self.log_file.read_text(errors="replace").splitlines():
                match = _ERROR_LINE.match(line)
                if match:
                    message = match.group(1).strip('"').split("\\n")[0]
                    if "CudaDriverHelper" not in message:  # every GPU-less start logs this
                        errors.append(message[:300])
                elif line.startswith("error:"):
                    errors.append(line[:300])
        details = f": {' | '.join(errors[-3:])}" if errors else ""
        return f"{headline}{details} (log: {self.log_file})"

    def wait_for_exit(self, timeout: float | None = None) -> int | None:
        """Block until tritonserver exits (or `timeout` passes); return its exit code."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, *, grace_period: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after `grace_period` s; also ends leftover python stubs.

        The grace period defaults to the exit timeout plus time to unload the models.
        """
        if grace_period is None:
            grace_period = self.exit_timeout_s + 10.0
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_period)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        try:
            # The session holds only tritonserver and its stubs; a stub orphaned by a crash
            # would otherwise keep running.
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._log is not None:
            self._log.close()
            self._log = None
        self._remove_proxy()
        return process.returncode

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
