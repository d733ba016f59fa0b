"""Studies: what one table, figure or bundle covers.

A study is a sweep's resolved config without ``seeds``, the executor and ``out`` (which
change how much is run and where, not what is measured), plus the data set fingerprint
and the package version; its key is a hash of that. Each ``bench run`` records its study
and the cells it plans in the results database, so results of two configs (or of two
package versions) run into one folder are never mixed: tables cover one study, by
default the one last run into the folder.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from .config import SweepConfig
from .errors import BenchError
from .store import ResultStore

__all__ = ["Study", "study_config", "study_key", "describe_study", "select_study", "format_studies"]

KEY_LENGTH = 16


@dataclass(frozen=True)
class Study:
    """One study of an output folder: its key, config, description and stored cell keys."""

    key: str
    config: dict[str, Any]
    description: str
    last_run_at: float
    cell_keys: list[str]
    others: int = 0


def study_config(config: SweepConfig, dataset_fingerprint: str, version: str) -> dict[str, Any]:
    """The resolved sweep without seeds, executor and output folder, plus data fingerprint and version."""
    resolved = {k: v for k, v in config.resolved().items() if k not in ("seeds", "executor", "out")}
    return {**resolved, "dataset_fingerprint": dataset_fingerprint, "package_version": version}


def study_key(config: dict[str, Any]) -> str:
    """Stable key of a study config (hex, `KEY_LENGTH` characters)."""
    payload = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def describe_study(config: dict[str, Any]) -> str:
    """A one-line description: data set, target, segmenters, attacks with rates, defenses."""
    def names(items: Sequence[dict[str, Any]]) -> str:
        return ", ".join(str(i.get("name")) for i in items)

    attacks = ", ".join(f"{a.get('name')}@{'/'.join(f'{float(r):.3g}' for r in a.get('rates', []))}" for a in config.get("attacks", []))
    dataset = (config.get("dataset") or {}).get("name", "?")
    target = (config.get("task") or {}).get("target", "?")
    return f"{dataset} {target}; {names(config.get('segmenters', []))}; {attacks}; defenses {names(config.get('defenses', []))}"


def select_study(store: ResultStore, keys: str | Sequence[str] | None = None) -> Study | None:
    """The study a table covers: the last one run, or the one whose key starts with ``keys``.

    Args:
        store: the folder's results database.
        keys: a key or key prefix, or several (which must all name one study). Defaults
            to the study last run into the folder.

    Returns:
        The study, or None when the database holds no cell.

    Raises:
        BenchError: a prefix matches no study or several, or the keys name different studies
            (the message lists the folder's studies).
    """
    studies = store.studies()
    if studies.empty:
        return None
    wanted = [keys] if isinstance(keys, str) else list(keys or [])
    if not wanted:
        chosen = studies.iloc[0]
    else:
        matches: dict[str, pd.Series] = {}
        for prefix in wanted:
            found = studies[studies["study"].str.startswith(prefix.strip().lower())]
            if found.empty:
                raise BenchError(f"{store.path}: no study with key {prefix!r}. Studies here:\n{format_studies(studies)}")
            if len(found) > 1:
                raise BenchError(f"{store.path}: study key {prefix!r} is ambiguous; it matches {len(found)} studies:\n{format_studies(found)}")
            matches[found.iloc[0]["study"]] = found.iloc[0]
        if len(matches) > 1:
            raise BenchError(
                f"{store.path}: one table or bundle covers one study; {len(matches)} were named:\n"
                f"{format_studies(studies[studies['study'].isin(matches)])}"
            )
        chosen = next(iter(matches.values()))
    return Study(str(chosen["study"]), chosen["config"], str(chosen["description"]), float(chosen["last_run_at"]),
                 list(chosen["cell_keys"]), others=len(studies) - 1)


def format_studies(studies: pd.DataFrame) -> str:
    """One line per study: key, when it was last run, cells, seeds, description."""
    lines = []
    for _, row in studies.iterrows():
        when = _dt.datetime.fromtimestamp(float(row["last_run_at"]), _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"  {row['study']}  {when}  {row['finished']}/{row['cells']} cells  {row['seeds']} seed(s)  {row['description']}")
    return "\n".join(lines)
