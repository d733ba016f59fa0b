"""Export, validation and publication of results (static site, Markdown, JSON, CSV).

Imports only the public API of ``benchmark``.
"""

from __future__ import annotations

from .board import DEFAULT_BOARD, Board, Entry, safe_name
from .reference import REFERENCE_CONFIGS, rebuild_reference
from .bundle import SCHEMA_VERSION, canonical_json, compute_digest, export_bundle, write_bundle
from .site import build_site, markdown_board
from .stats import dose_response_auc, rate_at_drop, value_at_rate
from .tables import Analysis, analyse
from .tracking import export_mlflow
from .validate import MAX_BUNDLE_BYTES, MAX_DEPTH, SubmissionError, check_bundle, load_schema, read_json_file
from .verify import DEFAULT_TOLERANCE, verify_entry

__all__ = [
    "Analysis",
    "Board",
    "DEFAULT_BOARD",
    "DEFAULT_TOLERANCE",
    "Entry",
    "MAX_BUNDLE_BYTES",
    "MAX_DEPTH",
    "REFERENCE_CONFIGS",
    "SCHEMA_VERSION",
    "SubmissionError",
    "analyse",
    "build_site",
    "canonical_json",
    "check_bundle",
    "compute_digest",
    "dose_response_auc",
    "export_bundle",
    "export_mlflow",
    "load_schema",
    "markdown_board",
    "rate_at_drop",
    "read_json_file",
    "rebuild_reference",
    "safe_name",
    "value_at_rate",
    "verify_entry",
    "write_bundle",
]
