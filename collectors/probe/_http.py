"""HTTP(S) banners and local LLM servers, asked with httpx on the usual ports.

For each open port, in this order (each request is one probe through the gate):

1. ``GET /``: the ``Server`` header (``http.server``), the page title (``http.title``, from the
   first ``MAX_PAGE`` bytes of an HTML answer) and, over TLS, the certificate (``tls.certificate``:
   subject, issuer, SAN, expiry, SHA-256). A refused, silent or non-HTTP port is left at that.
2. ``GET /favicon.ico``: its MD5 as hex (``http.favicon``), the form Recog's ``favicons.xml`` uses.
3. On LLM ports (or when ``/`` says "Ollama is running"): ``GET /api/tags`` (Ollama, then
   ``/api/version``), else ``GET /v1/models`` (any OpenAI-compatible server; ``owned_by`` tells
   vLLM, llama.cpp, SGLang and Ollama apart, ``/version`` gives vLLM's version), and LM Studio's
   ``GET /api/v0/models`` when the listing or the port suggests it. The result is ``llm.server``
   (``ollama/0.5.7``, ``lm-studio``, ``vllm/0.6.3``, ``llama.cpp``, ``sglang``,
   ``openai-compatible``) with the first model names.

Only these fixed paths are requested, never a page a link points to. Bodies are read up to a
bound and decompression is refused (``Accept-Encoding: identity``). Certificates are not verified:
the probe records them, it does not trust them. Observations follow the passive HTTP ones: the
server is ``dst`` (IP, MAC when the ARP sweep gave it, port), the prober's own address ``src``.

The transport is injected (``transport_factory``): unit tests pass ``httpx.MockTransport``.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import html
import json
import math
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from collectors._observation import NO_ENDPOINT, Endpoint, Kind, Observation, printable
from collectors.probe._errors import (
    ProbeDenied,
    ProbeDryRun,
    ProbeError,
    ProbeProtocolError,
    ProbeRefused,
    ProbeTimeout,
    ProbeUnreachable,
)
from collectors.probe._gate import Probe, ProbeTicket, SafetyGate

SOURCE: Final = "probe.http"
#: Web ports, then the usual ports of local LLM servers (Ollama 11434, LM Studio 1234, vLLM 8000).
DEFAULT_HTTP_PORTS: Final = (80, 443, 8080, 8443, 11434, 1234, 8000)
DEFAULT_TLS_PORTS: Final = frozenset({443, 8443})
#: Ports where the LLM APIs are asked (llama.cpp's server listens on 8080 by default).
DEFAULT_LLM_PORTS: Final = frozenset({11434, 1234, 8000, 8080})
USER_AGENT: Final = "Lanterne-probe/0.1 (asset inventory; every request is in the probe log)"
#: Bytes read of a start page (the title is near the top), of a favicon, of an API listing.
MAX_PAGE: Final = 32 * 1024
MAX_FAVICON: Final = 100 * 1024
MAX_JSON: Final = 256 * 1024
#: Model names kept per server.
MAX_MODELS: Final = 16
#: Packets of a request on a new connection (SYN and its retransmit, ACK, request, ACK of the
#: answer, FIN, last ACK), the TLS handshake's extra flights, and a request on a kept-alive one.
NEW_CONNECTION_PACKETS: Final = 7
TLS_PACKETS: Final = 3
KEPT_ALIVE_PACKETS: Final = 2
#: Bytes of answer per ACK the kernel sends (delayed ACKs: one per two full segments).
_BYTES_PER_ACK: Final = 2 * 1460

_VERSION: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}")
_CHARSET: Final = re.compile(rb"""<meta[^>]{0,200}?charset=["']?([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)
_SPACES: Final = re.compile(r"\s+")
_UNREACHABLE_ERRNOS: Final = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What a server's certificate says about it."""

    subject: str
    issuer: str
    san: tuple[str, ...]
    not_after: str
    sha256: str
    self_signed: bool


@dataclass(frozen=True, slots=True)
class LlmServer:
    """A local LLM server recognised by its API."""

    product: str
    """``ollama``, ``lm-studio``, ``vllm``, ``llama.cpp`` or ``openai-compatible``."""
    api: str
    """Which API answered: ``ollama``, ``openai``, ``lmstudio``."""
    version: str | None = None
    models: tuple[str, ...] = ()
    model_count: int = 0

    @property
    def value(self) -> str:
        """The Observation value: ``product`` or ``product/version``."""
        return f"{self.product}/{self.version}" if self.version else self.product


@dataclass(slots=True)
class HttpAnswer:
    """One answer, bounded: status, the headers the probe uses, the start of the body."""

    status: int
    server: str | None
    content_type: str | None
    body: bytes
    truncated: bool
    certificate: bytes | None = None
    local_ip: str | None = None
    closes: bool = False


# -- pure parsers (unit-tested on bytes) ------------------------------------------------------------


def parse_title(body: bytes, content_type: str | None = None) -> str | None:
    """The text of the first ``<title>`` of an HTML page (entities decoded, spaces collapsed)."""
    head = body[:MAX_PAGE]
    lowered = head.lower()
    start = lowered.find(b"<title")
    if start < 0:
        return None
    opened = lowered.find(b">", start)
    if opened < 0:
        return None
    end = lowered.find(b"</title", opened)
    raw = head[opened + 1 : end if end >= 0 else opened + 1 + 512]
    text = raw[:2048].decode(_charset(head, content_type), "replace")
    title = _SPACES.sub(" ", html.unescape(text)).strip()
    return printable(title, 256) or None


def _charset(head: bytes, content_type: str | None) -> str:
    """The page's encoding from its Content-Type or a ``<meta charset>``; UTF-8 otherwise."""
    candidates: list[str] = []
    if content_type:
        for part in content_type.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset":
                candidates.append(value.strip().strip("\"'"))
    if found := _CHARSET.search(head[:4096]):
        candidates.append(found.group(1).decode("ascii", "replace"))
    for name in candidates:
        with contextlib.suppress(LookupError):
            return codecs.lookup(name).name
    return "utf-8"


def favicon_hash(body: bytes) -> str:
    """MD5 of a favicon as lower-case hex (what Recog's ``favicons.xml`` patterns are written in)."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def certificate_info(der: bytes) -> CertificateInfo | None:
    """Subject, issuer, SAN, expiry and SHA-256 of a DER certificate (None if it does not parse)."""
    from cryptography import x509  # noqa: PLC0415 - only HTTPS answers need it
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415

    try:
        cert = x509.load_der_x509_certificate(der)
        subject = cert.subject.rfc4514_string()
        issuer = cert.issuer.rfc4514_string()
        san: list[str] = []
        with contextlib.suppress(x509.ExtensionNotFound):
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            san.extend(names.get_values_for_type(x509.DNSName))
            san.extend(str(ip) for ip in names.get_values_for_type(x509.IPAddress))
        return CertificateInfo(
            subject=subject,
            issuer=issuer,
            san=tuple(san[:16]),
            not_after=cert.not_valid_after_utc.isoformat(),
            sha256=cert.fingerprint(hashes.SHA256()).hex(),
            self_signed=cert.issuer == cert.subject,
        )
    except (ValueError, TypeError):
        return None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting
        return None


def _names(items: object, keys: Sequence[str]) -> tuple[list[str], int] | None:
    """Model names from a list of objects (first of ``keys`` present), and how many there are."""
    if not isinstance(items, list):
        return None
    names: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        name = next((item[key] for key in keys if isinstance(item.get(key), str)), None)
        if name and len(names) < MAX_MODELS:
            names.append(printable(name, 128))
    return names, len(items)


def parse_ollama_tags(body: bytes) -> tuple[tuple[str, ...], int] | None:
    """Ollama's ``GET /api/tags``: ``{"models": [{"name": ...}, ...]}``; None if it is not that."""
    data = _json(body)
    if not isinstance(data, dict) or "models" not in data:
        return None
    found = _names(data["models"], ("name", "model"))
    return None if found is None else (tuple(found[0]), found[1])


def parse_openai_models(body: bytes) -> tuple[tuple[str, ...], int, frozenset[str]] | None:
    """An OpenAI-style ``GET /v1/models`` listing: model ids, their count, the ``owned_by`` values."""
    data = _json(body)
    if not isinstance(data, dict) or data.get("object") != "list":
        return None
    items = data.get("data")
    found = _names(items, ("id",))
    if found is None:
        return None
    assert isinstance(items, list)
    owners = frozenset(
        printable(item["owned_by"], 64) for item in items[:256] if isinstance(item.get("owned_by"), str)
    )
    return tuple(found[0]), found[1], owners


def parse_lmstudio_models(body: bytes) -> tuple[tuple[str, ...], int] | None:
    """LM Studio's ``GET /api/v0/models``: a listing whose entries say their ``type`` and ``state``."""
    data = _json(body)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return None
    items = data["data"]
    if not all(isinstance(item, dict) and "type" in item and "state" in item for item in items):
        return None
    found = _names(items, ("id",))
    return None if found is None else (tuple(found[0]), found[1])


def parse_version(body: bytes) -> str | None:
    """``{"version": "0.5.7"}`` (Ollama's ``/api/version``, vLLM's ``/version``)."""
    data = _json(body)
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) and _VERSION.fullmatch(version) else None


def product_of_owners(owners: frozenset[str]) -> str:
    """Which server an OpenAI-style listing comes from, by its ``owned_by`` values."""
    if "vllm" in owners:
        return "vllm"
    if "llamacpp" in owners:
        return "llama.cpp"
    if "sglang" in owners:
        return "sglang"
    if "library" in owners:  # Ollama's OpenAI-compatible endpoint
        return "ollama"
    if "organization_owner" in owners:  # LM Studio's OpenAI-compatible endpoint
        return "lm-studio"
    return "openai-compatible"


# -- errors ---------------------------------------------------------------------------------------


def _os_error(exc: BaseException) -> OSError | None:
    """The operating system's error behind an httpx exception, if any (bounded walk of the chain)."""
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            return None
        if isinstance(current, OSError) and current.errno is not None:
            return current
        current = current.__cause__ or current.__context__
    return None


def _tls_failure(exc: BaseException) -> bool:
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            return False
        if isinstance(current, ssl.SSLError):
            return True
        current = current.__cause__ or current.__context__
    return False


def map_http_error(exc: httpx.HTTPError) -> ProbeError:
    """The ProbeError for an httpx exception (the caller raises it ``from exc``)."""
    if isinstance(exc, httpx.TimeoutException):
        return ProbeTimeout("no answer within the timeout")
    if isinstance(exc, httpx.ConnectError):
        os_error = _os_error(exc)
        if isinstance(os_error, ConnectionRefusedError):
            return ProbeRefused("connection refused (TCP reset)")
        if os_error is not None and os_error.errno in _UNREACHABLE_ERRNOS:
            return ProbeUnreachable("host unreachable")
        if _tls_failure(exc):
            return ProbeProtocolError("TLS handshake failed")
        return ProbeUnreachable("could not connect")
    if isinstance(exc, httpx.ProtocolError | httpx.DecodingError | httpx.TooManyRedirects):
        return ProbeProtocolError("not a valid HTTP answer")
    if isinstance(exc, httpx.ReadError):
        return ProbeProtocolError("connection closed during the answer")
    if isinstance(exc, httpx.WriteError):
        return ProbeRefused("connection reset")
    return ProbeError(f"HTTP error ({type(exc).__name__})")


# -- the prober -----------------------------------------------------------------------------------


def probe_ssl_context() -> ssl.SSLContext:
    """A TLS client context that accepts any certificate and old devices' protocols (it only looks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with contextlib.suppress(ValueError):
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with contextlib.suppress(ssl.SSLError):
        # Old clinical devices still serve TLS 1.0 with short keys: we want their certificate.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


class HttpProber:
    """Asks the HTTP(S) ports of hosts for banners, titles, favicons, certificates and LLM APIs."""

    def __init__(
        self,
        gate: SafetyGate,
        *,
        ports: Sequence[int] = DEFAULT_HTTP_PORTS,
        tls_ports: frozenset[int] = DEFAULT_TLS_PORTS,
        llm_ports: frozenset[int] = DEFAULT_LLM_PORTS,
        transport_factory: Callable[[], httpx.AsyncBaseTransport] | None = None,
        agent: str = "lanterne",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gate = gate
        self.ports = tuple(ports)
        self.tls_ports = tls_ports
        self.llm_ports = llm_ports
        self.agent = agent
        self._transport_factory = transport_factory
        self._clock = clock
        self._ssl: ssl.SSLContext | None = None

    def _transport(self) -> httpx.AsyncBaseTransport:
        if self._transport_factory is not None:
            return self._transport_factory()
        if self._ssl is None:
            self._ssl = probe_ssl_context()
        return httpx.AsyncHTTPTransport(verify=self._ssl, retries=0)

    async def async_probe(
        self,
        host: str,
        *,
        mac: str | None = None,
        local_ip: str | None = None,
        on_found: Callable[[list[Observation]], None] | None = None,
    ) -> list[Observation]:
        """Every observation the HTTP ports of ``host`` give; ProbeDenied stops it (the gate said so).

        ``on_found`` sees each port's observations as soon as the port is done: the caller may tell
        the gate the host is a medical device before the next port is asked.
        """
        timeout = self.gate.policy.timeout
        client = httpx.AsyncClient(
            transport=self._transport(),
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"},
            follow_redirects=False,
            trust_env=False,  # never through a proxy: the probe goes to the device or nowhere
        )
        session = _HostSession(self, client, host, mac, local_ip)
        try:
            for port in self.ports:
                before = len(session.out)
                await session.probe_port(port)
                if on_found is not None and len(session.out) > before:
                    on_found(session.out[before:])
        finally:
            await client.aclose()
        return session.out


@dataclass(slots=True)
class _HostSession:
    """The requests to one host: which connections are open (for the packet estimate), what was seen."""

    prober: HttpProber
    client: httpx.AsyncClient
    host: str
    mac: str | None
    local_ip: str | None
    out: list[Observation] = field(default_factory=list)
    open_ports: set[int] = field(default_factory=set)

    async def probe_port(self, port: int) -> None:
        """Ask one port (module docstring, steps 1 to 3)."""
        scheme = "https" if port in self.prober.tls_ports else "http"
        try:
            root = await self._get(port, scheme, "/", MAX_PAGE)
        except ProbeDryRun:
            root = None
        except ProbeDenied:
            raise
        except ProbeError:
            return
        ollama_hint = False
        if root is not None:
            self._observe_root(root, port, scheme)
            ollama_hint = root.body.lstrip().startswith(b"Ollama is running")
        favicon = await self._try_get(port, scheme, "/favicon.ico", MAX_FAVICON)
        # An HTML page at /favicon.ico is a catch-all route, not an icon.
        is_icon = favicon is not None and not (favicon.content_type or "").lower().startswith("text/")
        if (
            is_icon
            and favicon is not None
            and favicon.status == 200
            and favicon.body
            and not favicon.truncated
        ):
            self._emit(
                Kind.HTTP_FAVICON,
                favicon_hash(favicon.body),
                port,
                scheme,
                {"size": len(favicon.body)},
                favicon,
            )
        if port in self.prober.llm_ports or ollama_hint:
            await self._llm(port, scheme)

    def _observe_root(self, root: HttpAnswer, port: int, scheme: str) -> None:
        attrs: dict[str, object] = {"status": root.status}
        if root.server:
            self._emit(Kind.HTTP_SERVER, root.server, port, scheme, attrs, root)
        is_html = "html" in (root.content_type or "").lower() or root.body.lstrip()[:1] == b"<"
        if is_html and (title := parse_title(root.body, root.content_type)):
            self._emit(Kind.HTTP_TITLE, title, port, scheme, attrs, root)
        if root.certificate and (cert := certificate_info(root.certificate)) is not None:
            cert_attrs: dict[str, object] = {
                "issuer": cert.issuer,
                "san": cert.san,
                "not_after": cert.not_after,
                "sha256": cert.sha256,
                "self_signed": cert.self_signed,
            }
            self._emit(
                Kind.TLS_CERTIFICATE, cert.subject or "(empty subject)", port, scheme, cert_attrs, root
            )

    async def _llm(self, port: int, scheme: str) -> None:
        tags = await self._try_get(port, scheme, "/api/tags", MAX_JSON)
        if tags is not None and tags.status == 200 and (ollama := parse_ollama_tags(tags.body)) is not None:
            about = await self._try_get(port, scheme, "/api/version", 4096)
            version = parse_version(about.body) if about is not None and about.status == 200 else None
            self._emit_llm(LlmServer("ollama", "ollama", version, ollama[0], ollama[1]), port, scheme, tags)
            return
        listing = await self._try_get(port, scheme, "/v1/models", MAX_JSON)
        parsed = None
        if listing is not None and listing.status == 200:
            parsed = parse_openai_models(listing.body)
        product = product_of_owners(parsed[2]) if parsed is not None else None
        if product in {"lm-studio", "openai-compatible"} or (parsed is None and port == 1234):
            native = await self._try_get(port, scheme, "/api/v0/models", MAX_JSON)
            if native is not None and native.status == 200 and (lm := parse_lmstudio_models(native.body)):
                self._emit_llm(LlmServer("lm-studio", "lmstudio", None, lm[0], lm[1]), port, scheme, native)
                return
        if parsed is None or product is None or listing is None:
            return
        version = None
        if product == "vllm":
            about = await self._try_get(port, scheme, "/version", 4096)
            version = parse_version(about.body) if about is not None and about.status == 200 else None
        self._emit_llm(LlmServer(product, "openai", version, parsed[0], parsed[1]), port, scheme, listing)

    def _emit_llm(self, server: LlmServer, port: int, scheme: str, answer: HttpAnswer) -> None:
        attrs: dict[str, object] = {
            "api": server.api,
            "models": server.models,
            "model_count": server.model_count,
        }
        self._emit(Kind.LLM_SERVER, server.value, port, scheme, attrs, answer)

    def _emit(
        self, kind: Kind, value: str, port: int, scheme: str, attrs: dict[str, object], answer: HttpAnswer
    ) -> None:
        local = answer.local_ip or self.local_ip
        src = Endpoint(ip=local) if local else NO_ENDPOINT
        dst = Endpoint(ip=self.host, mac=self.mac, port=port)
        full = {**attrs, "scheme": scheme}
        when = self.prober._clock()
        self.out.append(Observation(when, kind, value, src, dst, full, SOURCE, self.prober.agent))

    async def _try_get(self, port: int, scheme: str, path: str, limit: int) -> HttpAnswer | None:
        """A follow-up request: None when it gives nothing (it is in the probe log either way)."""
        try:
            return await self._get(port, scheme, path, limit)
        except ProbeDenied:
            raise
        except ProbeError:
            return None

    async def _get(self, port: int, scheme: str, path: str, limit: int) -> HttpAnswer:
        new = port not in self.open_ports
        packets = KEPT_ALIVE_PACKETS
        if new:
            packets = NEW_CONNECTION_PACKETS + (TLS_PACKETS if scheme == "https" else 0)
        probe = Probe(self.host, scheme, port, f"GET {path}", packets=packets)
        url = f"{scheme}://{_url_host(self.host)}:{port}{path}"

        async def action(ticket: ProbeTicket) -> HttpAnswer:
            self.open_ports.add(port)
            try:
                answer = await _fetch(self.client, url, limit)
            except httpx.HTTPError as exc:
                self.open_ports.discard(port)
                error = map_http_error(exc)
                if new and isinstance(error, ProbeRefused | ProbeUnreachable):
                    # A reset answered the SYN (an ICMP error may come after its retransmit): no more sent.
                    ticket.refund(packets - (1 if isinstance(error, ProbeRefused) else 2))
                raise error from exc
            # ACKs of a longer answer, beyond the one counted in the estimate.
            ticket.charge(max(0, math.ceil(len(answer.body) / _BYTES_PER_ACK) - 1))
            if answer.closes or answer.truncated:
                self.open_ports.discard(port)
            ticket.note(_summary(answer))
            return answer

        return await self.prober.gate.run(probe, action)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _summary(answer: HttpAnswer) -> str:
    parts = [f"HTTP {answer.status}", f"{len(answer.body)}{'+' if answer.truncated else ''} bytes"]
    if answer.server:
        parts.append("Server header")
    if answer.certificate:
        parts.append("certificate")
    return ", ".join(parts)


async def _fetch(client: httpx.AsyncClient, url: str, limit: int) -> HttpAnswer:
    """GET ``url`` and read at most ``limit`` bytes of the body."""
    async with client.stream("GET", url) as response:
        certificate = None
        local_ip = None
        stream = response.extensions.get("network_stream")
        if stream is not None:
            ssl_object = stream.get_extra_info("ssl_object")
            if ssl_object is not None:
                certificate = ssl_object.getpeercert(binary_form=True)
            client_addr = stream.get_extra_info("client_addr")
            if isinstance(client_addr, tuple) and client_addr:
                local_ip = str(client_addr[0])
        body = bytearray()
        truncated = False
        # Raw bytes: a body sent compressed despite "identity" is not inflated (no decompression bomb).
        # A response built whole (httpx.MockTransport) has no stream left to read.
        chunks = _already_read(response) if response.is_stream_consumed else response.aiter_raw()
        async for chunk in chunks:
            body += chunk
            if len(body) >= limit:
                truncated = True  # the rest is not read: the connection is not reused
                del body[limit:]
                break
        headers = response.headers
        server = headers.get("server")
        return HttpAnswer(
            status=response.status_code,
            server=printable(server.strip(), 256) if server and server.strip() else None,
            content_type=headers.get("content-type"),
            body=bytes(body),
            truncated=truncated,
            certificate=certificate,
            local_ip=local_ip,
            closes=headers.get("connection", "").lower() == "close",
        )


async def _already_read(response: httpx.Response) -> AsyncIterator[bytes]:
    yield response.content
