"""Lab peers run inside network namespaces: a web server, an Ollama-like API, a zeroconf responder.

Run as ``python lab_peers.py KIND ...`` with ``ip netns exec``; each prints ``ready`` on stdout once
it listens, then serves until it is terminated. The HTTP servers write each answer in one ``write``
(no Nagle/delayed-ACK stall) and keep connections alive like real servers do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import ssl
import sys
from collections.abc import Callable

Route = tuple[int, str, bytes]
"""(status, content type, body)."""

FAVICON = bytes.fromhex("0000010001001010000001002000") + bytes(range(64)) * 8
LLM_TAGS = {
    "models": [
        {"name": "llama3.2:3b", "model": "llama3.2:3b", "size": 2019393189},
        {"name": "mistral:7b", "model": "mistral:7b", "size": 4113301824},
    ]
}


def web_routes(title: str) -> dict[str, Route]:
    """A device's start page, with a favicon."""
    page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body>Lab</body></html>".encode()
    return {"/": (200, "text/html; charset=utf-8", page), "/favicon.ico": (200, "image/x-icon", FAVICON)}


def ollama_routes() -> dict[str, Route]:
    """What Ollama answers on its port (https://github.com/ollama/ollama/blob/main/docs/api.md)."""
    return {
        "/": (200, "text/plain; charset=utf-8", b"Ollama is running"),
        "/api/tags": (200, "application/json; charset=utf-8", json.dumps(LLM_TAGS).encode()),
        "/api/version": (200, "application/json; charset=utf-8", b'{"version":"0.5.7"}'),
    }


_REASONS = {200: "OK", 404: "Not Found", 400: "Bad Request"}


def handler(routes: dict[str, Route], server: str | None) -> Callable[..., object]:
    """An asyncio connection handler serving ``routes`` with keep-alive."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "/"
                status, content_type, body = routes.get(path, (404, "text/plain", b"404 page not found"))
                lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", f"Content-Type: {content_type}"]
                if server:
                    lines.append(f"Server: {server}")
                lines.append(f"Content-Length: {len(body)}")
                # HTTP/1.0 without keep-alive, or "Connection: close", ends the connection (RFC 9112 §9.3).
                lowered = head.lower()
                request_line = lowered.split(b"\r\n", 1)[0]
                closes = b"connection: close" in lowered or (
                    request_line.endswith(b"http/1.0") and b"keep-alive" not in lowered
                )
                if closes:
                    lines.append("Connection: close")
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                await writer.drain()
                if closes:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return handle


async def serve_http(args: argparse.Namespace) -> None:
    """Serve HTTP (and HTTPS when a certificate is given) until terminated."""
    routes = ollama_routes() if args.kind == "ollama" else web_routes(args.title)
    handle = handler(routes, args.server)
    servers = [await asyncio.start_server(handle, args.bind, port) for port in args.port]
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        servers.append(await asyncio.start_server(handle, args.bind, args.tls_port, ssl=context))
    for server in servers:
        server.sockets[0].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await ready_then_wait()


async def serve_mdns(args: argparse.Namespace) -> None:
    """Announce DNS-SD services on one address until terminated."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    address = socket.inet_aton(args.bind)
    responder = AsyncZeroconf(interfaces=[args.bind], ip_version=IPVersion.V4Only)
    host = f"{args.name.lower()}.local."
    services = [
        AsyncServiceInfo(
            "_dicom._tcp.local.",
            f"{args.name}._dicom._tcp.local.",
            addresses=[address],
            port=11112,
            properties={"aet": args.name},
            server=host,
        ),
        AsyncServiceInfo(
            "_http._tcp.local.",
            f"{args.name} web._http._tcp.local.",
            addresses=[address],
            port=80,
            properties={"path": "/"},
            server=host,
        ),
    ]
    for info in services[: args.services]:
        await (await responder.async_register_service(info, cooperating_responders=True))
    try:
        await ready_then_wait()
    finally:
        await responder.async_close()


async def ready_then_wait() -> None:
    """Say ``ready`` and serve until SIGTERM."""
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    print("ready", flush=True)
    await stop


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("web", "ollama", "mdns"))
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, action="append", default=[])
    parser.add_argument("--server")
    parser.add_argument("--title", default="Lab device")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-port", type=int, default=443)
    parser.add_argument("--name", default="HOROS-WS1")
    parser.add_argument("--services", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(serve_mdns(args) if args.kind == "mdns" else serve_http(args))


if __name__ == "__main__":
    sys.exit(main())
