"""The kernel filter of live capture: only packets that can carry an Observation reach Python.

A hospital link carries hundreds of thousands of packets a second, nearly all of them bulk (TLS
application data, ACKs, SMB, RTP, DICOM images). The filter below runs in the kernel, on each
frame, before any copy to user space; what it passes is what the lean decoder
(``collectors._decoder``) can turn into an Observation:

- UDP to or from the ports of DNS, mDNS, LLMNR, NBNS, DHCP, SSDP and SNMP (both families);
- UDP whose payload starts like a QUIC long header (``0b11xxxxxx``: Initial, 0-RTT, Handshake,
  Retry), on any port: QUIC Initials carry the SNI, and only the first packets of a connection
  have a long header, so this costs little;
- TCP whose payload *starts a message* the decoder reads, on any port (DICOM and HL7 run on
  site-specific ports): a TLS handshake record holding a ClientHello (``16 03 .. .. .. 01``), an
  HTTP request or status line (the first four bytes of a known method, or ``HTTP``), an MLLP frame
  holding an HL7 ``MSH``, a DICOM A-ASSOCIATE-RQ/-AC (type 1 or 2, reserved 0, version 1);
- TCP with a payload on the DNS and LLMNR ports (DNS over TCP is length-prefixed);
- TCP segments that may *continue* a message start (see below);
- IPv4 fragments and IPv6 packets behind extension headers, whose transport header the filter
  cannot see (rare on a LAN; the decoder reassembles them).

Continuation segments, the one real trade-off. A ClientHello with a post-quantum key share
(X25519MLKEM768, in browsers since 2024) is about 1.8 KB: two TCP segments. The second starts in
the middle of the hello, with bytes nothing can recognise, and the decoder's stream reassembly
needs it. A stateless filter cannot know which segment continues a stream that the decoder opened,
so it passes client-to-server segments that *could*: destination port in ``continuation_ports``
(TLS and HTTP ports), a payload, the PSH flag set, and a first byte that is not ``0x17`` (TLS
application data, what an established connection sends). PSH is set on the last segment of each
write by Linux, Windows and the BSDs, so the tail of a hello written at once always has it, while
an upload of many segments has it on a few of them only. What this loses, knowingly:

- hellos of three segments or more (the middle segment has no PSH): only with a very small MSS;
- a continuation whose first byte happens to be ``0x17`` (one in 256 two-segment hellos);
- long HTTP request heads to ports not listed (an HTTP server on port 31337 whose client writes
  the head line by line), and response heads that span segments from unlisted ports;
- hellos of protocols the list does not name, and PPPoE sessions (not seen on hospital LANs).

Server-to-client HTTP responses are handled the same way: segments from ``response_ports`` with
PSH set pass, so that a status line written apart from the rest of the head still gives an
``http.server`` (the banners of embedded web servers name medical devices).

What it lets through needlessly: the PSH-marked segments of uploads to the listed ports and of
downloads from the HTTP ports (one in tens of segments). The decoder drops those after one dict
lookup (no stream is open for them). A site with heavy
uploads to an unlisted TLS port, or with DICOM-over-TLS on 2762, can tune the list.

The filter is written in libpcap's language and compiled by libpcap (through scapy, in a child
process: scapy's import is heavy and has side effects, and the daemon should not carry it). IPv4
uses libpcap's ``tcp[]``/``udp[]`` (which follow the IP header length); IPv6 has no such
primitive, so its offsets are spelt from the fixed 40-byte header (extension headers go through
whole, above). Every payload read is guarded by a length test first: a classic BPF load past the
end of the packet aborts the whole program with "reject", whatever the other alternatives say.
"""

from __future__ import annotations

import ctypes
import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Final

#: UDP ports of the protocols the decoder reads (either side), as in ``collectors._decoder.UDP_PORTS``.
UDP_PORTS: Final = (53, 67, 68, 137, 161, 162, 1900, 5353, 5355)
#: TCP ports whose streams start with a length-prefixed DNS message.
TCP_NAME_PORTS: Final = (53, 5355)
#: Client-to-server ports whose PSH segments may continue a ClientHello or an HTTP request head.
DEFAULT_CONTINUATION_PORTS: Final = (
    80,  # HTTP
    443,  # HTTPS, and QUIC's TCP fallback
    465,  # SMTPS
    636,  # LDAPS
    853,  # DNS over TLS
    993,  # IMAPS
    995,  # POP3S
    3128,  # HTTP proxies
    4443,
    5061,  # SIP over TLS
    5671,  # AMQPS
    6443,  # Kubernetes API
    8000,
    8008,
    8080,  # HTTP alternates and proxies
    8443,  # HTTPS alternate (appliances, admin consoles)
    8883,  # MQTT over TLS (IoT, some medical gateways)
    9443,
)
#: Server-to-client ports whose PSH segments may continue an HTTP response head (``http.server``).
DEFAULT_RESPONSE_PORTS: Final = (80, 8000, 8008, 8080)
#: First four payload bytes of the HTTP/1 messages the decoder reads (methods of ``collectors.http``).
HTTP_STARTS: Final = (
    b"GET ",
    b"POST",
    b"HEAD",
    b"PUT ",
    b"DELE",
    b"CONN",
    b"OPTI",
    b"TRAC",
    b"PATC",
    b"PROP",
    b"MKCO",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLO",
    b"REPO",
    b"SEAR",
    b"HTTP",
)
#: Linux refuses longer classic BPF programs (``BPF_MAXINSNS``).
MAX_INSTRUCTIONS: Final = 4096
#: Seconds the child process may take to compile (a Python start and scapy's import).
COMPILE_TIMEOUT: Final = 60.0

Instruction = tuple[int, int, int, int]
"""One classic BPF instruction: (code, jt, jf, k)."""
Program = tuple[Instruction, ...]

SO_ATTACH_FILTER: Final = 26
_INSN: Final = struct.Struct("=HBBI")


class FilterError(Exception):
    """The capture filter cannot be compiled or attached (libpcap missing, bad expression)."""


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


# -- the expression -------------------------------------------------------------------------------


def _payload(family: int, offset: int, size: int = 1) -> str:
    """The TCP payload bytes ``[offset, offset + size)`` in libpcap's language."""
    if family == 4:
        start = "((tcp[12] & 0xf0) >> 2)"
        return f"tcp[{start} + {offset}:{size}]" if offset else f"tcp[{start}:{size}]"
    start = "(40 + ((ip6[52] & 0xf0) >> 2))"
    return f"ip6[{start} + {offset}:{size}]" if offset else f"ip6[{start}:{size}]"


def _tcp(family: int, continuation_ports: Sequence[int], response_ports: Sequence[int]) -> str:
    if family == 4:
        length = "(ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2))"
        base, psh = "ip and tcp", "tcp[13] & 8 != 0"
    else:
        length = "(ip6[4:2] - ((ip6[52] & 0xf0) >> 2))"
        base, psh = "ip6 and ip6[6] = 6", "ip6[53] & 8 != 0"
    word = _payload(family, 0, 4)
    words = " or ".join(f"{word} = 0x{start.hex()}" for start in (*HTTP_STARTS, b"\x0bMSH"))
    first = _payload(family, 0)
    starts = (
        f"({length} >= 6 and {_payload(family, 0, 2)} = 0x1603 and {_payload(family, 5)} = 1)"
        f" or ({length} >= 4 and ({words}))"
        f" or ({length} >= 8 and ({first} = 1 or {first} = 2) and {_payload(family, 1)} = 0"
        f" and {_payload(family, 6, 2)} = 1)"
    )
    alternatives = [starts]
    if continuation_ports:
        ports = " or ".join(f"dst port {port}" for port in sorted(set(continuation_ports)))
        alternatives.append(f"({length} > 0 and ({ports}) and {psh} and {first} != 0x17)")
    if response_ports:
        ports = " or ".join(f"src port {port}" for port in sorted(set(response_ports)))
        alternatives.append(f"({length} > 0 and ({ports}) and {psh})")
    names = " or ".join(f"port {port}" for port in TCP_NAME_PORTS)
    alternatives.append(f"({length} > 0 and ({names}))")
    return f"({base} and ({' or '.join(alternatives)}))"


def filter_expression(
    continuation_ports: Iterable[int] = DEFAULT_CONTINUATION_PORTS,
    response_ports: Iterable[int] = DEFAULT_RESPONSE_PORTS,
) -> str:
    """The capture filter in libpcap's language (an in-band 802.1Q tag included)."""
    ports, responses = tuple(continuation_ports), tuple(response_ports)
    for port in (*ports, *responses):
        if not 0 < port < 65536:
            raise FilterError(f"not a TCP port: {port!r}")
    udp = "(udp and (" + " or ".join(f"port {port}" for port in UDP_PORTS) + "))"
    quic = "((ip and udp and udp[8] & 0xc0 = 0xc0) or (ip6 and ip6[6] = 17 and ip6[48] & 0xc0 = 0xc0))"
    # Fragments (IPv4) and extension headers (IPv6: anything but TCP, UDP, ICMPv6 right after the
    # fixed header) hide the transport header from the filter: let the decoder look.
    hidden = "(ip and ip[6:2] & 0x3fff != 0) or (ip6 and ip6[6] != 6 and ip6[6] != 17 and ip6[6] != 58)"
    body = f"{udp} or {quic} or {_tcp(4, ports, responses)} or {_tcp(6, ports, responses)} or {hidden}"
    # The kernel strips the outer VLAN tag before capture (it comes back as auxiliary data); a
    # second tag (QinQ), or a tag the driver left in place, is matched here.
    return f"({body}) or (vlan and ({body}))"


# -- compiling and attaching -------------------------------------------------------------------------

_COMPILED: dict[str, Program] = {}
_COMPILED_LOCK = threading.Lock()


def compile_in_process(expression: str) -> Program:
    """Compile ``expression`` for Ethernet with libpcap, through scapy (imports scapy: use a child)."""
    try:
        # Local import because importing scapy has side effects (it reads routes and interfaces)
        # and costs memory the daemon does not need once the program is compiled.
        from scapy.arch.common import compile_filter  # noqa: PLC0415
        from scapy.error import Scapy_Exception  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - scapy is a dependency
        raise FilterError(f"scapy is not available: {exc}") from exc
    try:
        program = compile_filter(expression, linktype=1)  # DLT_EN10MB: no interface, no privilege
    except (ImportError, OSError) as exc:
        raise FilterError(f"libpcap is needed to compile the capture filter ({exc})") from exc
    except Scapy_Exception as exc:
        raise FilterError(str(exc)) from exc
    count = int(program.bf_len)
    return tuple(
        (int(insn.code), int(insn.jt), int(insn.jf), int(insn.k)) for insn in program.bf_insns[:count]
    )


def compile_filter(expression: str, *, timeout: float = COMPILE_TIMEOUT) -> Program:
    """Compile ``expression`` in a child process (once per expression; blocking: run it off the loop)."""
    with _COMPILED_LOCK:
        known = _COMPILED.get(expression)
        if known is not None:
            return known
        try:
            done = subprocess.run(  # our own interpreter and module, no shell
                [sys.executable, "-m", "collectors._bpf"],
                input=expression,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FilterError(f"cannot run the filter compiler: {exc}") from exc
        if done.returncode != 0:
            message = done.stderr.strip().splitlines()[-1:] or ["no message"]
            raise FilterError(message[0])
        try:
            program = validate(json.loads(done.stdout))
        except (ValueError, TypeError) as exc:
            raise FilterError(f"the filter compiler returned nonsense: {exc}") from exc
        _COMPILED[expression] = program
        return program


def validate(raw: object) -> Program:
    """Check a program's shape (a list of four small integers per instruction) and size."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("not a list of instructions")
    if len(raw) > MAX_INSTRUCTIONS:
        raise ValueError(f"{len(raw)} instructions: the kernel accepts {MAX_INSTRUCTIONS} at most")
    program: list[Instruction] = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 4:
            raise ValueError("an instruction is four integers")
        code, jt, jf, k = (int(field) for field in item)
        if not (0 <= code < 1 << 16 and 0 <= jt < 256 and 0 <= jf < 256 and 0 <= k < 1 << 32):
            raise ValueError("instruction field out of range")
        program.append((code, jt, jf, k))
    return tuple(program)


def pack(program: Program) -> bytes:
    """The program as an array of ``struct sock_filter`` (what the kernel and libpcap read)."""
    return b"".join(_INSN.pack(*insn) for insn in program)


def attach(sock: socket.socket, program: Program) -> None:
    """Attach ``program`` to ``sock`` (``SO_ATTACH_FILTER``; the kernel copies it)."""
    code = ctypes.create_string_buffer(pack(program))
    fprog = _SockFprog(len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def main() -> int:
    """Child process: read an expression on stdin, print its compiled program as JSON."""
    try:
        program = compile_in_process(sys.stdin.read())
    except FilterError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    sys.stdout.write(json.dumps([list(insn) for insn in program]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
