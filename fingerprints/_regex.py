"""Regex groups with literal prefilters, and the translation of Recog's Ruby regex dialect.

Trying every regex of a catalogue on every value would make matching cost grow with the
catalogue. Instead, each regex is put in one bucket, chosen from a literal that any match must
contain (read from Python's own parse of the pattern):

- **prefix**: the pattern starts with ``^``/``\\A`` and a literal, so a match starts with it at
  the start of the value or of a line: one dict lookup per key length and line;
- **word**: a literal word bounded on both sides (by an anchor, ``\\b``, a space class or a
  non-alphanumeric literal), so the value contains it as a whole ``[a-z0-9]+`` token: one dict
  lookup per token of the value;
- **scan**: some other literal of three characters or more, checked with ``in`` first;
- **always**: nothing usable; tried on every value (keep these few).

Keys are lower-cased on both sides, so a bucket only ever over-selects: the regex decides.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

# ``re._parser`` is CPython's own regex parser (``sre_parse`` is its deprecated alias); typeshed
# has no stub for the private name, hence the dynamic import.
_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")

_T = TypeVar("_T")

#: Prefix keys are cut to the longest of these lengths that the literal prefix reaches.
PREFIX_LENGTHS: Final = (12, 8, 5, 3)
_MIN_WORD: Final = 3
_MIN_SCAN: Final = 3
_TOKEN: Final = re.compile(r"[a-z0-9]+")

_LITERAL = _constants.LITERAL
_AT = _constants.AT
_IN = _constants.IN
_SUBPATTERN = _constants.SUBPATTERN
_REPEATS = (_constants.MAX_REPEAT, _constants.MIN_REPEAT, getattr(_constants, "POSSESSIVE_REPEAT", None))
_STARTS = (_constants.AT_BEGINNING, _constants.AT_BEGINNING_STRING)
_BOUNDARY_AT = (
    _constants.AT_BEGINNING,
    _constants.AT_BEGINNING_STRING,
    _constants.AT_END,
    _constants.AT_END_STRING,
    _constants.AT_BOUNDARY,
    _constants.AT_BEGINNING_LINE,
    _constants.AT_END_LINE,
)
_NON_WORD_CATEGORIES = (
    _constants.CATEGORY_SPACE,
    _constants.CATEGORY_NOT_WORD,
    _constants.CATEGORY_LINEBREAK,
)

# Atoms of the flattened top-level sequence.
_CHAR, _BOUND, _OTHER = "char", "bound", "other"


def _alnum(char: str) -> bool:
    """The prefilter's idea of a word character: ASCII letters and digits after lower-casing."""
    return char.isascii() and char.isalnum()


def _is_boundary_class(items: list[tuple[Any, Any]]) -> bool:
    """Whether a character class can only match characters that separate words."""
    if not items:
        return False
    for op, arg in items:
        if op is _LITERAL:
            if _alnum(chr(arg).lower()):
                return False
        elif op is _constants.CATEGORY:
            if arg not in _NON_WORD_CATEGORIES:
                return False
        else:  # ranges, negations: could cover letters or digits
            return False
    return True


def _atoms(data: Any) -> Iterator[tuple[str, str]]:
    """Flatten a parsed pattern into mandatory characters, word boundaries and the rest."""
    for op, arg in data:
        if op is _LITERAL:
            yield _CHAR, chr(arg).lower()
        elif op is _AT:
            yield (_BOUND, "start" if arg in _STARTS else "") if arg in _BOUNDARY_AT else (_OTHER, "")
        elif op is _IN:
            yield (_BOUND, "") if _is_boundary_class(arg) else (_OTHER, "")
        elif op is _SUBPATTERN:
            # A plain group is mandatory: its content is part of every match, in order.
            yield from _atoms(arg[-1])
        elif op in _REPEATS and arg[0] >= 1 and len(arg[2]) == 1 and arg[2][0][0] is _IN:
            # ``\s+``: at least one separator.
            yield (_BOUND, "") if _is_boundary_class(arg[2][0][1]) else (_OTHER, "")
        else:
            yield _OTHER, ""


@dataclass(frozen=True, slots=True)
class Prefilter:
    """Which bucket a regex goes to, and under which key."""

    bucket: str
    """``prefix``, ``word``, ``scan`` or ``always``."""
    key: str = ""
    alternatives: tuple[str, ...] = ()
    """For ``word``: every usable word, longest first (the group picks the least crowded)."""


def prefilter(pattern: re.Pattern[str]) -> Prefilter:
    """Choose the bucket of a compiled regex from the literals every match must contain."""
    try:
        parsed = _parser.parse(pattern.pattern, pattern.flags)
    except re.error:  # pragma: no cover - the pattern compiled already
        return Prefilter("always")
    atoms = list(_atoms(parsed.data))
    # Prefix: a start anchor, then literal characters. With MULTILINE, ``^`` is a line start:
    # ``candidates`` looks up every line of a multi-line value, so the bucket stays exact.
    if atoms and atoms[0] == (_BOUND, "start"):
        prefix = []
        for kind, char in atoms[1:]:
            if kind != _CHAR:
                break
            prefix.append(char)
        if len(prefix) >= PREFIX_LENGTHS[-1]:
            text = "".join(prefix)
            length = next(size for size in PREFIX_LENGTHS if size <= len(text))
            return Prefilter("prefix", text[:length])
    # Word and scan candidates come from the runs of mandatory characters.
    words: set[str] = set()
    best_scan = ""
    index = 0
    while index < len(atoms):
        if atoms[index][0] != _CHAR:
            index += 1
            continue
        start = index
        while index < len(atoms) and atoms[index][0] == _CHAR:
            index += 1
        run = "".join(char for _, char in atoms[start:index])
        bounded_left = start > 0 and atoms[start - 1][0] == _BOUND
        bounded_right = index < len(atoms) and atoms[index][0] == _BOUND
        if len(run) > len(best_scan):
            best_scan = run
        words.update(
            word for word in _bounded_words(run, bounded_left, bounded_right) if len(word) >= _MIN_WORD
        )
    if words:
        ranked = tuple(sorted(words, key=lambda word: (-len(word), word)))
        return Prefilter("word", ranked[0], ranked)
    if len(best_scan) >= _MIN_SCAN:
        return Prefilter("scan", best_scan)
    return Prefilter("always")


def _bounded_words(run: str, bounded_left: bool, bounded_right: bool) -> Iterator[str]:
    """The whole ``[a-z0-9]+`` words of a literal run (its ends count only if bounded)."""
    for match in _TOKEN.finditer(run):
        left_ok = match.start() > 0 or bounded_left
        right_ok = match.end() < len(run) or bounded_right
        if left_ok and right_ok:
            yield match.group()


def tokens(lowered: str) -> set[str]:
    """The words of a lower-cased value, as the word bucket indexes them."""
    return set(_TOKEN.findall(lowered))


class RegexGroup(Generic[_T]):
    """Regexes bucketed by a literal prefilter; matches come back in insertion order."""

    __slots__ = ("_always", "_count", "_prefix", "_prefix_lengths", "_scan", "_words")

    def __init__(self) -> None:
        self._prefix: dict[str, list[tuple[int, re.Pattern[str], _T]]] = {}
        self._prefix_lengths: tuple[int, ...] = ()
        self._words: dict[str, list[tuple[int, re.Pattern[str], _T]]] = {}
        self._scan: list[tuple[str, int, re.Pattern[str], _T]] = []
        self._always: list[tuple[int, re.Pattern[str], _T]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: re.Pattern[str], payload: _T) -> Prefilter:
        """Index ``pattern``; return the bucket it went to."""
        chosen = prefilter(pattern)
        entry = (self._count, pattern, payload)
        self._count += 1
        if chosen.bucket == "prefix":
            self._prefix.setdefault(chosen.key, []).append(entry)
            self._prefix_lengths = tuple(sorted({*self._prefix_lengths, len(chosen.key)}, reverse=True))
        elif chosen.bucket == "word":
            # Any required word will do: take the one with the fewest regexes so far, so that a
            # common word ("firmware", "server") does not gather a crowd.
            key = min(chosen.alternatives, key=lambda word: len(self._words.get(word, ())))
            self._words.setdefault(key, []).append(entry)
            chosen = Prefilter("word", key, chosen.alternatives)
        elif chosen.bucket == "scan":
            self._scan.append((chosen.key, *entry))
        else:
            self._always.append(entry)
        return chosen

    def candidates(self, value: str) -> list[tuple[int, re.Pattern[str], _T]]:
        """The regexes whose prefilter accepts ``value``, in insertion order."""
        lowered = value.lower()
        found: list[tuple[int, re.Pattern[str], _T]] = self._always.copy() if self._always else []
        if self._prefix:
            starts = lowered.split("\n") if "\n" in lowered else (lowered,)
            prefix = self._prefix
            for line in starts:
                for length in self._prefix_lengths:
                    hit = prefix.get(line[:length])
                    if hit:
                        found.extend(hit)
        if self._words:
            words = self._words
            for token in tokens(lowered):
                hit = words.get(token)
                if hit:
                    found.extend(hit)
        if self._scan:
            found.extend(entry[1:] for entry in self._scan if entry[0] in lowered)
        if len(found) > 1:
            # Several lines of a value may hit the same prefix entry: keep each regex once.
            found = sorted({entry[0]: entry for entry in found}.values(), key=_order)
        return found

    def search(self, value: str) -> list[tuple[re.Match[str], _T]]:
        """Every regex that matches ``value`` (searched), in insertion order."""
        out: list[tuple[re.Match[str], _T]] = []
        for _, pattern, payload in self.candidates(value):
            match = pattern.search(value)
            if match is not None:
                out.append((match, payload))
        return out


def _order(entry: tuple[int, re.Pattern[str], Any]) -> int:
    return entry[0]


# --- Recog's Ruby dialect -------------------------------------------------------------------

_POSIX_CLASSES: Final = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\r\n\v\f",
    "blank": r" \t",
    "punct": r"!-/:-@\[-`{-~",
    "xdigit": "0-9a-fA-F",
    "word": r"\w",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
}

#: Recog's ``flags`` attribute, mapped as Recog's own Ruby ``RegexpFactory`` does: both
#: ``REG_DOT_NEWLINE`` and ``REG_MULTILINE`` set Ruby's ``/m``, which is Python's DOTALL.
_RECOG_FLAGS: Final = {
    "REG_ICASE": re.IGNORECASE,
    "REG_DOT_NEWLINE": re.DOTALL,
    "REG_MULTILINE": re.DOTALL,
    "REG_LINE_ANY_CRLF": re.DOTALL,
}


class RubyRegexError(ValueError):
    """A Recog pattern that cannot be expressed in Python ``re``."""


def ruby_flags(attribute: str | None) -> int:
    """Python flags for a Recog ``flags`` attribute (``REG_ICASE,REG_DOT_NEWLINE``...)."""
    # Ruby's ``^``/``$`` always match at line boundaries and ``\w``/``\d``/``\s`` are ASCII.
    flags = re.MULTILINE | re.ASCII
    for name in re.split(r"[\s,|]+", attribute or ""):
        if name:
            try:
                flags |= _RECOG_FLAGS[name]
            except KeyError:
                raise RubyRegexError(f"unknown Recog flag {name!r}") from None
    return flags


def translate_ruby(pattern: str) -> str:
    """Rewrite a Ruby (Onigmo) regex into Python ``re`` syntax.

    Handles ``\\z``/``\\Z``, ``\\h``/``\\H``, POSIX bracket classes, ``(?<name>``, inline
    ``(?m)`` (Ruby's dot-all) and inline flags written after the start (scoped to the rest of
    their group, as Ruby does).
    """
    out: list[str] = []
    # For each open group: the index in ``out`` where it closes is unknown yet; we count how
    # many scoped-flag groups we opened inside it, to close them at its end.
    pending: list[int] = [0]
    i = 0
    in_class = False
    length = len(pattern)
    while i < length:
        char = pattern[i]
        if char == "\\" and i + 1 < length:
            escaped = pattern[i + 1]
            if escaped == "z":
                out.append(r"\Z")
            elif escaped == "Z":
                out.append(r"(?=\n?\Z)" if not in_class else "Z")
            elif escaped == "h":
                out.append("0-9a-fA-F" if in_class else "[0-9a-fA-F]")
            elif escaped == "H":
                if in_class:
                    raise RubyRegexError(r"\H inside a character class")
                out.append("[^0-9a-fA-F]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                if end != -1:
                    name = pattern[i + 2 : end]
                    negated = name.startswith("^")
                    if negated or name not in _POSIX_CLASSES:
                        raise RubyRegexError(f"POSIX class [:{name}:] is not supported")
                    out.append(_POSIX_CLASSES[name])
                    i = end + 2
                    continue
            if char == "]":
                in_class = False
            out.append(char)
            i += 1
            continue
        if char == "[":
            in_class = True
            out.append(char)
            i += 1
            # A ``]`` (or ``^]``) right after the opening bracket is a literal.
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):
                out.append(r"\]")
                i += 1
            continue
        if char == "(":
            flags = re.match(r"\(\?([imx]*)(?:-([imx]*))?([:)])", pattern[i:])
            if flags and (flags.group(1) or flags.group(2)):
                on = flags.group(1).replace("m", "s")
                off = (flags.group(2) or "").replace("m", "s")
                spec = on + (f"-{off}" if off else "")
                if flags.group(3) == ":":
                    out.append(f"(?{spec}:")
                    pending.append(0)
                elif not out and not off:
                    out.append(f"(?{on})")  # global flags at the very start: Python accepts them
                else:
                    # Onigmo applies the flags to the rest of the enclosing group, alternatives
                    # included (``a(?i)b|c`` is ``a(?i:b|c)``).
                    out.append(f"(?{spec}:")
                    pending[-1] += 1
                i += flags.end()
                continue
            if pattern.startswith("(?<", i) and not pattern.startswith(("(?<=", "(?<!"), i):
                out.append("(?P<")
                pending.append(0)
                i += 3
                continue
            pending.append(0)
            out.append(char)
            i += 1
            continue
        if char == ")":
            out.append(")" * pending.pop())
            if not pending:
                raise RubyRegexError("unbalanced parenthesis")
            out.append(char)
            i += 1
            continue
        out.append(char)
        i += 1
    if len(pending) != 1:
        raise RubyRegexError("unbalanced parenthesis")
    out.append(")" * pending[0])
    return "".join(out)
