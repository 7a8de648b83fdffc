"""How the tshark ground truth of TLS and QUIC maps onto Lanterne's Observations.

``tls_sni``/``quic_sni`` are the values of ``tls.sni``/``quic.sni``; ``tls_ja3`` and
``tls_alpn_offered`` come from the attrs of ``tls.sni``. tshark computes them for every ClientHello,
Lanterne only reports hellos that name a server (there is no kind for a hello without SNI), so
hellos without SNI show up as ``tshark_only`` in ``tshark_differences.yaml``.

``quic_alpn`` is not compared: the QUIC hellos of the corpus without SNI offer up to 18 ALPN
values each, which would fill the differences file with one reason repeated; the ALPN parsing it
would check is the TLS code that ``tls_alpn_offered`` already checks.
"""

from __future__ import annotations

from collections.abc import Callable

from collectors._observation import Kind, Observation, normalise_name

__all__ = ["FIELDS", "NORMALISE"]


def _values(kind: Kind) -> Callable[[list[Observation]], set[str]]:
    def extract(observations: list[Observation]) -> set[str]:
        return {obs.value for obs in observations if obs.kind == kind}

    return extract


def _tls_ja3(observations: list[Observation]) -> set[str]:
    return {str(obs.attrs["ja3"]) for obs in observations if obs.kind == Kind.TLS_SNI and "ja3" in obs.attrs}


def _tls_alpn(observations: list[Observation]) -> set[str]:
    found: set[str] = set()
    for obs in observations:
        alpn = obs.attrs.get("alpn") if obs.kind == Kind.TLS_SNI else None
        if isinstance(alpn, tuple):
            found.update(str(value) for value in alpn)
    return found


def _name(value: str) -> str | None:
    return normalise_name(value) or None


FIELDS: dict[str, Callable[[list[Observation]], set[str]]] = {
    "tls_sni": _values(Kind.TLS_SNI),
    "quic_sni": _values(Kind.QUIC_SNI),
    "tls_ja3": _tls_ja3,
    "tls_alpn_offered": _tls_alpn,
}

NORMALISE: dict[str, Callable[[str], str | None]] = {
    "tls_sni": _name,
    "quic_sni": _name,
    "tls_ja3": str.lower,
}
