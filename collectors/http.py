"""HTTP/1.x: the Host and User-Agent of a request, the Server banner of a response.

Only the request line's method and version and a few header values are read. The request
target's path and query are never kept (they carry patient identifiers in a hospital): the
target is looked at only to take the authority of an absolute-form or CONNECT target when the
request has no Host header.
"""

from __future__ import annotations

from typing import Final

from collectors._context import PacketContext
from collectors._errors import MalformedPacket, Truncated
from collectors._observation import Kind, Observation

#: Header block read at most; past it, the complete header lines already there are used.
MAX_HEADER_BYTES: Final = 8 * 1024

#: Request methods recognised at the start of a TCP stream: RFC 9110, PATCH (RFC 5789) and the
#: WebDAV ones that clients of document and imaging servers send.
_METHODS: Final = frozenset(
    {
        b"GET",
        b"HEAD",
        b"POST",
        b"PUT",
        b"DELETE",
        b"CONNECT",
        b"OPTIONS",
        b"TRACE",
        b"PATCH",
        b"PROPFIND",
        b"PROPPATCH",
        b"MKCOL",
        b"COPY",
        b"MOVE",
        b"LOCK",
        b"UNLOCK",
        b"REPORT",
        b"SEARCH",
    }
)
_LONGEST_METHOD: Final = max(len(m) for m in _METHODS)
#: First bytes of the methods: lets a packet loop rule out most payloads with one set lookup.
METHOD_INITIALS: Final = frozenset(m[0] for m in _METHODS)
_REQUEST_HEADERS: Final = frozenset({b"host", b"user-agent"})
_RESPONSE_HEADERS: Final = frozenset({b"server"})
_BLANK: Final = b" \t"


def is_request_start(data: bytes) -> bool:
    """Tell whether ``data`` starts like an HTTP request (a known method token, then a space)."""
    space = data.find(b" ", 3, _LONGEST_METHOD + 1)
    return space > 0 and data[:space] in _METHODS


def is_response_start(data: bytes) -> bool:
    """Tell whether ``data`` starts like an HTTP/1.x status line."""
    return data[:7] == b"HTTP/1."


def _header_block(data: bytes) -> bytes:
    """Return the bytes before the blank line that ends the header block, or raise Truncated."""
    window = data[:MAX_HEADER_BYTES]
    # The blank line may be CRLF CRLF, or bare LF on either side (lenient like tshark and Zeek).
    end = window.find(b"\n\r\n")
    lf = window.find(b"\n\n", 0, end if end >= 0 else len(window))
    if lf >= 0:
        end = lf
    if end >= 0:
        return window[:end]
    if len(data) < MAX_HEADER_BYTES:
        raise Truncated("HTTP header block not complete")
    # Past the cap: keep the complete lines (the caller has seen the start line end).
    return window[: window.rfind(b"\n")]


def _headers(lines: list[bytes], wanted: frozenset[bytes]) -> dict[bytes, bytes]:
    """Return the first value of each wanted header (names lower-cased, obs-fold unfolded)."""
    found: dict[bytes, bytes] = {}
    current: bytes | None = None  # the wanted header that a folded line would continue
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                found[current] = found[current] + b" " + line.strip(_BLANK + b"\r")
            continue
        current = None
        if len(found) == len(wanted):
            break  # all found, and the line above was not continued
        colon = line.find(b":")
        if colon <= 0:
            continue  # not a header line: tolerated, as browsers and tshark do
        name = line[:colon].strip(_BLANK).lower()
        if name in wanted and name not in found:
            found[name] = line[colon + 1 :].strip(_BLANK + b"\r")
            current = name
    return found


def _text(raw: bytes) -> str:
    """Decode a header value: UTF-8 when it is, else ISO-8859-1 (what HTTP/1.1 used to say)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _host_name(host: str) -> str:
    """Return a host name as DNS carries it: non-ASCII (raw UTF-8) names become IDNA A-labels."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host  # not a valid IDN: kept as decoded, with replacement characters


def split_host_port(authority: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (with ``[v6]`` literals); a port that is not a number is dropped."""
    authority = authority.strip()
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return authority, None
        host, rest = authority[1:close], authority[close + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        host, _, port_text = authority.partition(":")
    else:
        return authority, None  # a bare IPv6 address, or no port at all
    if port_text.isascii() and port_text.isdigit() and len(port_text) <= 5 and int(port_text) <= 65535:
        return host, int(port_text)
    return host, None


def _target_authority(method: bytes, target: bytes) -> bytes | None:
    """Return the authority of a CONNECT or absolute-form target, never its path or query."""
    if method == b"CONNECT":
        return target
    if target[:1] in (b"/", b"*"):
        return None  # origin-form or asterisk-form: the common case
    scheme_end = target.find(b"://", 0, 16)
    if scheme_end <= 0 or not target[:scheme_end].isalpha():
        return None
    start = scheme_end + 3
    end = len(target)
    for stop in (b"/", b"?", b"#"):
        pos = target.find(stop, start, end)
        if pos >= 0:
            end = pos
    authority = target[start:end]
    at = authority.rfind(b"@")  # userinfo is a credential: skip it
    return authority[at + 1 :] if at >= 0 else authority


def _version(token: bytes) -> str | None:
    """Return ``1.1`` for ``HTTP/1.1``; None when the token is not an HTTP version."""
    if token[:5].upper() != b"HTTP/":
        return None
    return token[5:12].decode("ascii", "replace")


def _start_line(data: bytes) -> bytes:
    """Return the first line (without its line ending), or raise Truncated/MalformedPacket."""
    end = data.find(b"\n", 0, MAX_HEADER_BYTES)
    if end < 0:
        if len(data) < MAX_HEADER_BYTES:
            raise Truncated("HTTP start line not complete")
        raise MalformedPacket("HTTP start line longer than the header cap")
    return data[:end].rstrip(b"\r")


def observe_request(data: bytes, ctx: PacketContext) -> list[Observation]:
    """Read a request's line and headers: Host (``http.host``) and User-Agent (``http.user_agent``)."""
    method, _, rest = _start_line(data).partition(b" ")
    if method not in _METHODS:
        raise MalformedPacket("HTTP request without a known method")
    target, _, version_token = rest.strip(_BLANK).rpartition(b" ")
    version = _version(version_token)
    if version is None:
        # HTTP/0.9 (no headers follow), or another protocol borrowing the syntax (RTSP, SIP).
        return []
    lines = _header_block(data).split(b"\n")
    headers = _headers(lines[1:], _REQUEST_HEADERS)
    out: list[Observation] = []
    # Only the authority of the target is looked at; the path and query are never decoded.
    authority = _target_authority(method, target.strip(_BLANK))
    host_raw = headers.get(b"host") or authority
    if host_raw:
        host, port = split_host_port(host_raw.decode(errors="replace"))
        host = _host_name(host)
        if host.strip():
            attrs: dict[str, str | int | bool] = {"method": method.decode("ascii"), "version": version}
            if port is not None:
                attrs["port"] = port
            if authority is not None:
                attrs["proxy"] = True  # absolute-form or CONNECT: the client speaks to a proxy
            out.append(ctx.observation(Kind.HTTP_HOST, host, attrs))
    user_agent = _text(headers.get(b"user-agent", b""))
    if user_agent.strip():
        out.append(ctx.observation(Kind.HTTP_USER_AGENT, user_agent))
    return out


def observe_response(data: bytes, ctx: PacketContext) -> list[Observation]:
    """Read a response's status line and headers: the Server banner (``http.server``, reversed)."""
    version_token, _, rest = _start_line(data).partition(b" ")
    version = _version(version_token)
    status_text = rest[:3]
    if version is None or not status_text.isdigit():
        raise MalformedPacket("HTTP status line without a version and a status code")
    lines = _header_block(data).split(b"\n")
    server = _text(_headers(lines[1:], _RESPONSE_HEADERS).get(b"server", b""))
    if not server.strip():
        return []
    # Passive titles are not read: the page could be a patient's record. The active probe
    # fetches titles of devices' own start pages instead.
    attrs: dict[str, str | int] = {"status": int(status_text), "version": version}
    return [ctx.observation(Kind.HTTP_SERVER, server, attrs, reverse=True)]
