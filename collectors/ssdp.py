"""SSDP (HTTPU on UDP 1900): the SERVER banner and the LOCATION of UPnP devices.

``src`` is the packet's source: a NOTIFY or a search response is sent by the device about itself.

What is kept, and why:

- ``ssdp.server`` comes from the SERVER header only (NOTIFY and search responses). An M-SEARCH
  carries the control point's USER-AGENT instead; there is no kind for it (it is not HTTP over
  TCP, and ``http.user_agent`` would mix it with web browsing), so it is not kept.
- ``ssdp.location`` keeps ``scheme://host:port`` of the LOCATION URL and never its path or query
  (DESIGN §3: URL paths can carry identifiers); ``path_present`` says whether one was dropped.
  User information (``user:password@``) is dropped too.
- Both carry the NT / ST / USN / NTS headers in ``attrs``, bounded.
"""

from __future__ import annotations

from typing import Final

from collectors._context import PacketContext
from collectors._errors import MalformedPacket
from collectors._observation import AttrValue, Kind, Observation

__all__ = ["observe", "reduce_location"]

#: Largest message read: SSDP fits in one datagram and its useful headers come first.
_MAX_MESSAGE: Final = 8192
#: Header lines read at most; the rest of a longer message is ignored.
_MAX_HEADERS: Final = 64
_MAX_ATTR: Final = 256
_ATTR_HEADERS: Final = ("nt", "st", "usn", "nts")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _method(start_line: str) -> str:
    """Name the message from its start line; raise MalformedPacket if it is not HTTPU."""
    parts = start_line.split()
    if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
        return "RESPONSE"
    if len(parts) == 3 and parts[2].startswith("HTTP/") and parts[0].replace("-", "").isalpha():
        return parts[0].upper()
    raise MalformedPacket("not an SSDP start line")


def reduce_location(url: str) -> tuple[str, bool] | None:
    """Return (``scheme://host:port``, whether a path or query was dropped), or None if not a URL."""
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or not scheme.isascii() or not scheme.isalpha():
        return None
    cut = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1 and found < cut:
            cut = found
    authority = rest[:cut].rpartition("@")[2]  # user:password@ is never kept
    path_present = rest[cut:] not in ("", "/")
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            return None
        host, port_text = authority[: close + 1], authority[close + 1 :]
        if port_text and not port_text.startswith(":"):
            return None
        port_text = port_text[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not host or any(c.isspace() for c in host):
        return None
    if port_text:
        if not port_text.isdigit() or not port_text.isascii() or int(port_text) > 65535:
            return None
        port: int | None = int(port_text)
    else:
        port = _DEFAULT_PORTS.get(scheme)
    host = host.lower()
    return (f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"), path_present


def observe(payload: bytes, ctx: PacketContext) -> list[Observation]:
    """Return the SERVER and LOCATION observations of one SSDP datagram."""
    text = payload[:_MAX_MESSAGE].decode("utf-8", "replace")
    lines = text.split("\n", _MAX_HEADERS + 1)
    start_line = lines[0].strip()
    if not start_line:
        raise MalformedPacket("SSDP message without a start line")
    method = _method(start_line)

    headers: dict[str, str] = {}
    # Bounded by _MAX_HEADERS through the split above.
    for line in lines[1 : _MAX_HEADERS + 1]:
        name, colon, value = line.partition(":")
        if not colon:
            if not line.strip():
                break  # the empty line ends the headers
            continue  # a stray line (e.g. a NUL after the headers) is not a header
        key = name.strip().lower()
        if key and key not in headers:  # the first occurrence wins, like most stacks
            headers[key] = value.strip()

    server = headers.get("server", "")
    location = headers.get("location", "")
    if not server and not location:
        return []
    attrs: dict[str, AttrValue] = {"method": method}
    for key in _ATTR_HEADERS:
        header = headers.get(key)
        attrs[key] = header[:_MAX_ATTR] if header else None

    out: list[Observation] = []
    if server:
        out.append(ctx.observation(Kind.SSDP_SERVER, server, attrs))
    reduced = reduce_location(location) if location else None
    if reduced is not None:
        out.append(ctx.observation(Kind.SSDP_LOCATION, reduced[0], {**attrs, "path_present": reduced[1]}))
    return out
