"""What the embedded server is told before it starts: where to listen, which APIs are restricted,
whose shared memory is whose; and the arithmetic of restarting and retrying. No server runs here."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from resnet_serve.client.retries import Retries
from resnet_serve.errors import ClientError, ServerError
from resnet_serve.triton.server import (
    LISTEN_PORTS_FROM,
    TritonServer,
    _ephemeral_ports_start,
    check_can_listen,
    describe_exit,
    find_free_ports,
    find_triton_installation,
    generate_admin_key,
    resolve_listen_address,
)
from resnet_serve.triton.supervisor import RestartPolicy

KEY = "a-test-admin-key-of-32-characters"


@pytest.mark.parametrize(("address", "ip", "http", "grpc", "client"), [
    ("127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1", "localhost"),
    ("localhost", "127.0.0.1", "127.0.0.1", "127.0.0.1", "localhost"),
    ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0", "localhost"),
    # Triton 2.51's HTTP endpoint reads IPv6 as "ipv6:<address>", its gRPC one needs brackets.
    ("::1", "::1", "ipv6:::1", "[::1]", "[::1]"),
    ("[::1]", "::1", "ipv6:::1", "[::1]", "[::1]"),
    ("::", "::", "ipv6:::", "[::]", "[::1]"),
])
def test_addresses_become_literals_in_the_form_each_endpoint_parses(address, ip, http, grpc, client) -> None:
    listen = resolve_listen_address(address)

    assert (listen.ip, listen.http_argument, listen.grpc_argument, listen.client_host) == (ip, http, grpc, client)


@pytest.mark.parametrize(("address", "reason"), [
    ("999.1.1.1", "'999.1.1.1' is not a valid IP address"),
    ("no-such-host.invalid", "cannot resolve the address 'no-such-host.invalid'"),
])
def test_an_address_that_is_none_is_refused_as_what_it_is(address, reason) -> None:
    with pytest.raises(ServerError, match=reason):
        resolve_listen_address(address)


def test_bind_errors_are_reported_as_what_they_are() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerError, match=f"http port {port} on 127.0.0.1 is already in use"):
            check_can_listen(resolve_listen_address("127.0.0.1"), port, label="http")
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    with pytest.raises(ServerError, match="grpc port 8001 on 192.0.2.1 cannot be used: 192.0.2.1 is not an address of this machine"):
        check_can_listen(resolve_listen_address("192.0.2.1"), 8001, label="grpc")


def test_the_command_restricts_the_admin_apis_and_names_its_own_shared_memory(tmp_path: Path) -> None:
    server = TritonServer(repository=tmp_path, address="::1", admin_key=KEY)
    server._shm_prefix = "triton_python_backend_shm_region_resnet_serve_test_"
    command = server.command(find_triton_installation(), tmp_path, model_repository=tmp_path)

    apis = "model-repository,shared-memory,logging,trace"
    assert f"--http-restricted-api={apis}:admin-key={KEY}" in command
    assert f"--grpc-restricted-protocol={apis}:admin-key={KEY}" in command
    assert "--backend-config=python,shm-region-prefix-name=triton_python_backend_shm_region_resnet_serve_test_" in command
    assert {"--http-address=ipv6:::1", "--grpc-address=[::1]", "--metrics-address=ipv6:::1"} <= set(command)
    assert not any("restricted" in arg for arg in TritonServer(repository=tmp_path).command(
        find_triton_installation(), tmp_path, model_repository=tmp_path))


@pytest.mark.parametrize("key", ["short", "has space in it, sixteen+", "has:colon:and=equals:x"])
def test_an_admin_key_triton_would_misread_is_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ServerError, match="an admin key needs at least 16 characters"):
        TritonServer(repository=tmp_path, admin_key=key)


def test_generated_admin_keys_are_accepted_and_differ(tmp_path: Path) -> None:
    keys = {generate_admin_key() for _ in range(3)}
    assert len(keys) == 3
    for key in keys:
        assert TritonServer(repository=tmp_path, admin_key=key).admin_key == key


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(1) == "code 1"
    assert describe_exit(-11) == "signal 11 (SIGSEGV)"
    assert describe_exit(-6) == "signal 6 (SIGABRT)"


def test_restart_backoff_doubles_up_to_its_ceiling() -> None:
    policy = RestartPolicy(first_backoff_s=1.0, max_backoff_s=5.0)
    assert [policy.backoff_s(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    with pytest.raises(ServerError, match="a restart policy needs"):
        RestartPolicy(max_restarts=-1)


def test_retries_try_again_until_a_call_succeeds_or_they_run_out() -> None:
    failures = iter([ClientError("refused"), ClientError("refused")])

    def flaky() -> str:
        failure = next(failures, None)
        if failure:
            raise failure
        return "answered"

    retried: list[int] = []
    retries = Retries(count=2, first_backoff_s=0.0, max_backoff_s=0.0)
    assert retries.call(flaky, before_retry=lambda: retried.append(1)) == "answered" and len(retried) == 2
    with pytest.raises(ClientError, match="refused"):
        Retries(count=1, first_backoff_s=0.0, max_backoff_s=0.0).call(lambda: (_ for _ in ()).throw(ClientError("refused")))
    # A stop during the backoff ends the retries at once, with the last error.
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(ClientError, match="refused"):
        Retries(count=5, first_backoff_s=60.0, max_backoff_s=60.0).call(
            lambda: (_ for _ in ()).throw(ClientError("refused")), stopping=stopping)
    assert [Retries(count=5).backoff_s(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]


def test_free_ports_are_drawn_below_the_ephemeral_range_where_outgoing_connections_take_theirs() -> None:
    ports = find_free_ports(3)
    assert len(set(ports)) == 3
    assert all(LISTEN_PORTS_FROM <= port < _ephemeral_ports_start() for port in ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
