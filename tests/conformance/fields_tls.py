"""How the tshark ground truth of TLS and QUIC maps onto Lanterne's Observations.

``tls_sni``/``quic_sni`` are the values of ``tls.sni``/``quic.sni``. ``tls_ja3`` and
``tls_alpn_offered`` come from the attrs of every ClientHello seen over TCP (``tls.sni``, and
``tls.fingerprint`` with transport ``tcp`` for a hello without a server name), ``quic_alpn`` from
those seen in QUIC Initials (``quic.sni`` and ``tls.fingerprint`` with transport ``quic``).
"""

from __future__ import annotations

from collections.abc import Callable

from collectors._observation import Kind, Observation, normalise_name

__all__ = ["FIELDS", "NORMALISE"]


def _values(kind: Kind) -> Callable[[list[Observation]], set[str]]:
    def extract(observations: list[Observation]) -> set[str]:
        return {obs.value for obs in observations if obs.kind == kind}

    return extract


def _hellos(observations: list[Observation], transport: str) -> list[Observation]:
    """The observations of every ClientHello seen over ``tcp`` or in ``quic`` Initials."""
    named = Kind.TLS_SNI if transport == "tcp" else Kind.QUIC_SNI
    return [
        obs
        for obs in observations
        if obs.kind == named or (obs.kind == Kind.TLS_FINGERPRINT and obs.attrs.get("transport") == transport)
    ]


def _tls_ja3(observations: list[Observation]) -> set[str]:
    return {str(obs.attrs["ja3"]) for obs in _hellos(observations, "tcp") if "ja3" in obs.attrs}


def _alpn(transport: str) -> Callable[[list[Observation]], set[str]]:
    def extract(observations: list[Observation]) -> set[str]:
        found: set[str] = set()
        for obs in _hellos(observations, transport):
            alpn = obs.attrs.get("alpn")
            if isinstance(alpn, tuple):
                found.update(str(value) for value in alpn)
        return found

    return extract


def _name(value: str) -> str | None:
    return normalise_name(value) or None


FIELDS: dict[str, Callable[[list[Observation]], set[str]]] = {
    "tls_sni": _values(Kind.TLS_SNI),
    "quic_sni": _values(Kind.QUIC_SNI),
    "tls_ja3": _tls_ja3,
    "tls_alpn_offered": _alpn("tcp"),
    "quic_alpn": _alpn("quic"),
}

NORMALISE: dict[str, Callable[[str], str | None]] = {
    "tls_sni": _name,
    "quic_sni": _name,
    "tls_ja3": str.lower,
}
