"""``python -m fingerprints.lint [CATALOG_DIR] [--recog [DIR]]``: check the catalogue before committing.

Loads the catalogue (every schema error with its file and line), runs every example, positive
and negative, and lints what the loader cannot see (a rule no example exercises, a duplicate
rule, a regex with no literal to index it by). With ``--recog``, also runs Recog's examples.
Exit code: 0 clean, 1 failures, 2 the catalogue does not load. ``lanterne fingerprints test``
does the same from the main CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fingerprints._index import Index
from fingerprints._loader import CatalogError, load_catalog
from fingerprints._recog import load_recog
from fingerprints._selftest import lint_catalog, run_catalog_examples, run_recog_examples


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m fingerprints.lint", description=__doc__.splitlines()[0])
    parser.add_argument("catalog", nargs="?", type=Path, help="catalogue folder (default: the shipped one)")
    parser.add_argument(
        "--recog",
        nargs="?",
        const="",
        metavar="DIR",
        help="also run Recog's examples (default folder if no DIR)",
    )
    args = parser.parse_args(argv)
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as exc:
        sys.stdout.write(f"{exc}\n")
        sys.stderr.write(f"the catalogue does not load: {len(exc.issues)} error(s)\n")
        return 2
    index = Index(catalog)
    failures = [str(item) for item in (*run_catalog_examples(index, catalog), *lint_catalog(index, catalog))]
    examples = sum(len(product.examples) for product in catalog.products)
    sys.stderr.write(
        f"catalogue {catalog.version}: {len(catalog.products)} products, {len(catalog.rules)} rules, "
        f"{examples} examples, {len(failures)} failure(s)\n"
    )
    if args.recog is not None:
        try:
            recog = load_recog(args.recog or None)
        except FileNotFoundError as exc:
            sys.stderr.write(f"{exc}\n")
            return 2
        total, recog_failures = run_recog_examples(recog)
        failures += [str(item) for item in recog_failures]
        sys.stderr.write(f"recog {recog.version}: {total} examples, {len(recog_failures)} failure(s)\n")
    for failure in failures:
        sys.stdout.write(f"{failure}\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
