"""``lanterne fingerprints``: list, show, test and explain the catalogue (a typer sub-app).

Data on stdout (tables, or JSON with ``--json``), messages on stderr. Exit codes: 0 clean,
1 failing examples or lint findings (``test``), 2 usage or configuration error (a broken
catalogue, an unknown product or kind).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from collectors import Endpoint, InvalidObservation, Kind, Observation
from fingerprints import (
    CatalogError,
    Index,
    Product,
    load_catalog,
    load_index,
    load_recog,
    mac_vendor,
    run_catalog_examples,
    run_recog_examples,
)
from fingerprints import lint_catalog as lint_catalog_rules

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The fingerprint catalogue: list, show, test, match.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)

EXIT_CLEAN = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2

CatalogOption = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        envvar="LANTERNE_CATALOG",
        help="Catalogue folder (default: the one shipped with Lanterne).",
        show_default=False,
    ),
]
RecogOption = Annotated[
    Path | None,
    typer.Option(
        "--recog-dir",
        envvar="LANTERNE_RECOG_DIR",
        help="Rapid7 Recog folder (default: ../shared/corpus/recog beside the checkout, when present).",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", envvar="LANTERNE_JSON", help="Print JSON instead of tables.")
]


def _fatal(message: str, *, tip: str | None = None) -> NoReturn:
    """Print an error on stderr and exit with the usage code."""
    err.print(f"[bold red]error:[/] {message}", markup=True)
    if tip:
        err.print(f"[yellow]tip:[/] {tip}", markup=True)
    raise typer.Exit(EXIT_USAGE)


def _report_catalog_error(exc: CatalogError) -> NoReturn:
    """Show every catalogue problem with its file and line, then exit."""
    for issue in exc.issues:
        err.print(str(issue), markup=False)
    _fatal(f"the catalogue has {len(exc.issues)} error(s)", tip="fix them at the file:line shown above")


def _columns(rows: Sequence[Sequence[str]]) -> None:
    """Write rows as aligned, tab-free columns on stdout (the last column is not padded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]
        sys.stdout.write("  ".join(cells).rstrip() + "\n")


def _json(data: Any) -> None:
    """Write one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def _index(catalog: Path | None, recog_dir: Path | None, *, with_recog: bool = True) -> Index:
    """Load the index or exit with the reason."""
    try:
        return load_index(catalog, recog_dir, with_recog=with_recog)
    except CatalogError as exc:
        _report_catalog_error(exc)
    except FileNotFoundError as exc:
        _fatal(str(exc), tip="point --recog-dir (LANTERNE_RECOG_DIR) at a Recog checkout, or use --no-recog")


@app.command("list")
def list_products(
    catalog: CatalogOption = None,
    category: Annotated[
        str | None, typer.Option("--category", "-c", help="Only this category.", show_default=False)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List the products of the catalogue."""
    try:
        loaded = load_catalog(catalog)
    except CatalogError as exc:
        _report_catalog_error(exc)
    products = [p for p in loaded.products if category is None or p.category == category]
    if as_json:
        _json([{**p.to_dict(), "rules": len(p.rules)} for p in products])
        return
    rows = [("id", "category", "vendor", "name", "ai", "medical", "rules")]
    rows += [
        (p.id, p.category, p.vendor, p.name, p.ai, p.medical_purpose, str(len(p.rules))) for p in products
    ]
    _columns(rows)
    err.print(f"catalogue {loaded.version}: {len(products)} product(s)")


@app.command()
def show(
    product_id: Annotated[str, typer.Argument(metavar="ID", help="A product id (see `list`).")],
    catalog: CatalogOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a product: its facts, its rules (with their sources) and its examples."""
    try:
        loaded = load_catalog(catalog)
    except CatalogError as exc:
        _report_catalog_error(exc)
    try:
        product = loaded.product(product_id)
    except KeyError:
        _fatal(
            f"no product {product_id!r} in the catalogue", tip="`lanterne fingerprints list` shows the ids"
        )
    if as_json:
        _json(_product_json(product))
        return
    sys.stdout.write(f"{product.id}  ({product.location})\n")
    for name, value in product.to_dict().items():
        if name == "sources":
            for source in value:
                note = f" ({source['note']})" if source["note"] else ""
                sys.stdout.write(f"  source: [{source['quality']}] {source['url']}{note}\n")
            continue
        if name == "hosting":
            value = f"{value['location']}, HDS {value['hds']}"
        sys.stdout.write(f"  {name}: {value}\n")
    sys.stdout.write("rules:\n")
    _columns(
        [("  id", "strength", "quality", "what", "source")]
        + [
            (f"  {rule.id.partition(':')[2]}", rule.strength, rule.quality, rule.describe(), rule.source)
            for rule in product.rules
        ]
    )
    sys.stdout.write("examples:\n")
    _columns(
        [("  ", "kind", "value", "mac", "rule", "detects")]
        + [
            (
                "  +" if example.positive else "  -",
                str(example.kind or ""),
                example.value or "",
                example.mac or "",
                example.rule or "",
                "" if example.detects is None else str(example.detects).lower(),
            )
            for example in product.examples
        ]
    )


def _product_json(product: Product) -> dict[str, Any]:
    """A product with its rules and examples, as JSON."""
    return {
        **product.to_dict(),
        "location": str(product.location),
        "rules": [
            {
                "id": rule.id,
                "what": rule.describe(),
                "strength": str(rule.strength),
                "quality": str(rule.quality),
                "source": rule.source,
                "location": str(rule.location),
            }
            for rule in product.rules
        ],
        "examples": [
            {
                "positive": example.positive,
                "kind": None if example.kind is None else str(example.kind),
                "value": example.value,
                "attrs": dict(example.attrs),
                "mac": example.mac,
                "rule": example.rule,
                "detects": example.detects,
            }
            for example in product.examples
        ],
    }


@app.command("test")
def run_tests(
    catalog: CatalogOption = None,
    recog_dir: RecogOption = None,
    recog: Annotated[
        bool,
        typer.Option("--recog/--no-recog", envvar="LANTERNE_TEST_RECOG", help="Also run Recog's examples."),
    ] = True,
) -> None:
    """Run every example of the catalogue (and of Recog), lint the catalogue, print the failures."""
    index = _index(catalog, None, with_recog=False)
    failures = [*run_catalog_examples(index, index.catalog), *lint_catalog_rules(index, index.catalog)]
    for failure in failures:
        sys.stdout.write(f"{failure}\n")
    examples = sum(len(p.examples) for p in index.catalog.products)
    err.print(f"catalogue {index.catalog.version}: {examples} examples, {len(failures)} failure(s)")
    recog_failures = 0
    if recog:
        try:
            loaded = load_recog(recog_dir)
        except FileNotFoundError as exc:
            if recog_dir is not None:
                _fatal(str(exc))
            err.print(f"[yellow]Recog skipped:[/] {exc}", markup=True)
        else:
            total, failed = run_recog_examples(loaded)
            recog_failures = len(failed)
            for recog_failure in failed:
                sys.stdout.write(f"{recog_failure}\n")
            rate = 100.0 * (total - recog_failures) / total if total else 100.0
            err.print(
                f"recog {loaded.version}: {total} examples, {recog_failures} failure(s), {rate:.2f}% pass"
            )
    if failures or recog_failures:
        raise typer.Exit(EXIT_FAILURES)


@app.command()
def match(
    kind: Annotated[
        str, typer.Argument(metavar="KIND", help="An Observation kind: tls.sni, snmp.sysdescr...")
    ],
    value: Annotated[str, typer.Argument(metavar="VALUE", help="The observed value.")],
    *,
    attr: Annotated[
        list[str] | None,
        typer.Option("--attr", "-a", help="An attribute KEY=VALUE (DICOM/HL7 rules read them; repeatable)."),
    ] = None,
    mac: Annotated[
        str | None, typer.Option("--mac", help="The source MAC (for OUI rules).", show_default=False)
    ] = None,
    catalog: CatalogOption = None,
    recog_dir: RecogOption = None,
    recog: Annotated[
        bool,
        typer.Option(
            "--recog/--no-recog", envvar="LANTERNE_MATCH_RECOG", help="Also match Recog's fingerprints."
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Explain which rules match an observed value, why, and what the evidence adds up to."""
    try:
        observed_kind = Kind(kind)
    except ValueError:
        _fatal(f"unknown kind {kind!r}", tip=f"kinds: {', '.join(k.value for k in Kind)}")
    attrs: dict[str, str] = {}
    for item in attr or ():
        key, sep, text = item.partition("=")
        if not sep:
            _fatal(f"--attr {item!r} is not KEY=VALUE")
        attrs[key] = text
    try:
        observation = Observation(
            ts=0.0, kind=observed_kind, value=value, src=Endpoint(mac=mac) if mac else Endpoint(), attrs=attrs
        )
    except InvalidObservation as exc:
        _fatal(f"not a valid observation: {exc}")
    index = _index(catalog, recog_dir, with_recog=recog)
    explanations = index.explain(observation)
    detections = index.assess_all(item.evidence for item in explanations)
    vendor = mac_vendor(observation.src.mac) if observation.src.mac else None
    if as_json:
        _json(
            {
                "observation": observation.to_dict(),
                "catalog_version": index.version,
                "mac_vendor": vendor.to_dict() if vendor else None,
                "evidence": [
                    {**item.evidence.to_dict(), "why": item.rule, "where": item.origin, "source": item.source}
                    for item in explanations
                ],
                "detections": [detection.to_dict() for detection in detections],
            }
        )
        return
    err.print(f"{observation.kind} {observation.value!r} against catalogue {index.version}")
    if vendor is not None:
        name = (
            "randomised (locally administered)"
            if vendor.randomised
            else vendor.organisation or "unregistered"
        )
        out.print(f"MAC {vendor.mac}: {name}")
    if not explanations:
        out.print("no rule matches")
    for explained in explanations:
        evidence = explained.evidence
        target = evidence.rule.product_id or evidence.rule.vendor or "-"
        rule = evidence.rule
        out.print(f"{rule.rule_id} -> {target} [{rule.strength}, weight {rule.weight}, {evidence.side}]")
        out.print(f"  why: {explained.rule}\n  where: {explained.origin}\n  source: {explained.source}")
        if evidence.fields:
            out.print("  fields: " + ", ".join(f"{k}={v}" for k, v in evidence.fields))
    for detection in detections:
        verdict = (
            detection.product_id if detection.identified else f"unknown (vendor {detection.vendor or '?'})"
        )
        out.print(f"=> {verdict}, confidence {detection.confidence:.2f}")
    if explanations and not detections:
        out.print("=> nothing: shared infrastructure alone names no product")
