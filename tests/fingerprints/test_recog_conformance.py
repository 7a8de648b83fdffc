"""Recog's own examples as a conformance suite nobody here wrote (~7,500 cases).

Lanterne loads Recog's XML unchanged, translates its Ruby regexes and matches each example
through the same bucketed matcher the index uses; the answer is the database's first matching
fingerprint, as Recog's own Ruby matcher gives it. Known differences live, with a reason each,
in ``recog_known_failures.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from collectors import Endpoint, Kind, Observation
from fingerprints import Recog, load_index, load_recog, run_recog_examples
from fingerprints._recog import RECOG_KINDS
from tests.corpus import RECOG_DIR

KNOWN_FAILURES = Path(__file__).resolve().parent / "recog_known_failures.yaml"
MIN_PASS_RATE = 0.99

pytestmark = pytest.mark.corpus


@pytest.fixture(scope="module")
def recog() -> Recog:
    """Every Recog database of the corpus."""
    if not (RECOG_DIR / "xml").is_dir():
        pytest.skip(
            f"Recog is not in the shared corpus ({RECOG_DIR} not found): the conformance suite needs it"
        )
    return load_recog(RECOG_DIR)


def _known() -> dict[tuple[str, str, int], str]:
    data: dict[str, Any] = yaml.safe_load(KNOWN_FAILURES.read_text(encoding="utf-8"))
    known: dict[tuple[str, str, int], str] = {}
    for entry in data["failures"] or ():
        key = (entry["database"], entry["description"], int(entry["example"]))
        assert entry.get("reason"), f"{key}: every known failure needs a reason"
        assert key not in known, f"{key} is listed twice"
        known[key] = entry["reason"]
    return known


def test_recog_examples_reproduce_their_fields(recog: Recog) -> None:
    total, failures = run_recog_examples(recog)
    known = _known()
    assert total >= 7000, f"only {total} Recog examples found: is the corpus complete?"
    unexpected = [failure for failure in failures if failure.key not in known]
    assert not unexpected, "new Recog failures (fix them or list them with a reason):\n" + "\n".join(
        map(str, unexpected)
    )
    stale = sorted(set(known) - {failure.key for failure in failures})
    assert not stale, f"these listed failures pass now: remove them from {KNOWN_FAILURES.name}: {stale}"
    assert (total - len(failures)) / total >= MIN_PASS_RATE


def test_every_database_loads_without_untranslatable_patterns(recog: Recog) -> None:
    assert not recog.issues, [f"{i.database} {i.description!r}: {i.message}" for i in recog.issues]
    assert len(recog.databases) >= 50


def test_each_example_also_matches_its_own_fingerprint(recog: Recog) -> None:
    """Recog's own self-test: each fingerprint matches its examples with exactly their fields."""
    wrong = []
    for database in recog.databases.values():
        for fingerprint in database.fingerprints:
            for example in fingerprint.examples:
                found = fingerprint.regex.search(example.text)
                fields = fingerprint.extract(found) if found else {}
                if found is None or any(fields.get(name) != value for name, value in example.expected):
                    wrong.append(f"{database.name} {fingerprint.description!r} example {example.ordinal}")
    known = {f"{db} {desc!r} example {n}" for db, desc, n in _known()}
    assert set(wrong) <= known, sorted(set(wrong) - known)


def test_the_databases_lanterne_observes_feed_the_index(recog: Recog) -> None:
    index = load_index(with_recog=True, recog_dir=recog.directory)
    assert index.recog is not None
    assert set(index.recog.databases) == set(RECOG_KINDS)
    banner = Observation(
        ts=0, kind=Kind.HTTP_SERVER, value="nginx/1.18.0 (Ubuntu)", dst=Endpoint(ip="10.0.0.1")
    )
    (evidence,) = index.match(banner)
    assert evidence.rule.origin == "recog"
    assert evidence.side == "dst"
    assert dict(evidence.fields)["service.version"] == "1.18.0"
    (detection,) = index.assess_all([evidence])
    assert not detection.identified
    assert (detection.vendor, dict(detection.fields)["service.product"]) == ("nginx", "nginx")
    assert not detection.of_interest  # a web server is not what unknown_observed is about


def test_mdns_txt_strings_are_matched_one_by_one(recog: Recog) -> None:
    index = load_index(with_recog=True, recog_dir=recog.directory)
    txt = Observation(
        ts=0,
        kind=Kind.MDNS_TXT,
        value="Living Room._device-info._tcp.local",
        src=Endpoint(ip="10.0.0.7"),
        attrs={"txt": ("osxvers=22", "model=AppleTV3,2")},
    )
    found = {item.value: dict(item.fields) for item in index.match(txt)}
    assert found["osxvers=22"]["os.version"] == "13.0"
    assert found["model=AppleTV3,2"]["hw.vendor"] == "Apple"
    assert index.match(txt) == index.match_uncached(txt)
