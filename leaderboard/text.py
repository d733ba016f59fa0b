"""Characters a published string may not carry: one rule for `add`, `bench export` and every output.

Bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069), the implicit
direction marks (U+200E, U+200F, U+061C), C0 and C1 controls and DEL can make a name
read differently from what it is ("Trojan Source"). A submission carrying them anywhere
is refused; a single-line field (the submitter's name, affiliation and link) refuses tab
and line breaks too. Outputs replace any that reach them with U+FFFD, so HTML, CSV and
Markdown show the same inert text.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterator

__all__ = ["REPLACEMENT", "forbidden_characters", "neutralise", "text_reasons"]

REPLACEMENT = "\ufffd"
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROLS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_MULTI_LINE = re.compile(f"[{_BIDI}{_CONTROLS}]")
_SINGLE_LINE = re.compile(f"[{_BIDI}{_CONTROLS}\t\n\r]")
SINGLE_LINE_FIELDS = ("submitter",)
"""Top-level blocks whose strings are one line each."""
_MAX_LISTED = 10


def forbidden_characters(text: str, single_line: bool = False) -> list[str]:
    """The forbidden characters in ``text``, each as ``U+XXXX NAME`` (distinct, in order of appearance)."""
    pattern = _SINGLE_LINE if single_line else _MULTI_LINE
    seen: dict[str, None] = {}
    for match in pattern.finditer(text):
        char = match.group()
        seen.setdefault(f"U+{ord(char):04X} {unicodedata.name(char, 'control')}", None)
    return list(seen)


def neutralise(text: str, single_line: bool = False) -> str:
    """``text`` with every forbidden character replaced by U+FFFD."""
    return (_SINGLE_LINE if single_line else _MULTI_LINE).sub(REPLACEMENT, text)


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string (keys included) below ``value`` with its ``a/b/0`` path, without recursion."""
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            yield where, node
        elif isinstance(node, dict):
            for key, child in node.items():
                child_path = f"{where}/{key}" if where else str(key)
                if isinstance(key, str):
                    yield f"{child_path} (key)", key
                stack.append((child, child_path))
        elif isinstance(node, list):
            stack.extend((child, f"{where}/{i}" if where else str(i)) for i, child in enumerate(node))


def text_reasons(bundle: Any) -> list[str]:
    """A ``text:`` reason for every string of ``bundle`` that carries a forbidden character."""
    reasons: list[str] = []
    unlisted = 0
    for where, text in _strings(bundle, ""):
        single = where.split("/", 1)[0] in SINGLE_LINE_FIELDS and not where.endswith("(key)")
        found = forbidden_characters(text, single_line=single)
        if not found:
            continue
        if len(reasons) < _MAX_LISTED:
            rule = "control, line-break and bidirectional characters" if single else "control and bidirectional characters"
            reasons.append(f"text: {where}: contains {', '.join(found[:3])}; {rule} are not accepted.")
        else:
            unlisted += 1
    if unlisted:
        reasons.append(f"text: {unlisted} more string(s) contain control or bidirectional characters.")
    return sorted(reasons[:_MAX_LISTED]) + reasons[_MAX_LISTED:]
