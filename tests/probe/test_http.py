"""HTTP(S) probe: banners, titles, favicons, certificates, LLM servers; every error path in the probe log.

Unit tests drive ``httpx.MockTransport``; two tests use real sockets on loopback (TLS and a server
that does not speak HTTP) for what a mock cannot show.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import Kind, Observation
from collectors.probe import (
    HttpProber,
    ProbeDenied,
    ProbeProtocolError,
    ProbeRecord,
    ProbeRefused,
    ProbeTimeout,
    ProbeUnreachable,
    certificate_info,
    favicon_hash,
    map_http_error,
    parse_lmstudio_models,
    parse_ollama_tags,
    parse_openai_models,
    parse_title,
    parse_version,
    product_of_owners,
)
from fingerprints import Index, default_index
from tests.probe.helpers import gate, outcomes, self_signed_certificate

HOST = "127.0.0.20"
ICON = b"\x00\x00\x01\x00\x01\x00\x10\x10" + bytes(range(256)) * 4
Routes = dict[tuple[int, str], httpx.Response | Callable[[], httpx.Response]]


@pytest.fixture(scope="module")
def index() -> Index:
    """The shipped catalogue (and Recog when the corpus is there)."""
    return default_index()


def transport(routes: Routes, calls: list[str] | None = None) -> Callable[[], httpx.AsyncBaseTransport]:
    """A MockTransport factory answering ``(port, path)``; anything else is refused like a closed port."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.host == HOST
        port = request.url.port or 80
        if calls is not None:
            calls.append(f"{port}{request.url.path}")
        assert request.headers["user-agent"].startswith("Lanterne-probe/")
        assert request.headers["accept-encoding"] == "identity"
        answer = routes.get((port, request.url.path))
        if answer is None:
            if any(key[0] == port for key in routes):
                return httpx.Response(404, text="not found")
            raise httpx.ConnectError("refused", request=request) from ConnectionRefusedError(111, "refused")
        return answer() if callable(answer) else answer

    return lambda: httpx.MockTransport(handler)


def run(
    routes: Routes, ports: tuple[int, ...], **options: object
) -> tuple[list[Observation], list[ProbeRecord], list[str]]:
    the_gate, records = gate(**options)
    calls: list[str] = []
    prober = HttpProber(the_gate, ports=ports, transport_factory=transport(routes, calls), agent="test")
    found = asyncio.run(prober.async_probe(HOST, mac="00:11:22:33:44:55", local_ip="127.0.0.1"))
    return found, records, calls


def by_kind(observations: list[Observation]) -> dict[str, Observation]:
    return {str(obs.kind): obs for obs in observations}


# -- banners, titles, favicons ---------------------------------------------------------------------


def test_server_header_title_and_favicon() -> None:
    page = "<html><head><title>\n  Orthanc &amp; Co \u2014 Explorer </title></head></html>".encode()
    routes: Routes = {
        (80, "/"): httpx.Response(
            200, headers={"Server": "nginx/1.22.1", "Content-Type": "text/html"}, content=page
        ),
        (80, "/favicon.ico"): httpx.Response(200, headers={"Content-Type": "image/x-icon"}, content=ICON),
    }
    found, records, calls = run(routes, (80, 8081))
    seen = by_kind(found)
    assert seen["http.server"].value == "nginx/1.22.1"
    assert seen["http.title"].value == "Orthanc & Co \u2014 Explorer"
    assert seen["http.favicon"].value == hashlib.md5(ICON).hexdigest()
    assert seen["http.favicon"].attrs["size"] == len(ICON)
    server = seen["http.server"]
    # As the passive parser reports it: the server is dst (with the MAC the ARP sweep gave), we are src.
    assert (server.dst.ip, server.dst.mac, server.dst.port, server.src.ip) == (
        HOST,
        "00:11:22:33:44:55",
        80,
        "127.0.0.1",
    )
    assert (server.source, server.agent, server.attrs["status"], server.attrs["scheme"]) == (
        "probe.http",
        "test",
        200,
        "http",
    )
    assert calls == ["80/", "80/favicon.ico", "8081/"]  # 8081 refused: nothing more asked there
    assert [(r.port, r.outcome, r.detail.split(";")[0]) for r in records] == [
        (80, "ok", "GET /"),
        (80, "ok", "GET /favicon.ico"),
        (8081, "refused", "GET /"),
    ]


def test_an_html_page_at_favicon_ico_is_not_an_icon() -> None:
    routes: Routes = {
        (80, "/"): httpx.Response(200, text="hello"),
        (80, "/favicon.ico"): httpx.Response(
            200, headers={"Content-Type": "text/html"}, text="<html>app</html>"
        ),
    }
    found, _, _ = run(routes, (80,))
    assert Kind.HTTP_FAVICON not in {obs.kind for obs in found}


def test_the_matcher_reads_probe_banners(index: Index) -> None:
    if index.recog is None:
        pytest.skip("Recog is not in the shared corpus: the banner is matched by Recog's http_servers")
    routes: Routes = {(80, "/"): httpx.Response(200, headers={"Server": "Apache/2.4.57 (Debian)"}, text="x")}
    found, _, _ = run(routes, (80,))
    (evidence,) = [item for obs in found for item in index.match(obs) if item.rule.origin == "recog"]
    assert evidence.side == "dst"
    assert dict(evidence.fields)["service.product"] == "HTTPD"


@pytest.mark.parametrize(
    ("body", "content_type", "title"),
    [
        (b"<TITLE>Caf\xe9</TITLE>", "text/html; charset=iso-8859-1", "Caf\u00e9"),
        (b'<meta charset="windows-1252"><title>Caf\xe9</title>', None, "Caf\u00e9"),
        (b"<title>bad \xff utf8</title>", "text/html", "bad \ufffd utf8"),
        (b"<title>a\x07b</title>", "text/html", "a\\x07b"),
        (b"<title></title>", None, None),
        (b"<html>no title</html>", None, None),
        (b"<title>never closed" + b"x" * 10, None, "never closed" + "x" * 10),
        (b"<title>" + b"<title>" * 5000, None, "<title>" * 36 + "<tit"),
    ],
)
def test_parse_title(body: bytes, content_type: str | None, title: str | None) -> None:
    assert parse_title(body, content_type) == title


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.none() | st.text(max_size=60))
def test_parsers_never_raise_on_hostile_bytes(body: bytes, content_type: str | None) -> None:
    parse_title(body, content_type)
    parse_ollama_tags(body)
    parse_openai_models(body)
    parse_lmstudio_models(body)
    parse_version(body)
    certificate_info(body)
    assert len(favicon_hash(body)) == 32


def test_deep_json_nesting_is_refused_not_a_crash() -> None:
    assert parse_ollama_tags(b"[" * 100_000) is None


# -- local LLM servers -----------------------------------------------------------------------------


def test_ollama_on_its_port_with_version_and_models(index: Index) -> None:
    tags = {"models": [{"name": f"model-{i}:7b", "model": f"model-{i}:7b"} for i in range(20)]}
    routes: Routes = {
        (11434, "/"): httpx.Response(200, text="Ollama is running"),
        (11434, "/api/tags"): httpx.Response(200, json=tags),
        (11434, "/api/version"): httpx.Response(200, json={"version": "0.5.7"}),
    }
    found, records, calls = run(routes, (11434,))
    llm = by_kind(found)["llm.server"]
    assert llm.value == "ollama/0.5.7"
    assert llm.attrs["api"] == "ollama"
    assert llm.attrs["model_count"] == 20
    assert len(llm.attrs["models"]) == 16
    assert llm.attrs["models"][0] == "model-0:7b"
    assert calls == ["11434/", "11434/favicon.ico", "11434/api/tags", "11434/api/version"]
    assert outcomes(records) == ["ok"] * 4
    (detection,) = index.assess_all(index.match(llm))
    assert detection.product_id == "ollama"


def test_ollama_behind_another_port_is_found_by_its_start_page() -> None:
    routes: Routes = {
        (80, "/"): httpx.Response(200, text="Ollama is running"),
        (80, "/api/tags"): httpx.Response(200, json={"models": []}),
    }
    found, _, _ = run(routes, (80,))
    llm = by_kind(found)["llm.server"]
    assert (llm.value, llm.attrs["model_count"]) == ("ollama", 0)


@pytest.mark.parametrize(
    ("owner", "extra", "value", "product"),
    [
        ("vllm", {(8000, "/version"): httpx.Response(200, json={"version": "0.6.3"})}, "vllm/0.6.3", "vllm"),
        ("llamacpp", {}, "llama.cpp", "openai-compatible-server"),
        ("sglang", {}, "sglang", "openai-compatible-server"),
        ("someone", {}, "openai-compatible", "openai-compatible-server"),
    ],
)
def test_openai_compatible_servers(index: Index, owner: str, extra: Routes, value: str, product: str) -> None:
    listing = {
        "object": "list",
        "data": [{"id": "meta-llama/Llama-3.1-8B", "object": "model", "owned_by": owner}],
    }
    routes: Routes = {
        (8000, "/"): httpx.Response(404),
        (8000, "/v1/models"): httpx.Response(200, json=listing),
    }
    routes.update(extra)
    found, _, _ = run(routes, (8000,))
    llm = by_kind(found)["llm.server"]
    assert llm.value == value
    assert llm.attrs["models"] == ("meta-llama/Llama-3.1-8B",)
    (detection,) = index.assess_all(index.match(llm))
    assert detection.product_id == product


def test_lm_studio_is_confirmed_by_its_own_api(index: Index) -> None:
    listing = {
        "object": "list",
        "data": [{"id": "qwen2.5-7b", "object": "model", "owned_by": "organization_owner"}],
    }
    native = {"object": "list", "data": [{"id": "qwen2.5-7b", "type": "llm", "state": "loaded"}]}
    routes: Routes = {
        (1234, "/"): httpx.Response(200, json={"error": "Unexpected endpoint"}),
        (1234, "/v1/models"): httpx.Response(200, json=listing),
        (1234, "/api/v0/models"): httpx.Response(200, json=native),
    }
    found, _, calls = run(routes, (1234,))
    llm = by_kind(found)["llm.server"]
    assert (llm.value, llm.attrs["api"]) == ("lm-studio", "lmstudio")
    assert "1234/api/tags" in calls
    (detection,) = index.assess_all(index.match(llm))
    assert detection.product_id == "lm-studio"


def test_an_llm_port_without_an_llm_api_reports_nothing() -> None:
    routes: Routes = {
        (8080, "/"): httpx.Response(
            200, headers={"Server": "Jetty(9.4)"}, text="<title>Pump fleet manager</title>"
        ),
        (8080, "/api/tags"): httpx.Response(200, text="not json"),
        (8080, "/v1/models"): httpx.Response(200, json={"object": "nope"}),
    }
    found, records, _ = run(routes, (8080,))
    assert Kind.LLM_SERVER not in {obs.kind for obs in found}
    assert set(outcomes(records)) == {"ok"}


def test_product_of_owners() -> None:
    assert product_of_owners(frozenset({"vllm"})) == "vllm"
    assert product_of_owners(frozenset({"library"})) == "ollama"
    assert product_of_owners(frozenset()) == "openai-compatible"


# -- error paths: each a clear outcome in the probe log ------------------------------------------------


def test_timeouts_are_retried_then_the_port_is_left() -> None:
    def hang() -> httpx.Response:
        raise httpx.ReadTimeout("read timed out")

    found, records, calls = run({(80, "/"): hang}, (80,), retries=1)
    assert found == []
    assert outcomes(records) == ["timeout", "timeout"]
    assert calls == ["80/", "80/"]  # nothing else asked of a port that did not answer
    assert "no answer within the timeout" in records[0].detail


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (httpx.ConnectError("x"), "unreachable"),
        (httpx.ConnectTimeout("x"), "timeout"),
        (httpx.RemoteProtocolError("x"), "malformed"),
        (httpx.ReadError("x"), "malformed"),
        (httpx.WriteError("x"), "refused"),
        (httpx.DecodingError("x"), "malformed"),
    ],
)
def test_library_errors_map_to_outcomes(error: httpx.HTTPError, outcome: str) -> None:
    def fail() -> httpx.Response:
        raise error

    _, records, _ = run({(80, "/"): fail}, (80,), retries=0)
    assert outcomes(records) == [outcome]


def test_map_http_error_reads_the_operating_system_error() -> None:
    def wrapped(cause: BaseException) -> httpx.ConnectError:
        try:
            try:
                raise cause
            except OSError as inner:
                raise OSError("All connection attempts failed") from inner
        except OSError as outer:
            error = httpx.ConnectError("All connection attempts failed")
            error.__cause__ = outer
            return error

    assert isinstance(map_http_error(wrapped(ConnectionRefusedError(111, "refused"))), ProbeRefused)
    assert isinstance(map_http_error(wrapped(OSError(113, "No route to host"))), ProbeUnreachable)
    assert isinstance(map_http_error(wrapped(ssl.SSLError(1, "handshake"))), ProbeProtocolError)
    assert isinstance(map_http_error(httpx.PoolTimeout("x")), ProbeTimeout)


def test_a_long_answer_is_cut_and_charged_for_its_acks() -> None:
    body = b"<title>big</title>" + b"x" * 200_000
    the_gate, records = gate()
    prober = HttpProber(
        the_gate, ports=(80,), transport_factory=transport({(80, "/"): httpx.Response(200, content=body)})
    )
    found = asyncio.run(prober.async_probe(HOST))
    assert by_kind(found)["http.title"].value == "big"
    assert "32768+ bytes" in records[0].detail
    # estimate (7) + first contact (1) + ACKs of 32 KiB (11), then a new connection for the favicon
    assert the_gate.bucket.packets >= 19


def test_a_medical_device_found_mid_host_stops_the_http_probe() -> None:
    the_gate, records = gate()
    routes: Routes = {(80, "/"): httpx.Response(200, text="x"), (443, "/"): httpx.Response(200, text="y")}

    async def main() -> None:
        prober = HttpProber(the_gate, ports=(80, 443), transport_factory=transport(routes))
        the_gate.medical.mark(HOST, "infusion pump")
        with pytest.raises(ProbeDenied):
            await prober.async_probe(HOST)

    asyncio.run(main())
    assert outcomes(records) == ["denied"]


def test_dry_run_lists_every_request_it_may_send() -> None:
    _, records, calls = run({}, (80, 11434), dry_run=True)
    assert calls == []
    assert [(r.port, r.detail.split(";")[0]) for r in records] == [
        (80, "GET /"),
        (80, "GET /favicon.ico"),
        (11434, "GET /"),
        (11434, "GET /favicon.ico"),
        (11434, "GET /api/tags"),
        (11434, "GET /v1/models"),
    ]
    assert set(outcomes(records)) == {"dry_run"}


# -- real sockets on loopback ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """A self-signed certificate like a device's, as PEM files (cert, key) and DER."""
    return self_signed_certificate(
        tmp_path_factory.mktemp("tls"),
        [
            (NameOID.COUNTRY_NAME, "FR"),
            (NameOID.ORGANIZATION_NAME, "Lab Devices"),
            (NameOID.COMMON_NAME, "pump-fleet.lab"),
        ],
        serial=7,
        alt_names=[x509.DNSName("pump-fleet.lab"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )


@pytest.fixture
def loopback_server() -> Iterator[Callable[..., int]]:
    """Start asyncio servers on 127.0.0.1 inside the test's loop: returns a starter."""
    servers: list[asyncio.Server] = []

    async def start(reply: bytes, ssl_context: ssl.SSLContext | None = None) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(reply)
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


def test_tls_certificate_of_a_real_server(
    certificate: tuple[Path, Path, bytes], loopback_server: Callable[..., object]
) -> None:
    cert_path, key_path, der = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    reply = b"HTTP/1.1 200 OK\r\nServer: PumpFleet/2.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    async def main() -> tuple[list[Observation], list[ProbeRecord]]:
        port = await loopback_server(reply, context)  # type: ignore[misc]
        the_gate, records = gate()
        prober = HttpProber(the_gate, ports=(port,), tls_ports=frozenset({port}))
        return await prober.async_probe("127.0.0.1"), records

    found, records = asyncio.run(main())
    seen = by_kind(found)
    cert = seen["tls.certificate"]
    assert cert.value == "CN=pump-fleet.lab,O=Lab Devices,C=FR"
    assert cert.attrs["issuer"] == cert.value
    assert cert.attrs["self_signed"] is True
    assert cert.attrs["san"] == ("pump-fleet.lab", "127.0.0.1")
    assert cert.attrs["sha256"] == hashlib.sha256(der).hexdigest()
    assert seen["http.server"].value == "PumpFleet/2.1"
    assert seen["http.server"].src.ip == "127.0.0.1"  # our own address, read from the connection
    assert records[0].protocol == "https"
    assert "certificate" in records[0].detail


def test_a_server_that_does_not_speak_http_is_malformed(loopback_server: Callable[..., object]) -> None:
    async def main() -> list[ProbeRecord]:
        port = await loopback_server(b"\x00\xffSSH-2.0-garbage\r\n\r\n")  # type: ignore[misc]
        the_gate, records = gate(retries=0)
        await HttpProber(the_gate, ports=(port,)).async_probe("127.0.0.1")
        return records

    records = asyncio.run(main())
    assert outcomes(records) == ["malformed"]
    assert "not a valid HTTP answer" in records[0].detail


def test_certificate_info_of_garbage_is_none() -> None:
    assert certificate_info(b"\x30\x03\x02\x01\x00") is None


def test_json_fixtures_are_what_the_servers_send() -> None:
    # The shapes the parsers accept, written once (documentation more than test).
    assert parse_ollama_tags(json.dumps({"models": [{"model": "a"}]}).encode()) == (("a",), 1)
    assert parse_openai_models(b'{"object":"list","data":[]}') == ((), 0, frozenset())
    assert parse_lmstudio_models(b'{"data":[{"id":"a","type":"llm"}]}') is None  # no state: not LM Studio
    assert parse_version(b'{"version":"1.2.3 rm -rf"}') is None


def test_a_refused_port_costs_one_syn_not_a_connection() -> None:
    the_gate, _ = gate()
    prober = HttpProber(the_gate, ports=(8081, 8082), transport_factory=transport({}))
    asyncio.run(prober.async_probe(HOST))
    assert the_gate.bucket.packets == 1 + 1 + 1  # the first contact's ARP, then one SYN per port


def test_each_port_is_reported_before_the_next_is_asked() -> None:
    the_gate, records = gate()
    routes: Routes = {
        (80, "/"): httpx.Response(200, headers={"Server": "PumpWeb/1.0"}, text="pump"),
        (443, "/"): httpx.Response(200, text="never asked"),
    }

    def on_found(found: list[Observation]) -> None:
        # What the sweep does when a port's answer names a medical maker.
        assert [str(obs.kind) for obs in found] == ["http.server"]
        the_gate.medical.mark(HOST, "infusion pump web server")

    prober = HttpProber(the_gate, ports=(80, 443), transport_factory=transport(routes))
    with pytest.raises(ProbeDenied):
        asyncio.run(prober.async_probe(HOST, on_found=on_found))
    assert [(r.port, str(r.outcome)) for r in records] == [(80, "ok"), (80, "ok"), (443, "denied")]
