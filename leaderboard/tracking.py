"""``bench export --mlflow``: a study's cells as MLflow runs.

One parent run per study and, nested under it (MLflow's ``mlflow.parentRunId`` tag), one
run per cell of the study:

- parameters: the cell's resolved config, flattened to dotted keys (``segmenter.epochs``);
  lists and mappings are written as JSON. The parent holds the study's config.
- metrics of a finished cell, every number from the analysis layer of ``benchmark``:
  per metric ``m`` its mean, ``m_std``, ``m_ci_low``, ``m_ci_high`` over the cell's
  validation cases (`benchmark.summary_frame`, the per-cell table of ``bench report``),
  and the same four of ``hd95``, ``lesion_dice`` and ``lesion_hd95`` (`benchmark.OPTIONAL_METRICS`)
  over the cases that measured them (`benchmark.aggregate`, as ``summary_frame`` aggregates
  the others; none measured: left out);
  ``drop``, ``drop_ci_low``, ``drop_ci_high``: Dice of the clean cell of the same
  segmenter and seed minus this cell's, paired over cases (`benchmark.drop_interval`);
  ``group.*``: the cell's group over every seed of the study (`benchmark.summary_table`:
  Dice, drop, p-values, HD95 and its rise, the lesion-wise metrics and their drop and rise,
  over the clean baseline; `benchmark.defense_effect`:
  recovery, clean cost);
  ``detection.*`` and ``attack.*``: the numbers the defense and the attack reported for
  the cell (AUROC, AP, precision, recall, F1, removed fraction; poisoned share, ...).
  The parent holds the study's smallest detectable Dice difference
  (`benchmark.detectable_difference`). A number that is not finite (HD95 of data without
  geometry, a detection figure left undefined) is left out: MLflow would store NaN, which
  its charts and comparisons cannot use.
- tags: ``env.*``, the environment the cell ran in (versions, Python, platform, device,
  GPU, threads, git commit, data set fingerprint); ``poisonbench.*``: cell key, study key,
  plugin labels, status (and the error of a failed cell).
- artifacts: the cell's per-case metrics (``cases.csv``) and the dose-response figure of
  its attack and the attack's example figure (``figures/``); the parent holds every
  figure and the study's ``summary.csv`` and ``defenses.csv``.

Exporting a study again replaces its runs in the experiment: the new runs are written
first, then the old ones deleted (MLflow keeps them recoverable until ``mlflow gc``); an
export that fails midway deletes what it wrote and leaves the earlier export as it was. MLflow 3 keeps the file store
(``./mlruns``) in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is
set; for a file-store URI the export sets it (when unset), so ``./mlruns`` works on every
MLflow from 2.10. A ``sqlite:///mlflow.db`` URI (or a tracking server) works as well.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import benchmark
from benchmark import DISTANCE_SUMMARY_COLUMNS, LESION_SUMMARY_COLUMNS, BenchError, ResultStore

from .bundle import finite_or_none

__all__ = ["DEFAULT_EXPERIMENT", "DEFAULT_TRACKING_URI", "INSTALL_HINT", "MlflowExport", "export_mlflow", "tracking_uri"]

DEFAULT_TRACKING_URI = "./mlruns"
"""Where ``bench export --mlflow`` writes without a URI: a local MLflow file store."""
DEFAULT_EXPERIMENT = "poisonbench"
INSTALL_HINT = "pip install 'poisonbench[mlflow]'"

_GROUP_SUMMARY = ["dice", "dice_ci_low", "dice_ci_high", "drop", "drop_ci_low", "drop_ci_high", "p_value", "p_holm",
                  "dice_clean", "seeds", "cases", *DISTANCE_SUMMARY_COLUMNS, *LESION_SUMMARY_COLUMNS]
_GROUP_EFFECT = ["dice_without", "recovery", "clean_cost", "damage"]
_BATCH = 100  # one log_batch call takes at most 100 parameters, 100 tags and 1000 metrics
_UNSAFE_KEY = re.compile(r"[^\w.\- /]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # file:, sqlite:, http:, databricks: (two letters at least: not C:)


@dataclass
class MlflowExport:
    """What an export wrote: where, the parent run and one run per cell."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    cell_run_ids: dict[str, str]
    """Run id by cell key."""
    replaced: int
    """Runs of an earlier export of the same study that were deleted."""


def tracking_uri(uri: str | None) -> str:
    """``uri`` as MLflow should get it: a plain path becomes an absolute ``file:`` URI.

    Args:
        uri: a tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``, ``file:///abs``) or a
            folder. Defaults to `DEFAULT_TRACKING_URI`.
    """
    uri = uri or DEFAULT_TRACKING_URI
    if _SCHEME.match(uri):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def _client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``; a BenchError (exit 2) with the install command without MLflow."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise BenchError(f"bench export --mlflow needs MLflow, which is not installed; install it with: {INSTALL_HINT}") from None
    if uri.startswith("file:"):
        # MLflow 3 refuses the file store unless told, and ./mlruns, the default, is one
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; every leaf as text (strings as they are, the rest as JSON)."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)}


def _key(name: str) -> str:
    """A metric, parameter or tag name MLflow accepts (letters, digits, ``_ - . /`` and spaces)."""
    return _UNSAFE_KEY.sub("_", name)


def _finite(value: Any) -> float | None:
    """A finite number as a float; None for anything else (NaN, infinities, text, booleans, None)."""
    number = finite_or_none(value)
    return float(number) if isinstance(number, (int, float)) and not isinstance(number, bool) else None


def _numbers(report: Any, prefix: str) -> dict[str, float]:
    """The finite numbers among a report's top-level fields, as ``prefix.field``."""
    if not isinstance(report, dict):
        return {}
    return {_key(f"{prefix}.{k}"): v for k, v in ((k, _finite(v)) for k, v in report.items() if not isinstance(v, (bool, list, dict)))
            if v is not None}


def _cell_drops(cells: pd.DataFrame, cases: pd.DataFrame) -> dict[str, Any]:
    """Per cell: the `benchmark.drop_interval` from the clean cell of the same segmenter and seed."""
    groups = {tuple(g) for g in cells[benchmark.GROUP_COLUMNS].itertuples(index=False)}
    cell_of = {(tuple(row[benchmark.GROUP_COLUMNS]), int(row["seed"])): row["cell"] for _, row in cells.iterrows()}
    tables = {key: part.pivot_table(index="seed", columns="case", values="dice", aggfunc="mean")
              for key, part in cases.groupby("cell", sort=False)}
    drops = {}
    for _, row in cells.iterrows():
        group = tuple(row[benchmark.GROUP_COLUMNS])
        clean = benchmark.clean_baseline(groups, row["segmenter"], row["attack"])
        clean_cell = cell_of.get((clean, int(row["seed"]))) if clean is not None and clean != group else None
        if clean_cell in tables and row["cell"] in tables and set(tables[clean_cell].columns) & set(tables[row["cell"]].columns):
            drops[row["cell"]] = benchmark.drop_interval(tables[clean_cell], tables[row["cell"]])
    return drops


def _group_metrics(summary: pd.DataFrame, effect: pd.DataFrame) -> dict[tuple, dict[str, float]]:
    """``group.*`` metrics by group key, from the study's summary and defense-effect tables."""
    out: dict[tuple, dict[str, float]] = {}
    for frame, columns in ((summary, _GROUP_SUMMARY), (effect, _GROUP_EFFECT)):
        for _, row in frame.iterrows():
            values = {f"group.{c}": _finite(row[c]) for c in columns if c in row}
            out.setdefault(tuple(row[benchmark.GROUP_COLUMNS]), {}).update({k: v for k, v in values.items() if v is not None})
    return out


def _draw_figures(summary: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """The dose-response figure of every attack swept over two rates or more, by attack label."""
    figures = {}
    undefended = summary[summary["defense"] == benchmark.NO_DEFENSE]
    for attack, rows in undefended.groupby("attack"):
        if attack != benchmark.NO_ATTACK and rows["rate"].nunique() >= 2:
            # named as `bench run` names the figure (benchmark.sweep.draw_dose_response)
            name = benchmark.safe_file_name(str(attack))
            figures[str(attack)] = benchmark.plot_dose_response(summary, str(attack), folder / f"{name}-dose-response.png")
    return figures


def _log(client: Any, run_id: str, metrics: dict[str, float], params: dict[str, str], tags: dict[str, str], timestamp: int) -> None:
    """Everything about a run in as few ``log_batch`` calls as MLflow's limits allow."""
    from mlflow.entities import Metric, Param, RunTag

    metric_items = [Metric(_key(k), float(v), timestamp, 0) for k, v in metrics.items()]
    param_items = [Param(_key(k), v) for k, v in params.items()]
    tag_items = [RunTag(_key(k), v) for k, v in tags.items()]
    while metric_items or param_items or tag_items:
        client.log_batch(run_id, metrics=metric_items[:_BATCH * 10], params=param_items[:_BATCH], tags=tag_items[:_BATCH])
        metric_items, param_items, tag_items = metric_items[_BATCH * 10:], param_items[_BATCH:], tag_items[_BATCH:]


def _environment_tags(environment: Any) -> dict[str, str]:
    tags = {f"env.{k}": v for k, v in _flatten(environment or {}).items() if v not in ("null", "")}
    commit = (environment or {}).get("git_commit")
    if commit:
        tags["mlflow.source.git.commit"] = str(commit)
    return tags


def _milliseconds(seconds: Any) -> int | None:
    value = _finite(seconds)
    return int(value * 1000) if value is not None else None


def _experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name)
    if found.lifecycle_stage != "active":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def _study_run_ids(client: Any, experiment_id: str, study: str) -> set[str]:
    """The ids of the active runs of ``study`` in the experiment (an earlier export's, or this one's so far)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`poisonbench.study` = '{study}'", max_results=50_000)
    return {run.info.run_id for run in runs}


def _delete_runs(client: Any, run_ids: set[str]) -> None:
    for run_id in sorted(run_ids):
        client.delete_run(run_id)


def export_mlflow(results_dir: str | Path, uri: str | None = None, study: str | list[str] | None = None,
                  experiment: str = DEFAULT_EXPERIMENT) -> MlflowExport:
    """Write one study of ``RESULTS_DIR/results.sqlite`` to MLflow (see the module doc for what goes where).

    Args:
        results_dir: a sweep's output folder (holds ``results.sqlite``; figures under ``figures/``).
        uri: tracking URI or folder. Defaults to `DEFAULT_TRACKING_URI`.
        study: key (or prefix) of the study. Defaults to the study last run into the folder.
        experiment: MLflow experiment name. Defaults to `DEFAULT_EXPERIMENT`.

    Returns:
        The export's run ids.

    Raises:
        BenchError: MLflow is not installed, no results database, or no cell in it (exit 2).
    """
    uri = tracking_uri(uri)
    path = Path(results_dir) / "results.sqlite"
    if not path.is_file():
        raise BenchError(f"{path}: no results database here; run 'bench run --out {results_dir}' first.")
    client = _client(uri)
    with ResultStore(path) as store:
        chosen = benchmark.select_study(store, study)
        if chosen is None:
            raise BenchError(f"{path}: no cell to export.")
        runs, metrics = store.runs(chosen.cell_keys), store.case_metrics(chosen.cell_keys)
        per_cell = benchmark.summary_frame(store, chosen.cell_keys).set_index("cell_key")
    cells, cases = benchmark.study_tables(runs, metrics)
    summary = benchmark.summary_table(cells, cases)
    detectable = benchmark.detectable_difference(cases)
    effect = benchmark.defense_effect(cells, cases, detectable)
    drops = _cell_drops(cells, cases)
    groups = _group_metrics(summary, effect)
    labels = {row["cell"]: row for _, row in cells.iterrows()}

    experiment_id = _experiment(client, experiment)
    earlier = _study_run_ids(client, experiment_id, chosen.key)
    study_tags = {"poisonbench.study": chosen.key}
    try:
        with tempfile.TemporaryDirectory(prefix="poisonbench-mlflow-") as tmp:
            tmp_dir = Path(tmp)
            figures = _draw_figures(summary, tmp_dir / "figures") if not summary.empty else {}
            examples = sorted((Path(results_dir) / "figures").glob("*-examples.png"))
            started = _milliseconds(runs["started_at"].min())
            parent = client.create_run(experiment_id, start_time=started, run_name=f"study {chosen.key}",
                                       tags={**study_tags, "poisonbench.kind": "study", "mlflow.note.content": chosen.description})
            parent_id = parent.info.run_id
            parent_metrics = {"detectable_difference": detectable.delta, "detectable_difference_se": detectable.se,
                              "cells_finished": int((runs["status"] == "finished").sum()), "cells": len(runs)}
            _log(client, parent_id, {k: v for k, v in parent_metrics.items() if _finite(v) is not None},
                 _flatten(chosen.config), {"poisonbench.description": chosen.description}, started or 0)
            summary.to_csv(tmp_dir / "summary.csv", index=False)
            effect.to_csv(tmp_dir / "defenses.csv", index=False)
            for table in ("summary.csv", "defenses.csv"):
                client.log_artifact(parent_id, str(tmp_dir / table))
            for figure in [*figures.values(), *examples]:
                client.log_artifact(parent_id, str(figure), "figures")

            cell_runs: dict[str, str] = {}
            for _, run in runs.iterrows():
                key = str(run["cell_key"])
                cell_runs[key] = _log_cell(client, experiment_id, parent_id, run, labels.get(key), per_cell, drops, groups,
                                           metrics, figures, examples, study_tags, tmp_dir)
            client.set_terminated(parent_id, "FINISHED", end_time=_milliseconds(runs["finished_at"].max()))
    except BaseException:
        # the earlier export stays whole: only what this one wrote so far goes
        try:
            _delete_runs(client, _study_run_ids(client, experiment_id, chosen.key) - earlier)
        except Exception:  # the tracking store failing again: the first failure is the one to report
            pass
        raise
    _delete_runs(client, earlier - {parent_id, *cell_runs.values()})  # replaced only once the new runs are written
    return MlflowExport(uri, experiment_id, parent_id, cell_runs, len(earlier))


def _log_cell(client: Any, experiment_id: str, parent_id: str, run: pd.Series, label: pd.Series | None, per_cell: pd.DataFrame,
              drops: dict[str, Any], groups: dict[tuple, dict[str, float]], case_metrics: pd.DataFrame, figures: dict[str, Path],
              examples: list[Path], study_tags: dict[str, str], tmp_dir: Path) -> str:
    """One cell's run under the study's parent run; returns its id."""
    key = str(run["cell_key"])
    config = run["config"]
    finished = run["status"] == "finished"
    names = {kind: (label[kind] if label is not None else benchmark.plugin_label(config[kind], kind)) for kind in ("segmenter", "attack", "defense")}
    tags = {**study_tags, "poisonbench.kind": "cell", "poisonbench.cell": key, "poisonbench.status": str(run["status"]),
            "mlflow.parentRunId": parent_id, **{f"poisonbench.{k}": v for k, v in names.items()},
            **_environment_tags(run["environment"])}
    error = run["error"] if isinstance(run.get("error"), str) else ""
    if error.strip():
        tags["poisonbench.error"] = error.strip().splitlines()[-1][:4000]
    name = f"{names['attack']} @ {float(config['rate']):.3g} | {names['defense']} | seed {config['seed']}"
    started = _milliseconds(run["started_at"])
    child = client.create_run(experiment_id, start_time=started, run_name=name[:250], tags=tags).info.run_id
    metrics: dict[str, float] = {}
    if finished:
        row = per_cell.loc[key]
        for metric in benchmark.METRICS:
            for suffix in ("", "_std", "_ci_low", "_ci_high"):
                metrics[f"{metric}{suffix}"] = row[f"{metric}{suffix}"]
        metrics["cases"] = row["cases"]
        mine = case_metrics[case_metrics["cell"] == key]
        for metric in benchmark.OPTIONAL_METRICS:  # over the cases that measured it; none measured: left out
            if metric in mine:
                agg = benchmark.aggregate(mine[metric].to_numpy(dtype=float))
                metrics.update({metric: agg.mean, f"{metric}_std": agg.std, f"{metric}_ci_low": agg.ci_low, f"{metric}_ci_high": agg.ci_high})
        if key in drops:
            drop = drops[key]
            metrics.update(drop=drop.mean, drop_ci_low=drop.ci_low, drop_ci_high=drop.ci_high)
        if label is not None:
            metrics.update(groups.get(tuple(label[benchmark.GROUP_COLUMNS]), {}))
        metrics.update(_numbers(run["defense_report"], "detection"))
        metrics.update(_numbers(run["attack_report"], "attack"))
    metrics["duration_s"] = run["duration_s"]
    _log(client, child, {k: v for k, v in metrics.items() if _finite(v) is not None}, _flatten(config), {}, started or 0)
    if finished:
        folder = tmp_dir / "cells" / key
        folder.mkdir(parents=True, exist_ok=True)
        case_metrics[case_metrics["cell"] == key].drop(columns=["cell"]).to_csv(folder / "cases.csv", index=False)
        client.log_artifact(child, str(folder / "cases.csv"))
        own = [figures[names["attack"]]] if names["attack"] in figures else []
        own += _example_figures(examples, names["attack"], str(config["attack"]["name"]))
        for figure in own:
            client.log_artifact(child, str(figure), "figures")
    client.set_terminated(child, "FINISHED" if finished else "FAILED", end_time=_milliseconds(run["finished_at"]))
    return child


def _example_figures(examples: list[Path], label: str, name: str) -> list[Path]:
    """The attack's example figure among ``examples``, by the names the runner gives it (`benchmark.safe_file_name`).

    ``<label>-examples.png`` where a sweep has several settings of the attack, else ``<name>-examples.png``.
    """
    for stem in dict.fromkeys((label, name)):
        found = [p for p in examples if p.name == f"{benchmark.safe_file_name(stem)}-examples.png"]
        if found:
            return found
    return []
