"""TLS and headers end to end: classify, evaluate and bench (both engines) through a real
TLS-terminating proxy before the real embedded tritonserver, as a gateway or an ingress would
put one.

The certificates are made here: a CA, a server certificate it signs for localhost, and another
CA that signed nothing. The proxy (Python's ssl, ALPN h2 and http/1.1, so gRPC works through it)
forwards the decrypted bytes to Triton's plain ports and keeps the HTTP request heads it saw.
Triton itself requires a header for inference (`--http-restricted-api=inference:x-api-key=…`,
and on gRPC the metadata `triton-grpc-protocol-x-api-key`), so a request passes only when our
client really sends the headers it was given.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from PIL import Image
from samples import fashion_test_set
from tiny_onnx import CLASS_NAMES, PREPROCESSING, export_tiny_classifier, write_entry
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.triton.server import TritonServer, find_free_ports
from resnet_serve.triton.serving import ONNXRUNTIME

pytestmark = pytest.mark.triton

API_KEY = "x-api-key"
TOKEN = "t0ken-for-the-tls-tests"
HTTP_HEADER = f"{API_KEY}={TOKEN}"
GRPC_HEADER = f"triton-grpc-protocol-{API_KEY}={TOKEN}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(folder: Path, name: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path, key, certificate


def make_server_certificate(folder: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsProxy:
    """Terminates TLS on a port of its own and forwards the plain bytes to `backend_port`."""

    def __init__(self, *, backend_port: int, certificate: Path, key: Path) -> None:
        self.backend_port = backend_port
        self.port = find_free_ports(1)[0]
        self.heads: list[bytes] = []
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(certificate, key)
        self._context.set_alpn_protocols(["h2", "http/1.1"])
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port, ssl=self._context))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError:
            client_writer.close()
            return

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if record and data[:5] in (b"POST ", b"GET /"):
                        self.heads.append(data.split(b"\r\n\r\n")[0])
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_reader, backend_writer, True), pipe(backend_reader, client_writer, False))

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("certificates")
    ca, ca_key, ca_certificate = make_ca(folder, "test-ca")
    wrong_ca, _, _ = make_ca(folder, "another-ca")
    certificate, key = make_server_certificate(folder, ca_key, ca_certificate)
    return {"ca": ca, "wrong_ca": wrong_ca, "certificate": certificate, "key": key}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("tls")
    export_tiny_classifier(root / "tiny.onnx")
    write_entry(repository=root / "repository", name="tiny", model_file=root / "tiny.onnx",
                      class_names=CLASS_NAMES, preprocessing=PREPROCESSING, metadata={}, target=ONNXRUNTIME)
    http, grpc, metrics = find_free_ports(3)
    with TritonServer(
        repository=root / "repository", http_port=http, grpc_port=grpc, metrics_port=metrics,
        log_file=root / "tritonserver.log",
        extra_args=[f"--http-restricted-api=inference:{API_KEY}={TOKEN}",
                    f"--grpc-restricted-protocol=inference:{API_KEY}={TOKEN}"],
    ) as running:
        yield running


@pytest.fixture(scope="module")
def proxies(server: TritonServer, certificates: dict[str, Path]) -> Iterator[dict[str, TlsProxy]]:
    running = {protocol: TlsProxy(backend_port=server.ports[protocol], certificate=certificates["certificate"],
                                  key=certificates["key"]) for protocol in ("http", "grpc")}
    yield running
    for proxy in running.values():
        proxy.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("image") / "shirt.png"
    Image.fromarray(fashion_test_set().images[0]).save(path)
    return path


def run(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(arguments))
    return result.exit_code, result.output


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tls_with_the_ca_classifies_and_sends_the_headers(proxies, certificates, image, protocol) -> None:
    scheme, header = ("https", HTTP_HEADER) if protocol == "http" else ("grpcs", GRPC_HEADER)
    url = f"{scheme}://localhost:{proxies[protocol].port}"

    code, output = run("classify", str(image), "-m", "tiny", "-p", protocol, "--url", url,
                       "--ca-cert", str(certificates["ca"]), "--header", header)

    assert code == 0, output
    assert output.startswith(f"{image}: ")
    # Without the header, Triton refuses the inference: the header above really travelled.
    code, output = run("classify", str(image), "-m", "tiny", "-p", protocol, "--url", url,
                       "--ca-cert", str(certificates["ca"]))
    assert code == 1 and "restricted" in output, output
    if protocol == "http":
        assert any(f"{API_KEY}: {TOKEN}".encode() in head for head in proxies["http"].heads)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("trust", ["system CAs", "another CA"])
def test_a_certificate_that_is_not_trusted_is_refused(proxies, certificates, image, protocol, trust) -> None:
    scheme = "https" if protocol == "http" else "grpcs"
    ca = ["--ca-cert", str(certificates["wrong_ca"])] if trust == "another CA" else []

    code, output = run("classify", str(image), "-m", "tiny", "-p", protocol,
                       "--url", f"{scheme}://localhost:{proxies[protocol].port}", *ca)

    assert code == 1 and len(output.strip().splitlines()) == 1, output
    assert f"the server at {scheme}://localhost:{proxies[protocol].port} presented a certificate that is not trusted" in output


def test_insecure_encrypts_without_verifying(proxies, image) -> None:
    code, output = run("classify", str(image), "-m", "tiny", "--url", f"https://localhost:{proxies['http'].port}",
                       "--insecure", "--header", HTTP_HEADER)

    assert code == 0, output


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tls_to_a_plain_server_is_refused_never_downgraded(server, certificates, image, protocol) -> None:
    scheme = "https" if protocol == "http" else "grpcs"
    url = f"{scheme}://{getattr(server.urls, protocol)}"

    code, output = run("classify", str(image), "-m", "tiny", "-p", protocol, "--url", url,
                       "--ca-cert", str(certificates["ca"]))

    assert code == 1 and f"the server at {url} does not speak TLS" in output, output


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bench_and_evaluate_through_tls_with_headers(proxies, certificates, protocol, tmp_path) -> None:
    scheme, header = ("https", HTTP_HEADER) if protocol == "http" else ("grpcs", GRPC_HEADER)
    connection = ["--protocol", protocol, "--url", f"{scheme}://localhost:{proxies[protocol].port}", "-m", "tiny",
                  "--ca-cert", str(certificates["ca"]), "--header", header]

    code, output = run("bench", *connection, "--concurrency", "1", "--warmup", "0.2", "--measurement-interval", "300",
                       "--stability-percentage", "1000", "--json", str(tmp_path / "bench.json"))
    assert code == 0, output
    assert json.loads((tmp_path / "bench.json").read_text())["results"][0]["requests"] > 0
    code, output = run("evaluate", *connection, "--limit", "32", "--batch-size", "16")
    assert code == 0 and "on 32 images" in output, output


def test_perf_analyzer_through_tls_with_headers(proxies, certificates, tmp_path) -> None:
    code, output = run("bench", "--engine", "perf_analyzer", "--protocol", "http", "-m", "tiny",
                       "--url", f"https://localhost:{proxies['http'].port}", "--ca-cert", str(certificates["ca"]),
                       "--header", HTTP_HEADER, "--concurrency", "1", "--measurement-interval", "300",
                       "--stability-percentage", "1000", "--json", str(tmp_path / "bench.json"))

    assert code == 0, output
    assert json.loads((tmp_path / "bench.json").read_text())["results"][0]["inferences_per_second"] > 0
