"""Run every example of the catalogue and of Recog, and lint the catalogue (Recog's self-test, here)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from fingerprints._evidence import assess
from fingerprints._index import Index
from fingerprints._loader import example_observation
from fingerprints._model import Catalog
from fingerprints._recog import Recog
from fingerprints._regex import prefilter
from fingerprints._vocabulary import RuleKind


@dataclass(frozen=True, slots=True)
class Failure:
    """One example that does not do what it says, or one lint finding."""

    where: str
    """``catalog/...yaml:12`` for the catalogue, ``recog db.xml #n example k`` for Recog."""
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class RecogFailure:
    """A Recog example whose expected fields Lanterne does not reproduce."""

    database: str
    description: str
    example: int
    """1-based position of the example in its fingerprint."""
    message: str

    @property
    def key(self) -> tuple[str, str, int]:
        """How ``recog_known_failures.yaml`` names it."""
        return (self.database, self.description, self.example)

    def __str__(self) -> str:
        return f"recog {self.database}.xml {self.description!r} example {self.example}: {self.message}"


def run_catalog_examples(index: Index, catalog: Catalog) -> list[Failure]:
    """Check every positive and negative example of every product against the index."""
    failures: list[Failure] = []
    for product in catalog.products:
        for example in product.examples:
            where = str(example.location)
            observation = example_observation(example)
            evidence = index.match_uncached(observation)
            if index.match(observation) != evidence:
                failures.append(Failure(where, "the cached and uncached lookups disagree"))
            mine = [item for item in evidence if item.rule.product_id == product.id]
            fired = sorted(item.rule.rule_id.partition(":")[2] for item in mine)
            if not example.positive:
                if mine:
                    failures.append(Failure(where, f"negative example matched rule(s) {', '.join(fired)}"))
                continue
            if not mine:
                others = sorted({item.rule.rule_id for item in evidence})
                note = f" (it matched {', '.join(others)})" if others else ""
                failures.append(Failure(where, f"positive example matched no rule of {product.id}{note}"))
                continue
            if example.rule is not None and example.rule not in fired:
                failures.append(
                    Failure(where, f"rule {example.rule!r} did not fire (fired: {', '.join(fired)})")
                )
            if example.detects is not None:
                detection = assess(mine)
                named = detection is not None and detection.product_id == product.id
                if named != example.detects:
                    said = "names" if named else "does not name"
                    failures.append(
                        Failure(where, f"alone, this example {said} {product.id}: detects is wrong")
                    )
    return failures


def lint_catalog(index: Index, catalog: Catalog) -> list[Failure]:
    """What the loader cannot see alone: unused rules, duplicate rules, regexes with no prefilter."""
    failures: list[Failure] = []
    fired: set[str] = set()
    for product in catalog.products:
        for example in product.examples:
            if example.positive:
                fired.update(item.rule.rule_id for item in index.match_uncached(example_observation(example)))
    for product in catalog.products:
        seen: dict[tuple[object, ...], str] = {}
        for rule in product.rules:
            where = str(rule.location)
            key = (
                rule.kind,
                rule.field,
                rule.exact,
                rule.suffix,
                rule.regex,
                rule.oid_prefix,
                rule.uid_prefix,
                rule.oui,
            )
            if key in seen:
                failures.append(Failure(where, f"rule {rule.id} repeats rule {seen[key]}"))
            seen[key] = rule.id
            if rule.id not in fired:
                failures.append(Failure(where, f"rule {rule.id} is not exercised by any positive example"))
            unbucketed = (
                rule.regex is not None
                and rule.kind is not RuleKind.HOST
                and prefilter(re.compile(rule.regex)).bucket == "always"
            )
            if unbucketed:
                failures.append(
                    Failure(
                        where,
                        f"rule {rule.id}: the regex has no literal the index can bucket it by "
                        "(start it with ^ and a literal, or include a whole literal word)",
                    )
                )
    return failures


def run_recog_examples(recog: Recog) -> tuple[int, list[RecogFailure]]:
    """Match every Recog example through Lanterne's matcher; return the count and the failures.

    An example passes when the database's answer (its first matching fingerprint, as Recog
    itself answers) carries every field the example expects, with the same value.
    """
    total = 0
    failures: list[RecogFailure] = []
    for issue in recog.issues:
        total += issue.examples
        failures.extend(
            RecogFailure(issue.database, issue.description, number, f"not loaded: {issue.message}")
            for number in range(1, issue.examples + 1)
        )
    for database in recog.databases.values():
        for fingerprint in database.fingerprints:
            for example in fingerprint.examples:
                total += 1
                result = database.match(example.text)
                if result is None:
                    message = "no fingerprint matched"
                else:
                    matched, fields = result
                    wrong = [
                        f"{name}={fields.get(name)!r} (expected {value!r})"
                        for name, value in example.expected
                        if fields.get(name) != value
                    ]
                    if not wrong:
                        continue
                    by = "" if matched is fingerprint else f" by {matched.description!r} (first match)"
                    message = f"matched{by} with {', '.join(wrong)}"
                failures.append(
                    RecogFailure(database.name, fingerprint.description, example.ordinal, message)
                )
    return total, failures


def iter_failures(index: Index, catalog: Catalog) -> Iterator[Failure]:
    """Catalogue example failures, then lint findings."""
    yield from run_catalog_examples(index, catalog)
    yield from lint_catalog(index, catalog)
