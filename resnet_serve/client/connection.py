"""Where a Triton server is and how to reach it: address, TLS, extra headers, the admin key.

The URL's scheme decides TLS, and nothing downgrades it: `https://` (HTTP) and `grpcs://` (gRPC)
connect over TLS and verify the server's certificate (against the system's CAs, or `ca_cert`);
`http://`, `grpc://` or no scheme connect in plain text. A TLS endpoint is probed with one
handshake before any request, so a server that answers in plain text, or with a certificate
that is not trusted, is one clear error instead of a client quietly talking plain HTTP.
`insecure` skips verification (HTTP only: gRPC's TLS cannot skip it, so the CA is needed there).

Headers go with every request: an auth token for a gateway, or `Host` for KServe's routing
(on gRPC `Host` becomes the channel's authority, which is where gRPC carries it). The admin key
goes only with the calls that Triton restricts (`admin-key`, gRPC metadata
`triton-grpc-protocol-admin-key`), never with inference requests.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import grpc

from resnet_serve.errors import ClientError, first_line
from resnet_serve.triton import ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER

__all__ = [
    "DEFAULT_PORTS",
    "ConnectionOptions",
    "Endpoint",
    "Protocol",
    "parse_endpoint",
]

Protocol = Literal["http", "grpc"]
# Triton's own defaults; a server behind TLS (an ingress) is on 443 unless the URL says otherwise.
DEFAULT_HOST = "localhost"
DEFAULT_PORTS: dict[str, int] = {"http": 8000, "grpc": 8001}
_TLS_PORT = 443
# scheme → (protocol, TLS)
_SCHEMES: dict[str, tuple[Protocol, bool]] = {
    "http": ("http", False), "https": ("http", True), "grpc": ("grpc", False), "grpcs": ("grpc", True),
}
# RFC 9110's token: the characters a header name may have.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# What OpenSSL reports when the other side answers a ClientHello with something that is not TLS.
_NOT_TLS_REASONS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST",
                    "UNKNOWN_PROTOCOL", "UNEXPECTED_EOF_WHILE_READING"}


@dataclass(frozen=True)
class ConnectionOptions:
    """How to talk to a server beyond its URL.

    ``ca_cert``: a PEM file of the CA(s) that signed the server's certificate (TLS only).
    ``insecure``: accept any certificate (HTTP over TLS only). ``headers``: sent with every
    request. ``admin_key``: the key of the server's restricted APIs, sent only with those calls.
    """

    headers: Mapping[str, str] = field(default_factory=dict)
    ca_cert: Path | None = None
    insecure: bool = False
    admin_key: str | None = None

    def __post_init__(self) -> None:
        # Read-only, so that the shared default instance cannot be changed by one caller.
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))
        for name, value in self.headers.items():
            if not _HEADER_NAME.match(name):
                raise ClientError(f"{name!r} is not a valid header name")
            if any(c in value for c in "\r\n\0"):
                raise ClientError(f"the value of header {name!r} contains a line break or NUL")
        if self.ca_cert is not None and not Path(self.ca_cert).is_file():
            raise ClientError(f"CA certificate file {self.ca_cert} does not exist")


@dataclass(frozen=True)
class Endpoint:
    """One server address with everything needed to open a connection to it."""

    protocol: Protocol
    host: str
    port: int
    tls: bool
    options: ConnectionOptions = ConnectionOptions()

    @property
    def address(self) -> str:
        """`host:port`, IPv6 literals in brackets: what tritonclient and gRPC take."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def scheme(self) -> str:
        return f"{self.protocol}{'s' if self.tls else ''}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"

    @property
    def http_headers(self) -> dict[str, str]:
        return dict(self.options.headers)

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """The headers as gRPC metadata (lower-case keys); `Host` travels as the authority instead."""
        return tuple((name.lower(), value) for name, value in self.options.headers.items() if name.lower() != "host")

    @property
    def grpc_channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.default_authority", value) for name, value in self.options.headers.items()
                if name.lower() == "host"]

    @property
    def admin_headers(self) -> dict[str, str]:
        """What the restricted APIs (model repository, shared memory, logging, trace) need."""
        if not self.options.admin_key:
            return {}
        return {(ADMIN_KEY_HEADER if self.protocol == "http" else GRPC_ADMIN_KEY_HEADER): self.options.admin_key}

    def ssl_context(self, factory: Callable[..., ssl.SSLContext] = ssl.create_default_context) -> ssl.SSLContext:
        """A client context that verifies the server against ``ca_cert`` (or the system's CAs),
        or verifies nothing when ``insecure``. ``factory`` lets gevent make its own kind."""
        ca_cert = self.options.ca_cert
        try:
            context = factory(cafile=str(ca_cert) if ca_cert else None)
        except (OSError, ssl.SSLError) as error:
            raise ClientError(f"cannot read the CA certificate {ca_cert}: {first_line(error)}") from None
        if self.options.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def check_tls(self, *, timeout_s: float = 10.0) -> None:
        """One TLS handshake with the server, so that a plain-text server or an untrusted
        certificate is refused with its reason before any request is sent."""
        context = self.ssl_context()
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s) as sock, \
                    context.wrap_socket(sock, server_hostname=self.host):
                return
        except ssl.SSLCertVerificationError as error:
            skip = " or skip verification (--insecure)" if self.protocol == "http" else ""
            raise ClientError(
                f"the server at {self} presented a certificate that is not trusted ({error.verify_message}); "
                f"give the CA that signed it (--ca-cert){skip}"
            ) from None
        except ssl.SSLError as error:
            if error.reason in _NOT_TLS_REASONS or isinstance(error, ssl.SSLEOFError):
                raise ClientError(
                    f"the server at {self} does not speak TLS ({error.reason or first_line(error)}); "
                    f"use {self.protocol}:// if it is meant to be plain"
                ) from None
            raise ClientError(f"the TLS handshake with {self} failed: {first_line(error)}") from None
        except ConnectionResetError:
            raise ClientError(
                f"the server at {self} closed the connection during the TLS handshake: it does not speak TLS; "
                f"use {self.protocol}:// if it is meant to be plain"
            ) from None
        except OSError as error:
            raise ClientError(f"no Triton server answering at {self} ({first_line(error)})") from None

    def http_connection(self, *, timeout_s: float) -> http.client.HTTPConnection:
        """A keep-alive connection of the standard library (TLS when the endpoint is)."""
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout_s, context=self.ssl_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        ca_cert = self.options.ca_cert
        return grpc.ssl_channel_credentials(root_certificates=Path(ca_cert).read_bytes() if ca_cert else None)

    def grpc_channel(self, options: list[tuple[str, Any]]) -> grpc.Channel:
        options = [*options, *self.grpc_channel_options]
        if self.tls:
            return grpc.secure_channel(self.address, self.grpc_credentials(), options=options)
        return grpc.insecure_channel(self.address, options=options)

    def grpc_aio_channel(self, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        options = [*options, *self.grpc_channel_options]
        if self.tls:
            return grpc.aio.secure_channel(self.address, self.grpc_credentials(), options=options)
        return grpc.aio.insecure_channel(self.address, options=options)


def parse_endpoint(url: str | None, *, protocol: Protocol, options: ConnectionOptions | None = None) -> Endpoint:
    """The endpoint a `[scheme://]host[:port]` URL names for ``protocol``.

    Without a scheme the connection is plain; without a port, it is Triton's default for the
    protocol (443 with TLS). IPv6 literals go in brackets (`[::1]:8000`).
    """
    if protocol not in ("http", "grpc"):
        raise ClientError(f"unknown protocol {protocol!r}; choose http or grpc")
    options = options or ConnectionOptions()
    text = (url or f"{DEFAULT_HOST}:{DEFAULT_PORTS[protocol]}").strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    scheme = scheme.lower()
    if scheme and scheme not in _SCHEMES:
        raise ClientError(f"unknown scheme {scheme}:// in url {text!r}; use http://, https://, grpc:// or grpcs://")
    scheme_protocol, tls = _SCHEMES.get(scheme, (protocol, False))
    if scheme_protocol != protocol:
        raise ClientError(f"url {text!r} is for {scheme_protocol}, but the protocol is {protocol}")
    host, port = _host_and_port(rest, shown=text, default_port=_TLS_PORT if tls else DEFAULT_PORTS[protocol])
    if not tls and (options.ca_cert is not None or options.insecure):
        raise ClientError(
            f"a CA certificate or --insecure needs a TLS url ({protocol}s://…), and {text!r} is plain; "
            "refusing to connect without TLS"
        )
    if tls and options.insecure and protocol == "grpc":
        raise ClientError(
            "gRPC cannot skip certificate verification; give the server's CA (--ca-cert) instead of --insecure"
        )
    return Endpoint(protocol=protocol, host=host, port=port, tls=tls, options=options)


def _host_and_port(rest: str, *, shown: str, default_port: int) -> tuple[str, int]:
    invalid = ClientError(f"url {shown!r} is not [scheme://]host[:port] (IPv6 addresses go in brackets: [::1]:8000)")
    if not rest or any(c.isspace() for c in rest) or rest.rstrip("/").count("/") or "@" in rest:
        raise invalid
    try:
        parts = urllib.parse.urlsplit(f"//{rest.rstrip('/')}")
        host, port = parts.hostname, parts.port
    except ValueError:
        raise invalid from None
    if not host or parts.query or parts.fragment:
        raise invalid
    if rest.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise invalid from None
    return host, port or default_port
