"""Writing a site folder without losing anything in it: build aside, then swap in.

A build writes every file into a staging folder next to ``--out`` (same file system, so
each file is moved in with an atomic rename). ``OUT/.build-manifest.json`` lists the
files and folders a build put there; the next build replaces or removes only those, and
refuses to overwrite anything else. A build that fails before the swap leaves ``--out``
as it was; the staging folder is always removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from benchmark import BenchError

__all__ = ["MANIFEST_NAME", "SiteWriter", "check_site_folder", "staged_site"]

MANIFEST_NAME = ".build-manifest.json"
_MANIFEST_KIND = "poisonbench-site-manifest"
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_RELATIVE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it, after resolving links and ``..``."""
    return path.resolve() == root.resolve() or root.resolve() in path.resolve().parents


def check_site_folder(board_root: str | Path, out: str | Path) -> None:
    """Refuse a site folder that is, holds or lies inside the board folder, or is not a folder.

    Raises:
        BenchError: naming both folders.
    """
    board, site = Path(board_root), Path(out)
    if site.resolve() == Path(site.resolve().anchor):
        raise BenchError(f"--out {site}: is the file-system root; give the site a folder of its own.")
    if _inside(site, board) or _inside(board, site):
        raise BenchError(
            f"--out {site}: the site folder must not be, hold or lie inside the board folder {board}; choose another folder."
        )
    if site.exists() and not site.is_dir():
        raise BenchError(f"--out {site}: exists and is not a folder.")


def _is_relative_name(name: str) -> bool:
    return bool(_RELATIVE.match(name)) and ".." not in PurePosixPath(name).parts and name != MANIFEST_NAME


class SiteWriter:
    """Hands out paths inside the staging folder and remembers every file written.

    Args:
        root: the staging folder.
    """

    def __init__(self, root: Path):
        self.root = root
        self.files: list[str] = []

    def path(self, relative: str) -> Path:
        """The staging path of ``relative`` (``entries/x.html``); its folder is created.

        Raises:
            BenchError: the name is not a plain relative path inside the site, or is written twice.
        """
        if not _is_relative_name(relative) or relative in self.files:
            raise BenchError(f"site file {relative!r}: not a plain relative name inside the site folder, or written twice.")
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not _inside(target, self.root):
            raise BenchError(f"site file {relative!r}: resolves outside the site folder.")
        self.files.append(relative)
        return target

    def discard(self, relative: str) -> None:
        """Forget ``relative`` and delete its staged file (a file that could not be finished)."""
        if relative in self.files:
            self.files.remove(relative)
            (self.root / relative).unlink(missing_ok=True)

    def text(self, relative: str, content: str) -> Path:
        """Write ``content`` (UTF-8) as ``relative``."""
        target = self.path(relative)
        target.write_text(content, encoding="utf-8")
        return target


def _read_manifest(out: Path) -> tuple[set[str], set[str]]:
    """Files and folders an earlier build wrote into ``out`` (both empty when there is no manifest)."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return set(), set()
    try:
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("kind") != _MANIFEST_KIND:
            raise ValueError("not a build manifest")
        files, folders = data.get("files"), data.get("folders", [])
        if not isinstance(files, list) or not isinstance(folders, list):
            raise ValueError("files and folders must be lists")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BenchError(f"{path}: unreadable build manifest ({exc}); move it away to build into this folder.") from None
    # a name that is not a plain relative path is ignored, never followed
    safe = {f for f in files if isinstance(f, str) and _is_relative_name(f) and _inside(out / f, out)}
    safe_folders = {f for f in folders if isinstance(f, str) and _is_relative_name(f) and _inside(out / f, out)}
    return safe, safe_folders


def _write_manifest(out: Path, files: set[str], folders: set[str]) -> None:
    path = out / MANIFEST_NAME
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps({"kind": _MANIFEST_KIND, "files": sorted(files), "folders": sorted(folders)}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _clashes(out: Path, files: list[str], ours: set[str]) -> list[str]:
    """Paths in ``out`` a swap would overwrite although no earlier build wrote them."""
    clashes = []
    for name in files:
        target = out / name
        if (target.exists() or target.is_symlink()) and (name not in ours or not target.is_file() or target.is_symlink()):
            clashes.append(name)
        parts = PurePosixPath(name).parts
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            node = out / folder
            if (node.exists() or node.is_symlink()) and (not node.is_dir() or node.is_symlink()):
                clashes.append(folder)
    if (out / MANIFEST_NAME).exists() and not (out / MANIFEST_NAME).is_file():
        clashes.append(MANIFEST_NAME)
    return sorted(set(clashes))


def _install(staging: Path, out: Path, files: list[str]) -> None:
    """Move the staged files into ``out``; remove what the previous build wrote and this one did not."""
    ours, our_folders = _read_manifest(out) if out.is_dir() else (set(), set())
    clashes = _clashes(out, files, ours)
    if clashes:
        shown = ", ".join(clashes[:5]) + (f" and {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise BenchError(
            f"--out {out}: would overwrite {shown}, which no earlier 'bench leaderboard build' wrote there "
            f"(no {MANIFEST_NAME} lists them); move them or choose another folder."
        )
    out.mkdir(parents=True, exist_ok=True)
    created = set(our_folders)
    for name in files:
        parts = PurePosixPath(name).parts
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if not (out / folder).exists():
                created.add(folder)
    # the manifest lists old and new files first, so an interrupted swap can still be cleaned up
    _write_manifest(out, ours | set(files), created)
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    for name in sorted(ours - set(files)):
        target = out / name
        if target.is_file() and not target.is_symlink() and _inside(target, out):
            target.unlink()
    needed = {"/".join(PurePosixPath(f).parts[:d]) for f in files for d in range(1, len(PurePosixPath(f).parts))}
    for folder in sorted(created - needed, key=lambda f: -f.count("/")):
        node = out / folder
        if node.is_dir() and not node.is_symlink() and not any(node.iterdir()):
            node.rmdir()
    _write_manifest(out, set(files), {f for f in created if (out / f).is_dir()})


@contextmanager
def staged_site(out: str | Path) -> Iterator[SiteWriter]:
    """Stage a site build next to ``out`` and swap it in when the block ends without error.

    Args:
        out: the site folder (created when absent).

    Yields:
        The writer of the staging folder.

    Raises:
        BenchError: ``out`` is not a folder, cannot be written, or holds files the build would overwrite
            that no earlier build wrote.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: exists and is not a folder.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name or 'site'}.build-", dir=out.parent))
    except OSError as exc:
        raise BenchError(f"--out {out}: cannot create a staging folder beside it: {exc.strerror or exc}") from None
    try:
        writer = SiteWriter(staging)
        yield writer
        try:
            _install(staging, out, writer.files)
        except OSError as exc:
            raise BenchError(f"--out {out}: cannot write the site: {exc.strerror or exc} ({getattr(exc, 'filename', '')})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
