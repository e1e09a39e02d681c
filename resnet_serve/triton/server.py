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

What a crash leaves behind is this module's to clean: each start names the python backend's
shared-memory regions with a prefix of its own (`shm-region-prefix-name`), so `stop` removes
exactly this server's `/dev/shm` leftovers and never another server's. Each start's copy of
the repository, and its log when no log file is given, live in one run folder,
`<tmp>/resnet-serve-<uid>/serve-<pid>-<random>` (readable by this user only), which `stop`
removes; the next start removes the run folders of processes that are gone (a `serve` killed
with SIGKILL). The admin key reaches tritonserver on its command line only: it is taken out of
the environment tritonserver and its python stubs inherit, where any model's code could read it. Triton 2.51 binds its
HTTP and metrics endpoints with `inet_addr` (a host name became 255.255.255.255, `::1` failed),
so the address is resolved here and given to Triton as a literal in the form each endpoint
parses (`ipv6:<address>` for HTTP and metrics, `[<address>]` for gRPC), after a test bind that
says what is wrong (in use, not this machine's, not resolvable) before Triton starts.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import stat
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
from resnet_serve.files import pid_running
from resnet_serve.triton import ADMIN_KEY_HEADER, ADMIN_KEY_VARIABLE, RESTRICTED_APIS
from resnet_serve.triton.proxy import ProxyRepository, ServedEntry, SkippedEntry, build_proxy_repository

__all__ = [
    "ListenAddress",
    "ModelControl",
    "ServerUrls",
    "TritonInstallation",
    "TritonServer",
    "check_can_listen",
    "describe_exit",
    "find_free_port",
    "find_free_ports",
    "find_triton_installation",
    "generate_admin_key",
    "prepare_backend_directory",
    "resolve_listen_address",
]

# No "poll": the server loads a copy of the repository made at start, which never changes.
ModelControl = Literal["none", "explicit"]

_INSTALL_HINT = "the embedded Triton server needs `pip install resnet-serve[embedded]`"
# glog prefix of tritonserver's error lines: E1127 10:55:32.131418 4424 file.cc:724] "message"
_ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] (.*)$")
# A frame of the stack dump tritonserver writes when it dies of a signal: " 3# 0x00005556161B67FF in ..."
_STACK_FRAME = re.compile(r"^\s*\d+# ")
# Failures of a start that the next start does not repeat: the python backend's shared-memory
# lock raced with another server's (seen once with three models; it did not recur in 4 tries).
TRANSIENT_START_FAILURES = ("boost::interprocess::lock_exception",)
SHARED_MEMORY = Path("/dev/shm")
# The python backend's own prefix, with a part of ours so that a person who lists /dev/shm sees
# whose regions they are.
_SHM_PREFIX = "triton_python_backend_shm_region_resnet_serve_"
# What a restricted API's key may hold: Triton splits its option at ':', ',' and '='.
_ADMIN_KEY = re.compile(r"^[A-Za-z0-9._~+/-]{16,}$")


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


@dataclass(frozen=True)
class ListenAddress:
    """An address to listen on, resolved to one IP literal, in the forms Triton's endpoints parse."""

    given: str
    ip: str
    family: socket.AddressFamily

    @property
    def is_ipv6(self) -> bool:
        return self.family == socket.AF_INET6

    @property
    def http_argument(self) -> str:
        """For --http-address and --metrics-address (libevhtp reads IPv6 as `ipv6:<address>`)."""
        return f"ipv6:{self.ip}" if self.is_ipv6 else self.ip

    @property
    def grpc_argument(self) -> str:
        """For --grpc-address (Triton appends `:port`, so IPv6 needs its brackets)."""
        return f"[{self.ip}]" if self.is_ipv6 else self.ip

    @property
    def local_ip(self) -> str:
        """Where this machine reaches the server: the loopback address for a wildcard one."""
        if ipaddress.ip_address(self.ip).is_unspecified:
            return "::1" if self.is_ipv6 else "127.0.0.1"
        return self.ip

    @property
    def client_host(self) -> str:
        """The host part of the URLs a client uses, IPv6 in brackets."""
        if self.given in ("0.0.0.0", "127.0.0.1", "localhost"):
            return "localhost"
        # A host name stays as given: that is how clients elsewhere know the machine.
        host = self.local_ip if self.given.strip("[]") == self.ip else self.given
        return f"[{host}]" if ":" in host else host


def resolve_listen_address(address: str) -> ListenAddress:
    """An IP literal or a host name (the first IPv4 address it resolves to, else its first IPv6
    one), refused with one line when it is neither."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        if not address or re.fullmatch(r"[\d.]+", address):
            raise ServerError(f"{address!r} is not a valid IP address") from None
    else:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return ListenAddress(given=address, ip=str(ip), family=family)
    try:
        found = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else str(error)
        raise ServerError(f"cannot resolve the address {address!r} ({reason})") from None
    found.sort(key=lambda entry: entry[0] != socket.AF_INET)
    family, _, _, _, sockaddr = found[0]
    return ListenAddress(given=address, ip=str(sockaddr[0]), family=socket.AddressFamily(family))


def check_can_listen(address: ListenAddress, port: int, *, label: str) -> None:
    """Bind a socket as tritonserver will, so that a port or address that cannot be used is
    reported as what it is before Triton starts."""
    with socket.socket(address.family, socket.SOCK_STREAM) as sock:
        # Same option tritonserver binds with: a port in TIME_WAIT is usable, a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.ip, port))
        except OSError as error:
            where = f"{label} port {port} on {address.ip}"
            if error.errno == errno.EADDRINUSE:
                reason = "is already in use (another server running? choose other ports)"
            elif error.errno == errno.EADDRNOTAVAIL:
                reason = f"cannot be used: {address.given} is not an address of this machine"
            elif error.errno == errno.EACCES:
                reason = "needs privileges to listen on (ports below 1024 do)"
            else:
                reason = f"cannot be used: {error.strerror}"
            raise ServerError(f"{where} {reason}") from None


# Where ports to listen on are drawn from: registered ports below the kernel's ephemeral range.
LISTEN_PORTS_FROM = 10_000


def _ephemeral_ports_start() -> int:
    """The first port the kernel hands to outgoing connections (Linux's default: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def find_free_ports(count: int, *, address: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that are free now (another process may still take them).

    They are drawn below the ephemeral range: a port the kernel chose there (``bind(0)``) is
    one it may give the very next outgoing connection (a client, a python stub), so a server
    about to listen on it found it taken (seen once in the test suite: "http port … is already
    in use").
    """
    sockets: list[socket.socket] = []
    ports = list(range(LISTEN_PORTS_FROM, max(LISTEN_PORTS_FROM, _ephemeral_ports_start())))
    random.shuffle(ports)
    try:
        # Hold every socket open until all are chosen so that no port is chosen twice.
        for port in ports:
            if len(sockets) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((address, port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        while len(sockets) < count:  # no room below the ephemeral range: let the kernel choose
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
    try:
        check_can_listen(resolve_listen_address(address), port, label="")
    except ServerError:
        return True
    return False


def runtime_folder() -> Path:
    """This user's folder of server runs, made private if new, after removing the run folders
    of processes that are gone.

    Raises:
        ServerError: the folder exists but is not this user's private folder.
    """
    folder = Path(tempfile.gettempdir()) / f"resnet-serve-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        status = folder.lstat()
    except OSError as error:
        raise ServerError(f"cannot make {folder}: {error.strerror or error}") from None
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise ServerError(f"{folder} is not a folder of this user's only: remove it, and the next start makes it")
    for run in folder.glob("serve-*-*"):
        pid = run.name.split("-")[1]
        if pid.isascii() and pid.isdigit() and not pid_running(int(pid)):
            shutil.rmtree(run, ignore_errors=True)
    return folder


def generate_admin_key() -> str:
    """A random key for the restricted APIs (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def describe_exit(code: int) -> str:
    """`code 1`, or `signal 11 (SIGSEGV)` for a process a signal ended (Popen's negative codes)."""
    if code >= 0:
        return f"code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


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

    With `admin_key`, the restricted APIs (`resnet_serve.triton.RESTRICTED_APIS`) answer only
    requests that carry it; without, anyone who can connect may use them. The key is on
    tritonserver's command line, which other users of this machine can read (`ps`).

    A server can be started again after it stopped or died (see `triton.supervisor`): each
    start builds a fresh copy of the repository and appends to the same log.
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
        admin_key: str | None = None,
        cache_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        on_load_failure: Literal["fail", "skip"] = "fail",
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
        if on_load_failure not in ("fail", "skip"):
            raise ServerError(f"on_load_failure must be fail or skip, not {on_load_failure!r}")
        if admin_key is not None and not _ADMIN_KEY.match(admin_key):
            raise ServerError(
                "an admin key needs at least 16 characters, each a letter, a digit or one of . _ ~ + / -"
            )
        self.repository = repository.resolve()
        self.ports = ports
        self.address = address
        self.listen = resolve_listen_address(address)
        self.admin_key = admin_key
        self.log_file = log_file
        self.log_verbose = log_verbose
        self.model_control = model_control
        self.load_models = tuple(load_models)
        self.exit_timeout_s = exit_timeout_s
        self.cache_dir = cache_dir
        self.extra_args = tuple(extra_args)
        self.on_load_failure = on_load_failure
        self._failed_loads: tuple[SkippedEntry, ...] = ()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        # Where this start's part of the log begins (a restarted server appends to the log).
        self._log_offset = 0
        self._starts = 0
        self._proxy: ProxyRepository | None = None
        self._run_folder: Path | None = None
        self._shm_prefix = ""

    @property
    def urls(self) -> ServerUrls:
        host = self.listen.client_host
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
        """The repository's folders this server does not serve, each with why: those skipped
        before it started (after `start`), and, with ``on_load_failure="skip"``, those that
        failed to load (after `wait_until_ready`)."""
        return (self._proxy.skipped if self._proxy else ()) + self._failed_loads

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
            f"--http-address={self.listen.http_argument}",
            f"--grpc-address={self.listen.grpc_argument}",
            f"--metrics-address={self.listen.http_argument}",
            # Without a GPU the GPU metrics only add warnings to the log.
            "--allow-gpu-metrics=false",
            f"--model-control-mode={self.model_control}",
            f"--log-verbose={self.log_verbose}",
            # On SIGTERM tritonserver waits this long for in-flight requests and for clients'
            # idle keep-alive connections; its default (30 s) makes every Ctrl-C slow.
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        if self.on_load_failure == "skip":
            # A model that fails to load must not stop the others: tritonserver keeps running,
            # and reports ready once it is up, whatever its models do (wait_until_ready waits
            # for each).
            args += ["--exit-on-error=false", "--strict-readiness=false"]
        if self.admin_key:
            apis = ",".join(RESTRICTED_APIS)
            args += [
                f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={self.admin_key}",
                f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={self.admin_key}",
            ]
        args += [f"--load-model={name}" for name in self._models_to_load()]
        return [*args, *self.extra_args]

    def environment(self, installation: TritonInstallation) -> dict[str, str]:
        """The process environment; see the module docstring for why each entry is there."""
        env = {key: value for key, value in os.environ.items() if key != ADMIN_KEY_VARIABLE}
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
        self._failed_loads = ()
        installation = find_triton_installation()
        backend_directory = prepare_backend_directory(installation, cache_dir=self.cache_dir)
        for label, port in self.ports.items():
            check_can_listen(self.listen, port, label=label)
        try:
            # Readable by this user only, kept across restarts (the log of a crash stays
            # readable); close() removes it.
            if self._run_folder is None:
                self._run_folder = Path(tempfile.mkdtemp(prefix=f"serve-{os.getpid()}-", dir=runtime_folder()))
            proxy_folder = self._run_folder / f"repository-{self._starts + 1}"
            proxy_folder.mkdir(mode=0o700)
        except OSError as error:
            raise ServerError(f"cannot make a temporary folder for the served repository: {error}") \
                from None
        if self.log_file is None:
            self.log_file = self._run_folder / "tritonserver.log"
        try:
            self._proxy = build_proxy_repository(source=self.repository, destination=proxy_folder)
        except BaseException:
            shutil.rmtree(proxy_folder, ignore_errors=True)
            raise
        try:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            # A restart appends, so the log of the run that died stays readable.
            self._log = open(self.log_file, "ab" if self._starts else "wb")  # noqa: SIM115 - closed in stop()
            self._log_offset = self._log.tell()
        except OSError as error:
            self._remove_proxy()
            raise ServerError(f"cannot write the server log {self.log_file}: {error}") from None
        self._starts += 1
        self._shm_prefix = f"{_SHM_PREFIX}{secrets.token_hex(4)}_"
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

    def close(self) -> None:
        """Stop, and remove the run folder: the served copies, and the log when no log file was
        given (a server can still be started again: it makes a new run folder)."""
        self.stop()
        if self._run_folder is not None:
            if self.log_file is not None and self.log_file.parent == self._run_folder:
                self.log_file = None
            shutil.rmtree(self._run_folder, ignore_errors=True)
            self._run_folder = None

    def _url(self, path: str) -> str:
        ip = self.listen.local_ip
        host = f"[{ip}]" if self.listen.is_ipv6 else ip
        return f"http://{host}:{self.ports['http']}{path}"

    def _get(self, path: str) -> tuple[int, bytes]:
        return self._request(urllib.request.Request(self._url(path)))

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        # Only the repository index is asked for here, which the admin key guards.
        headers = {ADMIN_KEY_HEADER: self.admin_key} if self.admin_key else {}
        return self._request(urllib.request.Request(self._url(path), data=body, headers=headers, method="POST"))

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
        and to every model the server loads otherwise. With ``on_load_failure="skip"`` a model
        that fails to load, or is not ready within `timeout`, is added to `skipped` with why,
        and the server is ready with the others.
        """
        if self._process is None:
            raise ServerError("tritonserver was not started")
        deadline = time.monotonic() + timeout
        retried = False
        while True:
            code = self._process.poll()
            if code is not None:
                if not retried and any(failure in self._run_log() for failure in TRANSIENT_START_FAILURES):
                    retried = True
                    self.stop()
                    self.start()
                    continue
                raise ServerError(self._failure(f"tritonserver exited with {describe_exit(code)}"))
            if self._get("/v2/health/ready")[0] == 200:
                pending = self._unready_models(models)
                if not pending:
                    return
            if time.monotonic() > deadline:
                if self.on_load_failure == "skip" and self._get("/v2/health/ready")[0] == 200:
                    self._failed_loads += tuple(
                        SkippedEntry(name, f"not ready after {timeout:g} s", kind="failed to load") for name in pending
                    )
                    return
                raise ServerError(self._failure(f"tritonserver was not ready after {timeout:g} s"))
            time.sleep(0.1)

    def _unready_models(self, models: Sequence[str] | None) -> list[str]:
        states = self.model_states()
        if models is None:
            models = self._models_to_load() if self.model_control == "explicit" else list(states)
        failed = {n: states[n][1] for n in models if states.get(n, ("",))[0] == "UNAVAILABLE"}
        if failed and self.on_load_failure == "fail":
            reasons = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            raise ServerError(self._failure(f"models failed to load ({reasons})"))
        known = {entry.name for entry in self._failed_loads}
        self._failed_loads += tuple(
            SkippedEntry(name, f"failed to load: {(reason.strip() or 'no reason given').splitlines()[0][:300]}",
                         kind="failed to load")
            for name, reason in failed.items() if name not in known
        )
        return [n for n in models if n not in failed and self._get(f"/v2/models/{n}/ready")[0] != 200]

    def _run_log(self) -> str:
        """The log of the current (or last) start."""
        if self.log_file is None:
            return ""
        try:
            with open(self.log_file, "rb") as handle:
                handle.seek(self._log_offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, *, lines: int = 3) -> list[str]:
        """The last lines of the current (or last) start's log that say something: not the
        frames of a stack dump, each line at most 300 characters."""
        meaningful = [line.strip()[:300] for line in self._run_log().splitlines()
                      if line.strip() and not _STACK_FRAME.match(line)]
        return meaningful[-lines:]

    def _failure(self, headline: str) -> str:
        """One line: what went wrong plus the server's last error messages and the log path."""
        errors: list[str] = []
        for line in self._run_log().splitlines():
            match = _ERROR_LINE.match(line)
            if match:
                message = match.group(1).strip('"').split("\\n")[0]
                if "CudaDriverHelper" not in message:  # every GPU-less start logs this
                    errors.append(message[:300])
            elif line.startswith("error:"):
                errors.append(line[:300])
        details = f": {' | '.join(errors[-3:])}" if errors else ""
        return f"{headline}{details} (log: {self.log_file})"

    def shared_memory_regions(self) -> list[Path]:
        """The python backend's shared-memory regions of the current (or last) start."""
        if not self._shm_prefix or not SHARED_MEMORY.is_dir():
            return []
        return sorted(SHARED_MEMORY.glob(f"{self._shm_prefix}*"))

    def wait_for_exit(self, timeout: float | None = None) -> int | None:
        """Block until tritonserver exits (or `timeout` passes); return its exit code."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, *, grace_period: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after `grace_period` s; also ends leftover python stubs and
        removes this start's shared-memory regions, which a crashed server leaves behind.

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
        for region in self.shared_memory_regions():
            region.unlink(missing_ok=True)
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
            # Stopped, not closed: the error names the log, which stays until the next start
            # after this process has gone.
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
