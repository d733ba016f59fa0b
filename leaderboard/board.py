"""The board: a folder with one JSON file per accepted entry (RobustBench style), and its index.

An entry file wraps the submission unchanged, so its digest stays checkable::

    {"entry_id": ..., "added_at": ..., "submission": {...}}

The board's own index, ``BOARD/index.json``, written only by ``add`` and ``verify``,
maps each entry id to the digest it was added with and the verification record of the
digest that was re-run. An entry is *verified* only while its submission still has that
digest; a ``verification`` block inside an entry file is ignored. Every entry is
re-checked (schema, digest, metrics, id) whenever the board is read: one that fails is
reported and left out, and never stops the others being read.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from benchmark import BenchError

from . import validate as _validate
from .bundle import write_bundle
from .validate import SubmissionError, check_bundle, read_json_file, results_fingerprint

__all__ = ["DEFAULT_BOARD", "INDEX_NAME", "Board", "BoardContents", "Entry", "safe_name", "valid_entry_id"]

DEFAULT_BOARD = Path("leaderboard") / "entries"
INDEX_NAME = "index.json"
"""The board's index file, inside the board folder."""
_INDEX_KIND = "poisonbench-board-index"
_ENTRY_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


def safe_name(text: str, limit: int = 40) -> str:
    """A file-name-safe slug: ASCII letters, digits, ``-`` and ``_`` only; never empty, never hidden."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_")[:limit].strip("-_")
    return slug.lower() or "anonymous"


def valid_entry_id(text: Any) -> bool:
    """Whether ``text`` can name an entry: lower-case ASCII letters, digits, ``-``, ``_``; no path, never the index."""
    return isinstance(text, str) and bool(_ENTRY_ID.match(text)) and text != Path(INDEX_NAME).stem


@dataclass
class Entry:
    """One accepted submission on a board; ``verification`` comes from the board's index."""

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
        """The entry file's content (the verification lives in the index, not here)."""
        return {"entry_id": self.entry_id, "added_at": self.added_at, "submission": self.submission}


@dataclass
class BoardContents:
    """The entries that pass every check, and one line per entry file left out."""

    entries: list[Entry] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


class Board:
    """Entries of a leaderboard folder.

    Args:
        root: the board folder. Defaults to ``leaderboard/entries``.
    """

    def __init__(self, root: str | Path = DEFAULT_BOARD):
        self.root = Path(root)

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def require_folder(self) -> None:
        """Raise a BenchError unless the board folder exists and is a folder."""
        if not self.root.is_dir():
            state = "is not a folder" if self.root.exists() else "does not exist"
            raise BenchError(f"board folder {self.root} {state}; pass --board with the folder that holds the entries.")

    def _entry_files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.json") if p.name != INDEX_NAME)

    def _read_entry(self, path: Path, index: dict[str, Any]) -> Entry:
        """Parse and re-check one entry file.

        Raises:
            SubmissionError: with every reason it is not a valid entry.
        """
        data = read_json_file(path, max_bytes=_validate.MAX_BUNDLE_BYTES + 1024 * 1024, max_depth=_validate.MAX_DEPTH + 1)
        if not isinstance(data, dict) or not isinstance(data.get("submission"), dict):
            raise SubmissionError(str(path), ["entry: not a leaderboard entry (expected entry_id and submission keys)."])
        entry_id = data.get("entry_id")
        reasons = []
        if not valid_entry_id(entry_id):
            reasons.append(f"entry: entry_id {str(entry_id)[:80]!r} is not lower-case letters, digits, '-' and '_' (at most 100).")
        elif path.stem != entry_id:
            reasons.append(f"entry: entry_id {entry_id!r} does not match the file name {path.name!r}.")
        reasons += check_bundle(data["submission"])
        if reasons:
            raise SubmissionError(str(path), reasons)
        record = (index.get(entry_id) or {}).get("verification")
        digest = data["submission"]["digest"]
        verification = record if isinstance(record, dict) and record.get("digest") == digest else None
        return Entry(entry_id, path, data["submission"], str(data.get("added_at", ""))[:64], verification)

    def load(self) -> BoardContents:
        """Every entry that passes the board's checks, in id order, and the files left out (with why).

        An unreadable index costs the badges, not the board: no entry is verified, and it is reported.
        """
        contents = BoardContents()
        try:
            index = self._read_index()
        except BenchError as exc:
            index = {}
            contents.left_out.append(f"{exc}; every entry is shown as self-reported.")
        for path in self._entry_files():
            try:
                contents.entries.append(self._read_entry(path, index))
            except SubmissionError as exc:
                contents.left_out.append(f"{path}: left out: " + "; ".join(exc.reasons[:5]) + (" ..." if len(exc.reasons) > 5 else ""))
        return contents

    def entries(self) -> list[Entry]:
        """Every entry that passes the board's checks, ordered by id (see `load` for those left out)."""
        return self.load().entries

    def get(self, ident: str) -> Entry:
        """An entry by id, file name or path; an entry file that fails the checks raises with its reasons."""
        index = self._read_index()
        candidate = Path(ident)
        for path in self._entry_files():
            if ident in (path.stem, path.name) or (candidate.exists() and candidate.resolve() == path.resolve()):
                return self._read_entry(path, index)
        if candidate.is_file():
            data = read_json_file(candidate, max_bytes=_validate.MAX_BUNDLE_BYTES + 1024 * 1024, max_depth=_validate.MAX_DEPTH + 1)
            if isinstance(data, dict) and isinstance(data.get("submission"), dict):
                reasons = check_bundle(data["submission"])
                if reasons:
                    raise SubmissionError(str(candidate), reasons)
                return Entry(safe_name(str(data.get("entry_id") or candidate.stem), 100), candidate, data["submission"], str(data.get("added_at", ""))[:64], None)
        raise BenchError(f"no entry {ident!r} on the board {self.root}.")

    def _known(self) -> Iterator[tuple[str, str]]:
        """Digest and results fingerprint of every readable entry file, one file in memory at a time."""
        for path in self._entry_files():
            try:
                data = read_json_file(path, max_bytes=_validate.MAX_BUNDLE_BYTES + 1024 * 1024, max_depth=_validate.MAX_DEPTH + 1)
            except SubmissionError:
                continue
            submission = data.get("submission") if isinstance(data, dict) else None
            if isinstance(submission, dict):
                yield str(submission.get("digest", "")), results_fingerprint(submission)

    def check(self, bundle: Any, source: str = "submission") -> list[str]:
        """Every reason ``bundle`` would be refused by this board."""
        known = list(self._known())
        return check_bundle(bundle, known_digests=[d for d, _ in known], known_results=[f for _, f in known])

    def add(self, path: str | Path, now: str | None = None) -> Entry:
        """Validate a submission file and store it as a new entry.

        Raises:
            BenchError: the board path exists and is not a folder.
            SubmissionError: with every reason, when refused; the board is left unchanged.
        """
        if self.root.exists() and not self.root.is_dir():
            self.require_folder()
        bundle = read_json_file(path)
        reasons = self.check(bundle, str(path))
        if reasons:
            raise SubmissionError(str(path), reasons)
        entry_id = f"{safe_name(bundle['submitter'].get('name', ''))}-{bundle['digest'][:12]}"
        entry = Entry(entry_id, self.root / f"{entry_id}.json", bundle, now or _now(), None)
        created = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_bundle(entry.as_json(), entry.path)
            self._update_index(entry_id, {"digest": bundle["digest"], "added_at": entry.added_at, "verification": None})
        except (OSError, ValueError, BenchError) as exc:
            entry.path.unlink(missing_ok=True)
            if created and self.root.is_dir() and not any(self.root.iterdir()):
                self.root.rmdir()
            if isinstance(exc, BenchError):
                raise
            raise BenchError(f"{self.root}: cannot store the entry: {exc}") from None
        return entry

    def remove(self, entry_id: str) -> None:
        """Take an entry off the board: its file and its record in the index.

        Raises:
            BenchError: no entry file of that id on the board.
        """
        path = self.root / f"{entry_id}.json"
        if not valid_entry_id(entry_id) or not path.is_file():
            raise BenchError(f"no entry {entry_id!r} on the board {self.root}.")
        entries = self._read_index()
        if entry_id in entries:
            del entries[entry_id]
            self._write_index(entries)
        path.unlink()

    def record_verification(self, entry: Entry, record: dict[str, Any]) -> None:
        """Store ``record`` in the index for the digest ``entry`` has now (an edit later voids it)."""
        bound = {**record, "digest": entry.submission.get("digest")}
        entry.verification = bound
        current = self._read_index().get(entry.entry_id) or {}
        self._update_index(entry.entry_id, {**current, "digest": entry.submission.get("digest"), "verification": bound})

    def _read_index(self) -> dict[str, Any]:
        """The index's ``entries`` mapping ({} when there is none; a BenchError when it is unreadable)."""
        if not self.index_path.is_file():
            return {}
        try:
            data = read_json_file(self.index_path, max_bytes=_validate.MAX_BUNDLE_BYTES)
        except SubmissionError as exc:
            raise BenchError(f"{self.index_path}: the board's index is unreadable: {'; '.join(exc.reasons)}") from None
        if not isinstance(data, dict) or data.get("kind") != _INDEX_KIND or not isinstance(data.get("entries"), dict):
            raise BenchError(f"{self.index_path}: not a board index (expected kind {_INDEX_KIND!r} and an entries mapping).")
        return {k: v for k, v in data["entries"].items() if isinstance(v, dict)}

    def _update_index(self, entry_id: str, record: dict[str, Any]) -> None:
        entries = self._read_index()
        entries[entry_id] = record
        self._write_index(entries)

    def _write_index(self, entries: dict[str, Any]) -> None:
        tmp = self.index_path.with_name(INDEX_NAME + ".tmp")
        tmp.write_text(json.dumps({"kind": _INDEX_KIND, "entries": entries}, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.index_path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dumps(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False)
