"""poisonbench: how poisoned training data damages medical image segmentation.

The public API that plugins use. Plugins import from ``benchmark`` only.
"""

from __future__ import annotations

from .cache import artifact_dir, build_artifact, cache_root, cached_sliceset
from .config import Cell, PluginSpec, SweepConfig, load_config, validate_config
from .catalog import (
    ATTACKS,
    DATASETS,
    DEFENSES,
    SEGMENTERS,
    create_attack,
    create_dataset,
    create_defense,
    create_segmenter,
    list_attacks,
    list_datasets,
    list_defenses,
    list_segmenters,
    register_attack,
    register_dataset,
    register_defense,
    register_segmenter,
)
from .errors import BenchError, ConfigError, DataError, ExitCode, PluginError
from .identity import NoAttack, NoDefense
from .metrics import METRICS, Aggregate, aggregate, case_metrics
from .outputs import RESULTS_CSV_COLUMNS
from .report import summary_frame
from .defense_effect import RECOVERY_MIN_DAMAGE, defense_effect_frame
from .store import ResultStore
from .sweep import SweepResult, run_sweep
from .plugins import (
    Attack,
    CaseAttack,
    DatasetSource,
    Defense,
    DefenseParams,
    Plugin,
    PluginParams,
    RunContext,
    Segmenter,
    select_cases,
)
from .regions import REGIONS, region_mask, to_common_labels
from .registry import Registry
from .sliceset import SliceSet
from .training import fit_binary_segmentation, predict_binary_segmentation
from .environment import environment, git_commit, package_version

__all__ = [
    "Aggregate",
    "Cell",
    "PluginSpec",
    "RESULTS_CSV_COLUMNS",
    "ResultStore",
    "SweepConfig",
    "environment",
    "git_commit",
    "load_config",
    "package_version",
    "summary_frame",
    "RECOVERY_MIN_DAMAGE",
    "defense_effect_frame",
    "run_sweep",
    "SweepResult",
    "validate_config",
    "ATTACKS",
    "DATASETS",
    "DEFENSES",
    "SEGMENTERS",
    "METRICS",
    "REGIONS",
    "Attack",
    "BenchError",
    "CaseAttack",
    "ConfigError",
    "DataError",
    "DatasetSource",
    "Defense",
    "DefenseParams",
    "ExitCode",
    "NoAttack",
    "NoDefense",
    "Plugin",
    "PluginError",
    "PluginParams",
    "Registry",
    "RunContext",
    "Segmenter",
    "SliceSet",
    "aggregate",
    "artifact_dir",
    "build_artifact",
    "cache_root",
    "cached_sliceset",
    "case_metrics",
    "create_attack",
    "create_dataset",
    "create_defense",
    "create_segmenter",
    "fit_binary_segmentation",
    "list_attacks",
    "list_datasets",
    "list_defenses",
    "list_segmenters",
    "predict_binary_segmentation",
    "region_mask",
    "register_attack",
    "register_dataset",
    "register_defense",
    "register_segmenter",
    "select_cases",
    "to_common_labels",
]
