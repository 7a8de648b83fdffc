"""Shared helpers of the probe tests: a virtual clock, a gate that keeps its records, certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ObjectIdentifier

from collectors.probe import Outcome, ProbePolicy, ProbeRecord, SafetyGate, TokenBucket


class VirtualClock:
    """Monotonic time that only moves when a sleeper asks it to (no real waiting)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def policy(
    allow: Iterable[str] = ("127.0.0.0/8",),
    *,
    deny: Iterable[str] = (),
    passive_only: Iterable[str] = (),
    **options: object,
) -> ProbePolicy:
    """A policy from CIDR strings."""
    return ProbePolicy(
        allow=tuple(ipaddress.ip_network(n) for n in allow),
        deny=tuple(ipaddress.ip_network(n) for n in deny),
        passive_only=tuple(ipaddress.ip_network(n) for n in passive_only),
        **options,  # type: ignore[arg-type]
    )


def gate(
    allow: Iterable[str] = ("127.0.0.0/8",), *, clock: VirtualClock | None = None, **options: object
) -> tuple[SafetyGate, list[ProbeRecord]]:
    """A gate over ``allow`` whose records land in the returned list (and whose bucket never waits)."""
    records: list[ProbeRecord] = []
    the_policy = policy(allow, **options)  # type: ignore[arg-type]
    clock = clock or VirtualClock()
    bucket = TokenBucket(the_policy.rate, the_policy.burst, clock=clock, sleep=clock.sleep)
    return SafetyGate(the_policy, record=records.append, bucket=bucket, clock=clock), records


def outcomes(records: Iterable[ProbeRecord]) -> list[str]:
    """The outcomes of ``records`` as plain strings."""
    return [str(record.outcome) for record in records]


__all__ = ["Outcome", "VirtualClock", "gate", "outcomes", "policy"]


def self_signed_certificate(
    folder: Path,
    subject: Sequence[tuple[ObjectIdentifier, str]],
    *,
    rsa_key: bool = False,
    serial: int | None = None,
    days: int = 30,
    alt_names: Sequence[x509.GeneralName] = (),
    stem: str = "",
) -> tuple[Path, Path, bytes]:
    """A self-signed certificate like a device's: PEM files ``<stem>cert.pem``/``<stem>key.pem``, and DER.

    EC P-256 unless ``rsa_key`` (RSA 2048, what most devices serve and every scanner handshakes with).
    """
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in subject])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(alt_names)), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = folder / f"{stem}cert.pem", folder / f"{stem}key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)
