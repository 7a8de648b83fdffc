"""Lookups per second of the fingerprint index against synthetic catalogues of growing size.

Builds catalogues of 1,000, 10,000 and 100,000 rules in memory (host suffixes, exact hosts,
regexes on banners, sysObjectID prefixes and MAC prefixes, mixed), then matches one fixed mix of
Observations (hits and misses of every kind, most with a source MAC) through ``Index.match``:
uncached (``match_uncached``: every lookup walks the index) and cached (the LRU in front, warm).
The cost must stay flat as the catalogue grows.

    python bench/bench_matcher.py [--sizes 1000,10000,100000] [--seconds 1.0]

Targets (one core): >= 1,000,000 cached and >= 200,000 uncached lookups/s, and a 100k/1k ratio
>= 0.8 for both.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable, Sequence

from collectors import Endpoint, Kind, Observation
from fingerprints import Catalog, Index, Location, Product, Rule, Source
from fingerprints._vocabulary import (
    Category,
    Deployment,
    HdsStatus,
    HostingLocation,
    HostRole,
    MdrClass,
    Quality,
    RuleKind,
    Strength,
    Tristate,
)

RULES_PER_PRODUCT = 10
#: Share of each rule kind in a synthetic catalogue (per product of ten rules).
_LAYOUT = (
    [RuleKind.HOST] * 4  # suffixes
    + [RuleKind.HOST] * 2  # exact hosts
    + [RuleKind.HTTP_SERVER, RuleKind.SNMP_SYSDESCR]  # regexes
    + [RuleKind.SNMP_SYSOBJECTID, RuleKind.MAC_OUI]
)
_WHERE = Location("bench", 1)


def _rule(product_id: str, number: int, kind: RuleKind, **matcher: str) -> Rule:
    role = HostRole.APP if kind is RuleKind.HOST else None
    return Rule(
        id=f"{product_id}:r{number}",
        product_id=product_id,
        kind=kind,
        strength=Strength.WEAK if kind is RuleKind.MAC_OUI else Strength.STRONG,
        quality=Quality.COMMUNITY,
        source="synthetic",
        location=_WHERE,
        role=role,
        **matcher,
    )


def _product_rules(p: int) -> list[Rule]:
    """Ten rules of synthetic product ``p``: every product has its own names and values."""
    pid = f"prod{p}"
    return [
        _rule(pid, 0, RuleKind.HOST, suffix=f"vendor{p}.example"),
        _rule(pid, 1, RuleKind.HOST, suffix=f"api.vendor{p}.example"),
        _rule(pid, 2, RuleKind.HOST, suffix=f"cdn{p}.net"),
        _rule(pid, 3, RuleKind.HOST, suffix=f"app{p}.example.org"),
        _rule(pid, 4, RuleKind.HOST, exact=f"login.vendor{p}.example"),
        _rule(pid, 5, RuleKind.HOST, exact=f"tenant{p}.shared-cloud.example"),
        _rule(pid, 6, RuleKind.HTTP_SERVER, regex=rf"^Server{p:06d}/(\d+)\.(\d+)"),
        _rule(pid, 7, RuleKind.SNMP_SYSDESCR, regex=rf"\bmodel{p}\b firmware (\S+)"),
        _rule(pid, 8, RuleKind.SNMP_SYSOBJECTID, oid_prefix=f"1.3.6.1.4.1.{10000 + p}"),
        _rule(pid, 9, RuleKind.MAC_OUI, oui=f"{0x100000 + p * 4:06x}"),
    ]


def synthetic_catalog(rules: int) -> Catalog:
    """A catalogue of ``rules`` rules (ten per product)."""
    products = []
    for p in range(rules // RULES_PER_PRODUCT):
        products.append(
            Product(
                id=f"prod{p}",
                name=f"Product {p}",
                vendor=f"Vendor {p}",
                category=Category.LLM_API,
                ai=Tristate.YES,
                medical_purpose=Tristate.NO,
                mdr_class=MdrClass.NONE,
                deployment=Deployment.SAAS,
                hosting_location=HostingLocation.UNKNOWN,
                hds=HdsStatus.UNKNOWN,
                sources=(Source("synthetic", Quality.COMMUNITY),),
                rules=tuple(_product_rules(p)),
                examples=(),
                location=_WHERE,
            )
        )
    return Catalog(products=tuple(products), version=f"synthetic-{rules}")


def observation_mix(count: int = 2000, seed: int = 7) -> list[Observation]:
    """A fixed mix: every referenced product exists in the smallest catalogue (ids < 100)."""
    rng = random.Random(seed)
    mixes: list[Callable[[int], tuple[Kind, str]]] = [
        lambda p: (Kind.TLS_SNI, f"eu{p}.api.vendor{p}.example"),
        lambda p: (Kind.DNS_QUERY, f"static.cdn{p}.net"),
        lambda p: (Kind.QUIC_SNI, f"login.vendor{p}.example"),
        lambda p: (Kind.TLS_SNI, f"www.popular-site-{p}.com"),
        lambda p: (Kind.DNS_QUERY, f"r{p}.sn-abc{p}.googlevideo.com"),
        lambda p: (Kind.HTTP_HOST, f"tenant{p}.shared-cloud.example"),
        lambda p: (Kind.HTTP_SERVER, f"Server{p:06d}/2.{p}"),
        lambda p: (Kind.HTTP_SERVER, f"nginx/1.{p}.0"),
        lambda p: (Kind.SNMP_SYSDESCR, f"Acme switch model{p} firmware 4.{p}"),
        lambda p: (Kind.SNMP_SYSDESCR, f"Linux host{p} 5.10.0-{p}-amd64 #1 SMP x86_64"),
        lambda p: (Kind.SNMP_SYSOBJECTID, f"1.3.6.1.4.1.{10000 + p}.1.2.{p}"),
        lambda p: (Kind.SNMP_SYSOBJECTID, f"1.3.6.1.4.1.9.1.{p}"),
    ]
    out = []
    for n in range(count):
        p = rng.randrange(100)
        kind, value = mixes[n % len(mixes)](p)
        mac = f"10:00:{p * 4 >> 8 & 0xFF:02x}:{p * 4 & 0xFF:02x}:00:{n % 256:02x}" if n % 2 else None
        src = Endpoint(ip=f"10.0.{p}.{n % 250 + 1}", mac=mac)
        out.append(Observation(ts=float(n), kind=kind, value=value, src=src))
    return out


def _rate(function: Callable[[Observation], object], mix: Sequence[Observation], seconds: float) -> float:
    """Lookups per second over at least ``seconds`` of whole passes (best of three)."""
    best = 0.0
    for _ in range(3):
        done = 0
        start = time.perf_counter()
        elapsed = 0.0
        while elapsed < seconds / 3:
            for observation in mix:
                function(observation)
            done += len(mix)
            elapsed = time.perf_counter() - start
        best = max(best, done / elapsed)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="catalogue sizes in rules")
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    mix = observation_mix()
    rows = []
    for size in sizes:
        started = time.perf_counter()
        index = Index(synthetic_catalog(size))
        built = time.perf_counter() - started
        hits = sum(1 for observation in mix if index.match_uncached(observation))
        gc.collect()
        gc.disable()  # the collector's pauses are noise at this scale
        try:
            uncached = _rate(index.match_uncached, mix, args.seconds)
            for observation in mix:  # warm the cache
                index.match(observation)
            cached = _rate(index.match, mix, args.seconds)
        finally:
            gc.enable()
        rows.append((size, built, hits, uncached, cached))
        print(f"  measured {size:,} rules", file=sys.stderr)
    python = sys.version.split()[0]
    print(f"{len(mix)} observations in the mix; lookups per second on one core (Python {python})")
    print(f"{'rules':>8} {'build s':>8} {'hits':>6} {'uncached/s':>12} {'cached/s':>12}")
    for size, built, hits, uncached, cached in rows:
        print(f"{size:>8,} {built:>8.2f} {hits:>6} {uncached:>12,.0f} {cached:>12,.0f}")
    first, last = rows[0], rows[-1]
    uncached_ratio = last[3] / first[3]
    cached_ratio = last[4] / first[4]
    print(f"ratio {last[0]:,}/{first[0]:,} rules: uncached {uncached_ratio:.2f}, cached {cached_ratio:.2f}")
    targets = (
        min(row[4] for row in rows) >= 1_000_000,
        min(row[3] for row in rows) >= 200_000,
        uncached_ratio >= 0.8 and cached_ratio >= 0.8,
    )
    print(
        "targets (>= 1,000,000 cached/s, >= 200,000 uncached/s, ratio >= 0.8): "
        + ", ".join("met" if ok else "MISSED" for ok in targets)
    )
    return 0 if all(targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
