"""Reading a submission safely and checking it: schema, digest, aggregates, ranges.

Every check runs, so a refusal lists every reason at once.
"""

from __future__ import annotations

import functools
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from benchmark import LOWER_IS_BETTER, METRICS, OPTIONAL_METRICS, BenchError, aggregate, metrics_from_confusion

from .bundle import COUNT_COLUMNS, compute_digest
from .text import text_reasons

__all__ = [
    "MAX_BUNDLE_BYTES",
    "MAX_DEPTH",
    "AGGREGATE_TOLERANCE",
    "COUNT_TOLERANCE",
    "MAX_COUNT",
    "DETECTION_FIGURES",
    "SubmissionError",
    "load_schema",
    "read_json_file",
    "check_bundle",
    "results_fingerprint",
]

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
"""Largest bundle file accepted (64 MiB)."""
MAX_DEPTH = 32
"""Deepest nesting of JSON arrays and objects accepted."""
MAX_COUNT = 2**53
"""Largest TP/FP/TN/FN accepted: every count is exact as a float."""
AGGREGATE_TOLERANCE = 1e-9
"""Largest accepted difference between a submitted aggregate and its recomputation."""
COUNT_TOLERANCE = 1e-9
"""Largest accepted difference between a per-case metric and the value its TP/FP/TN/FN give."""
DETECTION_FIGURES = ("auroc", "ap", "precision", "recall", "f1", "removed_fraction")
"""Fields of a defense report that are fractions in [0, 1] (or null when undefined)."""
_MAX_LISTED = 10
"""Per-case problems of one kind listed one by one; the rest are counted."""


class SubmissionError(BenchError):
    """A submission is refused; ``reasons`` lists every problem found."""

    def __init__(self, source: str, reasons: list[str]):
        self.reasons = list(reasons)
        lines = "\n".join(f"  - {r}" for r in self.reasons)
        super().__init__(f"{source}: refused ({len(self.reasons)} reason{'s' if len(self.reasons) != 1 else ''}):\n{lines}")


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema of submissions, shipped as ``leaderboard/submission.schema.json``."""
    text = resources.files("leaderboard").joinpath("submission.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not JSON (NaN and infinities must be written as null)")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _depth(value: Any, limit: int) -> int:
    """Deepest nesting of containers, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def read_json_file(path: str | Path, max_bytes: int | None = None, max_depth: int | None = None) -> Any:
    """Parse a JSON file, refusing huge, deeply nested, NaN-carrying or duplicate-key documents.

    Args:
        path: the file.
        max_bytes: size limit. Defaults to `MAX_BUNDLE_BYTES`.
        max_depth: nesting limit. Defaults to `MAX_DEPTH`.

    Raises:
        SubmissionError: the file is missing, too large, nested too deeply or not strict JSON.
    """
    max_bytes = MAX_BUNDLE_BYTES if max_bytes is None else max_bytes
    max_depth = MAX_DEPTH if max_depth is None else max_depth
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SubmissionError(source, [f"cannot read the file: {exc.strerror or exc}"]) from None
    if size > max_bytes:
        raise SubmissionError(source, [f"the file is {size} bytes; the limit is {max_bytes} bytes."])
    try:
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise SubmissionError(source, [f"cannot read the file: {exc.strerror or exc}"]) from None
    if len(raw) > max_bytes:
        raise SubmissionError(source, [f"the file is larger than the limit of {max_bytes} bytes."])
    # cheap pre-scan: nesting depth from brackets outside strings bounds the parser's recursion
    depth = _bracket_depth(raw, max_depth)
    if depth > max_depth:
        raise SubmissionError(source, [f"JSON nested more than {max_depth} levels deep."])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubmissionError(source, [f"not UTF-8: {exc}"]) from None
    del raw  # the parser's objects, not a second copy of the file, should take the memory
    try:
        data = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise SubmissionError(source, [f"JSON nested more than {max_depth} levels deep."]) from None
    except ValueError as exc:
        raise SubmissionError(source, [f"not valid JSON: {exc}"]) from None
    if _depth(data, max_depth) > max_depth:
        raise SubmissionError(source, [f"JSON nested more than {max_depth} levels deep."])
    return data


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"number {token[:40]} is out of range (largest finite double about 1.8e308)")
    return value


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_SCAN_CHUNK = 1 << 20


def _bracket_depth(raw: bytes, limit: int) -> int:
    """Maximum bracket nesting outside JSON strings, scanned in chunks so memory stays about twice the file."""
    import numpy as np

    skeleton = _STRING.sub(b"", raw)
    deepest = level = 0
    for start in range(0, len(skeleton), _SCAN_CHUNK):
        chunk = np.frombuffer(skeleton, dtype=np.uint8, count=min(_SCAN_CHUNK, len(skeleton) - start), offset=start)
        steps = np.isin(chunk, (0x5B, 0x7B)).astype(np.int32) - np.isin(chunk, (0x5D, 0x7D))
        running = np.cumsum(steps, dtype=np.int64) + level
        deepest, level = max(deepest, int(running.max())), int(running[-1])
        if deepest > limit:
            break
    return deepest


def _schema_reasons(bundle: Any) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load_schema())
    reasons = []
    for error in sorted(validator.iter_errors(bundle), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
        reasons.append(f"schema: {where}: {message}")
    return reasons


def results_fingerprint(bundle: dict[str, Any]) -> str:
    """Identity of a bundle's results: every cell's per-case TP/FP/TN/FN, order-free (duplicate detection).

    The metrics follow from the counts (see `check_bundle`), so a metric nudged by 1e-15,
    a renamed cell key or case, another submitter or export date leave the fingerprint as it is.
    """
    import hashlib

    cells = []
    for _, cell in _cells(bundle):
        cases = cell.get("cases")
        rows = [json.dumps([c.get(k) for k in COUNT_COLUMNS] if isinstance(c, dict) else None) for c in (cases if isinstance(cases, list) else [])]
        cells.append(json.dumps(sorted(rows)))
    return hashlib.sha256("\n".join(sorted(cells)).encode("utf-8")).hexdigest()


def _in_unit(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= value <= 1.0


def _cells(bundle: dict[str, Any]) -> Iterable[tuple[int, dict[str, Any]]]:
    cells = bundle.get("cells")
    if isinstance(cells, list):
        for i, cell in enumerate(cells):
            if isinstance(cell, dict):
                yield i, cell


def _range_reasons(bundle: dict[str, Any]) -> list[str]:
    reasons = []
    config = bundle.get("config")
    if isinstance(config, dict) and isinstance(config.get("attacks"), list):
        for i, attack in enumerate(config["attacks"]):
            rates = attack.get("rates") if isinstance(attack, dict) else None
            for j, rate in enumerate(rates if isinstance(rates, list) else []):
                if isinstance(rate, (int, float)) and not _in_unit(rate):
                    reasons.append(f"range: config/attacks/{i}/rates/{j}: rate {rate} is not in [0, 1].")
    for i, cell in _cells(bundle):
        cfg = cell.get("config")
        rate = cfg.get("rate") if isinstance(cfg, dict) else None
        if isinstance(rate, (int, float)) and not _in_unit(rate):
            reasons.append(f"range: cells/{i}/config/rate: rate {rate} is not in [0, 1].")
        cases = cell.get("cases")
        for j, case in enumerate(cases if isinstance(cases, list) else []):
            if not isinstance(case, dict):
                continue
            for metric in (*METRICS, *(m for m in OPTIONAL_METRICS if m not in LOWER_IS_BETTER)):
                value = case.get(metric)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and not _in_unit(value):
                    reasons.append(f"range: cells/{i}/cases/{j}/{metric}: {value} is not in [0, 1].")
        aggregates = cell.get("aggregates")
        for metric in (*METRICS, *OPTIONAL_METRICS):
            agg = aggregates.get(metric) if isinstance(aggregates, dict) else None
            for field in ("mean", "ci_low", "ci_high"):
                value = agg.get(field) if isinstance(agg, dict) else None
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if metric in LOWER_IS_BETTER and not (math.isfinite(value) and value >= 0):
                    reasons.append(f"range: cells/{i}/aggregates/{metric}/{field}: {value} is not a distance (a number >= 0, in mm).")
                elif metric not in LOWER_IS_BETTER and not _in_unit(value):
                    reasons.append(f"range: cells/{i}/aggregates/{metric}/{field}: {value} is not in [0, 1].")
        report = cell.get("defense_report")
        for field in DETECTION_FIGURES if isinstance(report, dict) else ():
            value = report.get(field)
            if value is not None and not _in_unit(value):
                reasons.append(f"range: cells/{i}/defense_report/{field}: {_short(value)} is not a number in [0, 1] (or null).")
    return reasons


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _count_reasons(bundle: dict[str, Any], tolerance: float = COUNT_TOLERANCE) -> list[str]:
    """Every per-case metric must be what its TP/FP/TN/FN give (`benchmark.metrics_from_confusion`)."""
    import pandas as pd

    reasons: list[str] = []
    unlisted = 0
    for i, cell in _cells(bundle):
        cases = cell.get("cases")
        rows = [
            (j, case) for j, case in enumerate(cases if isinstance(cases, list) else [])
            if isinstance(case, dict) and all(_is_count(case.get(k)) for k in COUNT_COLUMNS)
        ]
        if not rows:
            continue
        counts = pd.DataFrame([{k: case[k] for k in COUNT_COLUMNS} for _, case in rows], dtype="int64")
        expected = metrics_from_confusion(counts)
        for metric in METRICS:
            want = expected[metric].to_numpy()
            for (j, case), target in zip(rows, want):
                got = case.get(metric)
                if not _in_unit(got) or abs(float(got) - float(target)) <= tolerance:
                    continue  # the schema and range checks report values that are not numbers in [0, 1]
                if len(reasons) < _MAX_LISTED:
                    counted = ", ".join(f"{k}={case[k]}" for k in COUNT_COLUMNS)
                    reasons.append(f"counts: cells/{i}/cases/{j}/{metric} is {got!r} but its counts ({counted}) give {float(target)!r}.")
                else:
                    unlisted += 1
    if unlisted:
        reasons.append(f"counts: {unlisted} more per-case metric(s) do not follow from their TP/FP/TN/FN.")
    return reasons


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _aggregate_reasons(bundle: dict[str, Any], tolerance: float) -> list[str]:
    method = bundle.get("aggregate_method")
    if not isinstance(method, dict):
        return []
    try:
        resamples, seed, level = int(method["resamples"]), int(method["seed"]), float(method["level"])
    except (KeyError, TypeError, ValueError):
        return []
    if not (1 <= resamples <= 100000 and seed >= 0 and 0 < level < 1):
        return []  # the schema reports it
    reasons = []
    for i, cell in _cells(bundle):
        cases, aggregates = cell.get("cases"), cell.get("aggregates")
        if not isinstance(cases, list) or not isinstance(aggregates, dict):
            continue
        for metric in (*METRICS, *OPTIONAL_METRICS):
            values = [c.get(metric) for c in cases if isinstance(c, dict)]
            if metric in OPTIONAL_METRICS:  # null: not measured; the aggregate is over the measured cases
                values = [math.nan if v is None else v for v in values]
            if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                continue
            submitted = aggregates.get(metric)
            if not isinstance(submitted, dict):
                continue
            agg = aggregate(values, resamples=resamples, seed=seed, level=level)
            expected = {"mean": agg.mean, "std": agg.std, "ci_low": agg.ci_low, "ci_high": agg.ci_high, "n": agg.n}
            for field, want in expected.items():
                got = submitted.get(field)
                if not _close(got, want, tolerance):
                    reasons.append(
                        f"aggregate: cells/{i}/aggregates/{metric}/{field} is {got!r} but its {len(values)} per-case values give {want!r}."
                    )
    return reasons


def _close(got: Any, want: float, tolerance: float) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return got is None
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return False
    return abs(float(got) - float(want)) <= tolerance


def _consistency_reasons(bundle: dict[str, Any]) -> list[str]:
    reasons = []
    keys: list[str] = []
    for i, cell in _cells(bundle):
        key = cell.get("key")
        if isinstance(key, str):
            if key in keys:
                reasons.append(f"consistency: cells/{i}/key: cell {key} appears twice.")
            keys.append(key)
        cases = cell.get("cases")
        names = [c.get("case") for c in cases if isinstance(c, dict)] if isinstance(cases, list) else []
        duplicates = sorted({str(n) for n in names if names.count(n) > 1})
        if duplicates:
            reasons.append(f"consistency: cells/{i}/cases: case(s) {duplicates[:5]} appear more than once.")
    provenance = bundle.get("provenance")
    listed = provenance.get("cell_keys") if isinstance(provenance, dict) else None
    if isinstance(listed, list) and sorted(map(str, listed)) != sorted(keys):
        reasons.append("consistency: provenance/cell_keys does not list exactly the bundle's cells.")
    return reasons


def _study_reasons(bundle: dict[str, Any]) -> list[str]:
    """A bundle is one study: every cell shares task, split, data set fingerprint and package version."""
    provenance = bundle.get("provenance") if isinstance(bundle.get("provenance"), dict) else {}
    expected = {"dataset_fingerprint": provenance.get("dataset_fingerprint"), "package_version": provenance.get("package_version")}
    first: dict[str, Any] = {}
    reasons = []
    for i, cell in _cells(bundle):
        config = cell.get("config") if isinstance(cell.get("config"), dict) else {}
        for field in ("task", "split"):
            value = json.dumps(config.get(field), sort_keys=True)
            if first.setdefault(field, (i, value))[1] != value:
                reasons.append(f"study: cells/{i}/config/{field} differs from cells/{first[field][0]}/config/{field}; a bundle holds one study.")
        for field, want in expected.items():
            got = cell.get(field)
            if got is not None and want is not None and got != want:
                reasons.append(f"study: cells/{i}/{field} is {str(got)[:80]!r}, not the provenance's {str(want)[:80]!r}; a bundle holds one study.")
    return reasons


def check_bundle(
    bundle: Any,
    known_digests: Iterable[str] = (),
    known_results: Iterable[str] = (),
    tolerance: float = AGGREGATE_TOLERANCE,
) -> list[str]:
    """Every reason to refuse ``bundle``; an empty list means it may be added.

    Args:
        bundle: the parsed submission.
        known_digests: digests of the entries already on the board.
        known_results: `results_fingerprint` of the entries already on the board.
        tolerance: largest accepted aggregate difference. Defaults to `AGGREGATE_TOLERANCE`.
    """
    if not isinstance(bundle, dict):
        return [f"schema: (top level): expected a JSON object; got {type(bundle).__name__}."]
    reasons = _schema_reasons(bundle)
    digest = bundle.get("digest")
    try:
        actual = compute_digest(bundle)
    except (TypeError, ValueError) as exc:
        actual = None
        reasons.append(f"digest: cannot serialise the bundle canonically: {exc}")
    if actual is not None and digest != actual:
        reasons.append(f"digest: the bundle's digest {str(digest)[:80]!r} does not match its content (SHA-256 {actual}); it was changed after export.")
    reasons += text_reasons(bundle)
    reasons += _range_reasons(bundle)
    reasons += _count_reasons(bundle)
    reasons += _aggregate_reasons(bundle, tolerance)
    reasons += _consistency_reasons(bundle)
    reasons += _study_reasons(bundle)
    if isinstance(digest, str) and digest in set(known_digests):
        reasons.append(f"duplicate: a submission with digest {digest} is already on the board.")
    elif results_fingerprint(bundle) in set(known_results):
        reasons.append("duplicate: the same results (every cell's per-case TP/FP/TN/FN) are already on the board under another submission.")
    return reasons
