"""Literal prefilters never hide a match, and Recog's Ruby dialect translates to Python."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fingerprints._regex import RegexGroup, RubyRegexError, prefilter, ruby_flags, translate_ruby


@pytest.mark.parametrize(
    ("pattern", "bucket", "key"),
    [
        (r"^Apache(?:/(\S+))?", "prefix", "apach"),  # keys are cut to 12, 8, 5 or 3 characters
        (r"\AMicrosoft-IIS/(\d+)", "prefix", "microsoft-iis"[:12]),
        (r"^ab", "always", ""),
        (r"(?i)^Orthanc", "prefix", "orthanc"[:5]),
        (r"Server: (\S+) nginx/", "word", "nginx"),  # "server" may be the end of a longer word
        (r"\bnginx\b", "word", "nginx"),
        (r"xnginx", "scan", "xnginx"),
        (r"(?:foo|bar)baz", "scan", "baz"),
        (r"\d+\.\d+", "always", ""),
        (r"^(?:Cisco|Juniper) ", "always", ""),
        (r"(Cisco) IOS Software", "word", "ios"),
        (r"^(Cisco) IOS", "prefix", "cisco io"),  # a plain group is part of the literal prefix
    ],
)
def test_buckets(pattern: str, bucket: str, key: str) -> None:
    chosen = prefilter(re.compile(pattern))
    assert (chosen.bucket, chosen.key) == (bucket, key)


# A small grammar of regex pieces: literals that may or may not sit on word boundaries, anchors,
# classes, optional and alternative groups. Strings are drawn from the same alphabet.
_PIECES = [
    "^",
    r"\A",
    "$",
    r"\b",
    "abc",
    "Abc",
    "cab",
    "ab",
    "b1",
    " ",
    "/",
    "-",
    r"\.",
    r"\s+",
    r"\s*",
    r"\d+",
    "[a-c]+",
    r"\S+",
    ".",
    "(?:abc)?",
    "(?:ab|bc)",
    "(abc)",
    r"[ /]",
    "(?i:ABC)",
]
_ALPHABET = "abcAB1 /-.\n"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=6),
    flags=st.sampled_from([0, re.IGNORECASE, re.MULTILINE, re.MULTILINE | re.IGNORECASE | re.DOTALL]),
    noise=st.lists(st.text(alphabet=_ALPHABET, max_size=12), min_size=3, max_size=3),
)
@example(pieces=["^", "abc"], flags=re.MULTILINE, noise=["x\n", "", ""])
def test_the_prefilter_never_hides_a_match(pieces: list[str], flags: int, noise: list[str]) -> None:
    pattern = re.compile("".join(pieces), flags)
    group: RegexGroup[str] = RegexGroup()
    group.add(pattern, "it")
    # Build values that match often: noise around a random string and around text the pattern
    # itself accepts (case-flipped, to exercise the lower-casing of keys).
    values = list(noise)
    for text in noise:
        found = pattern.search(text + "abc b1 cab/Abc-ab.abc")
        if found:
            values.append(found.group(0))
    seeds = ["abc", "Abc cab", "ab b1 abc", "cab/abc-ab", "ABC", "x abc\nabc y"]
    values += [f"{noise[0]}{seed}{noise[1]}" for seed in seeds]
    values += [value.swapcase() for value in list(values)]
    for value in values:
        if pattern.search(value):
            assert group.search(value), (pattern.pattern, value, prefilter(pattern))


def test_the_group_returns_matches_in_insertion_order() -> None:
    group: RegexGroup[int] = RegexGroup()
    for number, pattern in enumerate([r"\bnginx\b", r"^nginx/", r"apache", r"nginx/(\d)"]):
        group.add(re.compile(pattern), number)
    assert [payload for _, payload in group.search("nginx/1.2")] == [0, 1, 3]
    assert len(group) == 4


@pytest.mark.parametrize(
    ("ruby", "python"),
    [
        (r"^foo\z", r"^foo\Z"),
        (r"^foo\Z", r"^foo(?=\n?\Z)"),
        (r"^\h+$", r"^[0-9a-fA-F]+$"),
        (r"[\h:]+", r"[0-9a-fA-F:]+"),
        (r"\H", r"[^0-9a-fA-F]"),
        (r"[[:alpha:]][[:digit:]]", r"[a-zA-Z][0-9]"),
        (r"(?<ver>\d+)", r"(?P<ver>\d+)"),
        (r"(?<=a)b(?<!c)", r"(?<=a)b(?<!c)"),
        (r"(?m)^a.b", r"(?s)^a.b"),
        (r"^(?i)cisco (x)$", r"^(?i:cisco (x)$)"),
        (r"a((?i)b)c", r"a((?i:b))c"),
        (r"(?i:ab)c", r"(?i:ab)c"),
        (r"[]a]", r"[\]a]"),
        (r"[^]a]", r"[^\]a]"),
        (r"a\)b", r"a\)b"),
    ],
)
def test_ruby_translation(ruby: str, python: str) -> None:
    assert translate_ruby(ruby) == python
    re.compile(python)


def test_ruby_translation_keeps_semantics() -> None:
    flags = ruby_flags(None)
    # Ruby's ``^`` is a line start; ``\z`` the very end; ``\Z`` the end before a final newline.
    assert re.search(translate_ruby(r"^b"), "a\nb", flags)
    assert re.search(translate_ruby(r"b\Z"), "ab\n", flags)
    assert not re.search(translate_ruby(r"b\z"), "ab\n", flags)
    # ``\w`` is ASCII in Ruby.
    assert not re.search(translate_ruby(r"^\w$"), "é", flags)


def test_ruby_flags() -> None:
    assert ruby_flags("REG_ICASE") & re.IGNORECASE
    assert ruby_flags("REG_DOT_NEWLINE,REG_ICASE") & re.DOTALL
    assert ruby_flags("REG_MULTILINE") & re.DOTALL  # Ruby's /m is Python's DOTALL
    with pytest.raises(RubyRegexError):
        ruby_flags("REG_EXTENDED")


@pytest.mark.parametrize("ruby", ["(a", "a)", "[[:^alpha:]]", r"[\H]"])
def test_untranslatable(ruby: str) -> None:
    with pytest.raises(RubyRegexError):
        translate_ruby(ruby)
