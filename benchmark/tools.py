"""The tools: what drives a sweep and reads its results (never imported by a plugin).

Config loading and validation, the sweep runner, the results store, metrics, the
analysis layer every table and figure calls, reports and figures. Each name is imported
from its module on first use. What plugins import is in `benchmark.sdk`; ``from
benchmark import X`` serves the names of both.
"""

from __future__ import annotations

from ._exports import lazy_attributes

#: public name -> module defining it
EXPORTS: dict[str, str] = {
    # the sweep file and its cells
    **dict.fromkeys(["Cell", "PluginSpec", "SweepConfig", "load_config", "validate_config"], ".config"),
    "SweepResult": ".sweep", "run_sweep": ".sweep",
    # results
    "ResultStore": ".store",
    "RESULTS_CSV_COLUMNS": ".outputs",
    **dict.fromkeys(
        ["METRICS", "DISTANCE_METRICS", "LESION_METRICS", "OPTIONAL_METRICS", "LOWER_IS_BETTER", "Aggregate", "aggregate",
         "case_hd95", "case_lesionwise", "case_metrics", "hd95", "metrics_from_confusion"],
        ".metrics",
    ),
    **dict.fromkeys(["Study", "select_study", "study_config", "study_key"], ".studies"),
    # the analysis layer and what renders it
    **dict.fromkeys(
        ["ALPHA", "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "CURVE_METRICS", "DEFENSE_EFFECT_COLUMNS", "DISTANCE_SUMMARY_COLUMNS", "GROUP_COLUMNS",
         "LESION_SUMMARY_COLUMNS",
         "MIN_SEEDS", "SUMMARY_COLUMNS", "DetectableDifference", "Interval", "adjust_p_values", "clean_baseline",
         "defense_effect", "detectable_difference", "dose_response_rows", "drop_interval", "mean_interval", "plugin_label",
         "plugin_labels", "seeds_note", "study_tables", "summary_table"],
        ".analysis",
    ),
    "RECOVERY_MIN_DAMAGE": ".defense_tables", "defense_effect_frame": ".defense_tables",
    "summary_frame": ".report",
    "plot_dose_response": ".figures",
    "lesionwise_scores": ".lesionwise", "lesionwise_missing": ".lesionwise",
    # provenance
    "git_commit": ".environment", "package_version": ".environment",
    # file names
    "safe_file_name": ".paths",
}

__all__ = list(EXPORTS)

__getattr__, __dir__ = lazy_attributes("benchmark", EXPORTS)
