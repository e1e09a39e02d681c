"""How a URL, headers and TLS options become an endpoint: the scheme decides TLS, never anything else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.client.connection import ConnectionOptions, Endpoint, parse_endpoint
from resnet_serve.client.perf_analyzer import connection_arguments
from resnet_serve.errors import ClientError


@pytest.mark.parametrize(
    ("url", "protocol", "expected"),
    [
        (None, "http", ("localhost", 8000, False, "http://localhost:8000")),
        (None, "grpc", ("localhost", 8001, False, "grpc://localhost:8001")),
        ("example.org:9000", "http", ("example.org", 9000, False, "http://example.org:9000")),
        ("http://example.org:9000/", "http", ("example.org", 9000, False, "http://example.org:9000")),
        ("https://example.org", "http", ("example.org", 443, True, "https://example.org:443")),
        ("HTTPS://example.org:8443", "http", ("example.org", 8443, True, "https://example.org:8443")),
        ("grpcs://example.org", "grpc", ("example.org", 443, True, "grpcs://example.org:443")),
        ("grpc://10.0.0.1:8001", "grpc", ("10.0.0.1", 8001, False, "grpc://10.0.0.1:8001")),
        ("[::1]:8000", "http", ("::1", 8000, False, "http://[::1]:8000")),
        ("https://[::1]:8443", "http", ("::1", 8443, True, "https://[::1]:8443")),
    ],
)
def test_the_scheme_decides_tls_and_the_port_has_a_default(url, protocol, expected) -> None:
    endpoint = parse_endpoint(url, protocol=protocol)

    assert (endpoint.host, endpoint.port, endpoint.tls, str(endpoint)) == expected


@pytest.mark.parametrize(
    ("url", "protocol", "reason"),
    [
        ("not a url:::", "http", r"url 'not a url:::' is not \[scheme://\]host\[:port\]"),
        ("localhost:99999", "http", "is not"),
        ("localhost:port", "http", "is not"),
        ("::1", "http", "IPv6 addresses go in brackets"),
        ("[not-ipv6]:80", "http", "is not"),
        ("http://host:80/some/path", "http", "is not"),
        ("http://user@host:80", "http", "is not"),
        ("ftp://host:21", "http", "unknown scheme ftp://"),
        ("grpc://host:8001", "http", "is for grpc, but the protocol is http"),
        ("https://host:8443", "grpc", "is for http, but the protocol is grpc"),
    ],
)
def test_a_url_that_names_no_server_is_refused_in_one_line(url, protocol, reason) -> None:
    with pytest.raises(ClientError, match=reason):
        parse_endpoint(url, protocol=protocol)


def test_tls_options_on_a_plain_url_are_refused_not_ignored(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    for options in (ConnectionOptions(ca_cert=ca), ConnectionOptions(insecure=True)):
        with pytest.raises(ClientError, match="refusing to connect without TLS"):
            parse_endpoint("http://localhost:8000", protocol="http", options=options)
    with pytest.raises(ClientError, match="gRPC cannot skip certificate verification"):
        parse_endpoint("grpcs://localhost:8001", protocol="grpc", options=ConnectionOptions(insecure=True))
    with pytest.raises(ClientError, match="does not exist"):
        ConnectionOptions(ca_cert=tmp_path / "absent.pem")


@pytest.mark.parametrize(("headers", "reason"), [
    ({"bad name": "x"}, "not a valid header name"),
    ({"": "x"}, "not a valid header name"),
    ({"X-Token": "a\r\nInjected: yes"}, "line break"),
])
def test_headers_that_would_break_a_request_are_refused(headers, reason) -> None:
    with pytest.raises(ClientError, match=reason):
        ConnectionOptions(headers=headers)


def test_headers_travel_as_http_headers_grpc_metadata_and_the_grpc_authority() -> None:
    options = ConnectionOptions(headers={"Authorization": "Bearer t0ken", "Host": "model.example.com"}, admin_key="k" * 16)
    http = parse_endpoint("localhost:8000", protocol="http", options=options)
    grpc = parse_endpoint("localhost:8001", protocol="grpc", options=options)

    assert http.http_headers == {"Authorization": "Bearer t0ken", "Host": "model.example.com"}
    # gRPC metadata keys are lower case, and HTTP/2 carries the host as :authority.
    assert grpc.grpc_metadata == (("authorization", "Bearer t0ken"),)
    assert grpc.grpc_channel_options == [("grpc.default_authority", "model.example.com")]
    assert http.admin_headers == {"admin-key": "k" * 16}
    assert grpc.admin_headers == {"triton-grpc-protocol-admin-key": "k" * 16}
    assert parse_endpoint(None, protocol="http").admin_headers == {}


def test_the_shared_default_options_cannot_be_changed() -> None:
    with pytest.raises(TypeError):
        Endpoint(protocol="http", host="h", port=1, tls=False).options.headers["X"] = "y"  # type: ignore[index]


def test_perf_analyzer_gets_the_same_tls_and_headers(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    https = parse_endpoint("https://gw:8443", protocol="http",
                           options=ConnectionOptions(ca_cert=ca, headers={"Authorization": "Bearer x"}))
    insecure = parse_endpoint("https://gw:8443", protocol="http", options=ConnectionOptions(insecure=True))
    grpcs = parse_endpoint("grpcs://gw:443", protocol="grpc", options=ConnectionOptions(ca_cert=ca))

    assert connection_arguments(https) == ["-u", "https://gw:8443", "-i", "http",
                                           f"--ssl-https-ca-certificates-file={ca}", "-H", "Authorization:Bearer x"]
    assert connection_arguments(insecure)[-2:] == ["--ssl-https-verify-peer=0", "--ssl-https-verify-host=0"]
    assert connection_arguments(grpcs) == ["-u", "gw:443", "-i", "grpc", "--ssl-grpc-use-ssl=true",
                                           f"--ssl-grpc-root-certifications-file={ca}"]
    assert connection_arguments(parse_endpoint("h:8001", protocol="grpc")) == ["-u", "h:8001", "-i", "grpc"]
    with pytest.raises(ClientError, match="cannot send headers over gRPC"):
        connection_arguments(parse_endpoint("h:8001", protocol="grpc", options=ConnectionOptions(headers={"A": "b"})))


def test_a_header_without_a_value_separator_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["classify", str(tmp_path / "x.png"), "--header", "no-separator"])

    assert result.exit_code == 2 and "expected K=V" in result.output


def test_a_url_that_is_not_one_is_one_line_and_nothing_else(tmp_path: Path) -> None:
    """Once this printed tritonclient's __del__ traceback after the right message."""
    done = subprocess.run(
        [sys.executable, "-m", "resnet_serve.cli", "classify", str(tmp_path / "x.png"), "--url", "not a url:::"],
        capture_output=True, text=True, timeout=120,
    )

    assert done.returncode == 1
    assert done.stdout == "" and done.stderr.strip() == \
        "error: url 'not a url:::' is not [scheme://]host[:port] (IPv6 addresses go in brackets: [::1]:8000)"
