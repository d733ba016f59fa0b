"""The board: a folder with one JSON file per accepted entry (RobustBench style).

An entry file wraps the submission unchanged, so its digest stays checkable::

    {"entry_id": ..., "added_at": ..., "verification": null | {...}, "submission": {...}}
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark import BenchError

from .bundle import write_bundle
from . import validate as _validate
from .validate import SubmissionError, check_bundle, read_json_file, results_fingerprint

__all__ = ["DEFAULT_BOARD", "Entry", "Board", "safe_name"]

DEFAULT_BOARD = Path("leaderboard") / "entries"


def safe_name(text: str, limit: int = 40) -> str:
    """A file-name-safe slug: ASCII letters, digits, ``-`` and ``_`` only; never empty, never hidden."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_")[:limit].strip("-_")
    return slug.lower() or "anonymous"


@dataclass
class Entry:
    """One accepted submission on a board."""

    entry_id: str
    path: Path
    submission: dict[str, Any]
    added_at: str
    verification: dict[str, Any] | None

    @property
    def verified(self) -> bool:
        return bool(self.verification) and self.verification.get("status") == "verified"

    @property
    def status(self) -> str:
        return "verified" if self.verified else "self-reported"

    @property
    def submitter(self) -> dict[str, str]:
        return self.submission.get("submitter") or {}

    def as_json(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id, "added_at": self.added_at, "verification": self.verification, "submission": self.submission}


class Board:
    """Entries of a leaderboard folder.

    Args:
        root: the board folder. Defaults to ``leaderboard/entries``.
    """

    def __init__(self, root: str | Path = DEFAULT_BOARD):
        self.root = Path(root)

    def require_folder(self) -> None:
        """Raise a BenchError unless the board folder exists and is a folder."""
        if not self.root.is_dir():
            state = "is not a folder" if self.root.exists() else "does not exist"
            raise BenchError(f"board folder {self.root} {state}; pass --board with the folder that holds the entries.")

    def entries(self) -> list[Entry]:
        """Every entry, ordered by id (files that are not entries raise a BenchError naming them)."""
        if not self.root.is_dir():
            return []
        entries = []
        for path in sorted(self.root.glob("*.json")):
            data = read_json_file(path, max_bytes=_validate.MAX_BUNDLE_BYTES + 1024 * 1024)
            if not isinstance(data, dict) or not isinstance(data.get("submission"), dict) or not isinstance(data.get("entry_id"), str):
                raise BenchError(f"{path}: not a leaderboard entry (expected entry_id and submission keys).")
            entries.append(Entry(data["entry_id"], path, data["submission"], str(data.get("added_at", "")), data.get("verification")))
        return entries

    def get(self, ident: str) -> Entry:
        """An entry by id, file name or path."""
        candidate = Path(ident)
        for entry in self.entries():
            if ident in (entry.entry_id, entry.path.name) or (candidate.exists() and candidate.resolve() == entry.path.resolve()):
                return entry
        if candidate.is_file():
            data = read_json_file(candidate)
            if isinstance(data, dict) and isinstance(data.get("submission"), dict):
                return Entry(str(data.get("entry_id") or candidate.stem), candidate, data["submission"], str(data.get("added_at", "")), data.get("verification"))
        raise BenchError(f"no entry {ident!r} on the board {self.root}.")

    def check(self, bundle: Any, source: str = "submission") -> list[str]:
        """Every reason ``bundle`` would be refused by this board."""
        entries = self.entries()
        return check_bundle(
            bundle,
            known_digests=[e.submission.get("digest", "") for e in entries],
            known_results=[results_fingerprint(e.submission) for e in entries],
        )

    def add(self, path: str | Path, now: str | None = None) -> Entry:
        """Validate a submission file and store it as a new entry.

        Raises:
            SubmissionError: with every reason, when refused; the board is left unchanged.
        """
        bundle = read_json_file(path)
        reasons = self.check(bundle, str(path))
        if reasons:
            raise SubmissionError(str(path), reasons)
        name = safe_name(bundle["submitter"].get("name", ""))
        entry_id = f"{name}-{bundle['digest'][:12]}"
        entry = Entry(entry_id, self.root / f"{entry_id}.json", bundle, now or _now(), None)
        self.root.mkdir(parents=True, exist_ok=True)
        write_bundle(entry.as_json(), entry.path)
        return entry

    def save(self, entry: Entry) -> None:
        write_bundle(entry.as_json(), entry.path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dumps(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False)
