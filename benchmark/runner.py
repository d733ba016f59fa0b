"""Run cells: load → split → attack(rate) → defense → fit → predict on validation → metrics → store."""

from __future__ import annotations

import json
import logging
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from .cache import cache_root
from .catalog import ATTACKS, DATASETS, DEFENSES, SEGMENTERS, create_plugin
from .config import Cell, SweepConfig, expand_cells
from .defense_view import DefenseView, view_rng
from .detection import detection_stats
from .environment import environment, package_version, torch_threads
from .errors import PluginError
from .geometry import SliceGeometry, stack_slices
from .identity import NO_DEFENSE
from .metrics import METRICS, case_metrics
from .paths import safe_file_name
from .plugins import Attack, DatasetSource, Defense, RunContext, Segmenter
from .regions import region_mask
from .seeding import SeedStreams
from .sliceset import SliceSet
from .spill import all_finite, allocate, map_rows
from .splitting import Split, split_cases
from .store import FAILED, FINISHED, CellRecord

__all__ = [
    "CellRunner", "SweepPlan", "apply_attack", "attack_training_split", "case_volumes", "example_figure_names", "plan_sweep", "run_cell",
    "seed_everything", "volume_slices",
]

logger = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed torch (and its CUDA generators) for one cell."""
    import torch

    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


@dataclass
class SweepPlan:
    """A validated sweep bound to its data set: cells with keys, and how to load the data."""

    config: SweepConfig
    source: DatasetSource
    fingerprint: str
    cells: list[Cell]


def plan_sweep(config: SweepConfig) -> SweepPlan:
    """Create the data source and expand the cells (cheap: nothing is loaded)."""
    source = create_plugin(DATASETS, config.dataset.name, config.dataset.params, "dataset")
    source.workers = config.dataset_workers
    fingerprint = source.fingerprint()
    return SweepPlan(config, source, fingerprint, expand_cells(config, fingerprint, package_version()))


def _check_sliceset(result: Any, plugin: str, reference: SliceSet, what: str) -> SliceSet:
    if not isinstance(result, SliceSet):
        raise PluginError(f"{plugin}: {what} must return a SliceSet; got {type(result).__name__}.")
    if result.images.shape[1:] != reference.images.shape[1:] or result.channels != reference.channels:
        raise PluginError(
            f"{plugin}: {what} changed the slice shape or channels from {reference.images.shape[1:]} "
            f"{list(reference.channels)} to {result.images.shape[1:]} {list(result.channels)}."
        )
    if not all_finite(result.images):
        raise PluginError(f"{plugin}: {what} returned images containing NaN or inf.")
    return result


def apply_attack(
    name: str, params: dict[str, Any], context: RunContext, pool: SliceSet, rate: float, streams: SeedStreams, where: str = ""
) -> tuple[Attack, SliceSet]:
    """A cell's attack step: create the attack, fit it to the pool and poison the pool at ``rate``.

    The one path from a cell's seed to its poison, shared by the runner and ``bench data
    export``: the ``poison`` stream chooses the cases, the ``generator`` stream seeds torch
    and the attack's own model.

    Args:
        name: registered attack.
        params: the attack's parameters.
        context: the cell's run context (device, cache, task); its seed is replaced by the
            ``generator`` stream's.
        pool: the attackable training cases, images ``[N, C, H, W]``.
        rate: poison rate in [0, 1].
        streams: the cell's seed streams.
        where: key path prefixing parameter errors (``--attack``).

    Returns:
        the fitted attack and the poisoned pool (checked: same slice shape and channels, finite).
    """
    attack_rng = streams.generator("poison")
    seed_everything(streams.integer("generator"))
    attack: Attack = create_plugin(ATTACKS, name, params, where)  # type: ignore[assignment]
    attack.bind(replace(context, seed=streams.integer("generator")))
    attack.fit(pool, attack_rng)
    poisoned = _check_sliceset(attack.poison(pool, rate, attack_rng), f"attack '{name}'", pool, "poison()")
    return attack, poisoned


def attack_training_split(
    name: str,
    params: dict[str, Any],
    context: RunContext,
    trusted: SliceSet | None,
    pool: SliceSet,
    rate: float,
    streams: SeedStreams,
    where: str = "",
) -> tuple[Attack, SliceSet, SliceSet]:
    """A cell's training split before its defense: the trusted cases, then the pool as `apply_attack` poisons it.

    The one function the runner and ``bench data export`` build a training split with.

    Args:
        trusted: the trusted cases (never attacked), or None.
        pool: the attackable training cases.
        Others as `apply_attack`.

    Returns:
        (the fitted attack, the poisoned pool, the training split ``[N, C, H, W]``).
    """
    attack, poisoned = apply_attack(name, params, context, pool, rate, streams, where)
    train = SliceSet.concatenate([trusted, poisoned]) if trusted is not None else poisoned
    return attack, poisoned, train


@dataclass
class CellRunner:
    """Runs cells of one sweep against one loaded data set.

    Args:
        data: every case of the data set.
        split: the sweep's case split (the same for every cell).
        device: resolved device.
        fingerprint: the data set fingerprint.
        cache_dir: artifact cache.
        quiet: suppress progress output.
        progress: progress wrapper for epochs and other long loops.
        predictions_dir: where to write predicted masks as NIfTI, or None.
        figures_dir: where to draw example poisoned cases once per attack, or None.
        artifacts_dir: where each cell may keep files beside the results (``<key>/``), or None.
        example_figures: the file name of each attack setting's example figure in
            ``figures_dir`` (`example_figure_names` of the sweep's cells); a setting not
            listed draws ``<attack>-examples.png``. Defaults to none.
    """

    data: SliceSet
    split: Split
    device: str
    fingerprint: str
    cache_dir: Path = field(default_factory=cache_root)
    quiet: bool = True
    progress: Callable[..., Iterable[Any]] | None = None
    predictions_dir: Path | None = None
    figures_dir: Path | None = None
    artifacts_dir: Path | None = None
    example_figures: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.val = self.data.subset(self.split.val)
        self.trusted = self.data.subset(self.split.trusted) if self.split.trusted else None
        self.attackable = self.data.subset(self.split.attackable)
        self._environment = {**environment(self.device), "dataset_fingerprint": self.fingerprint}

    def context(self, cell: Cell) -> RunContext:
        return RunContext(
            device=self.device,
            seed=cell.seed,
            cache_dir=self.cache_dir,
            dataset_fingerprint=self.fingerprint,
            inputs=tuple(cell.task.inputs),
            target=cell.task.target,
            quiet=self.quiet,
            progress=self.progress,
            artifacts_dir=self.artifacts_dir / cell.key if self.artifacts_dir is not None else None,
        )

    def run(self, cell: Cell) -> CellRecord:
        """Run one cell; a failure is captured in the record, never raised."""
        started = time.time()
        timings: dict[str, float] = {}
        # the thread count is read per cell: executors may set it after the runner is built
        env = {**self._environment, "torch_threads": torch_threads()}
        record = CellRecord(cell.key, cell.config(), FAILED, started, started, timings, env)
        try:
            self._run(cell, record, timings)
            record.status = FINISHED
        except Exception as exc:  # a broken cell must not stop the sweep
            record.error = "".join(traceback.format_exception(exc))
            record.case_metrics = None
            logger.debug("cell %s failed", cell.key, exc_info=True)
        record.finished_at = time.time()
        return record

    def prepare(self, cell: Cell) -> None:
        """Fit the cell's attack alone, as `run` fits it, so that what the fit caches (a trained
        generator) is built before the cells that share it run. Raises what the fit raises."""
        apply_attack(cell.attack.name, cell.attack.params, self.context(cell), self.attackable, 0.0, SeedStreams(cell.seed))

    def _run(self, cell: Cell, record: CellRecord, timings: dict[str, float]) -> None:
        context = self.context(cell)
        # independent streams of the cell's seed (benchmark.seeding): which cases are
        # poisoned never moves with the generator's or the segmenter's randomness
        streams = SeedStreams(cell.seed)

        clock = time.perf_counter()
        pool = self.attackable
        attack, poisoned, train = attack_training_split(
            cell.attack.name, cell.attack.params, context, self.trusted, pool, cell.rate, streams
        )
        record.attack_report = {
            "poisoned_cases": len(poisoned.poisoned_cases()), "poisoned_case_ids": poisoned.poisoned_cases(), **attack.report(),
        }
        record.attack_report["poisoned_share"] = record.attack_report["poisoned_cases"] / max(len(poisoned.cases) + len(self.split.trusted), 1)
        if self.figures_dir is not None and record.attack_report["poisoned_cases"]:
            self._draw_examples(cell, pool, poisoned, attack.source_channels())
        timings["attack_s"] = time.perf_counter() - clock

        clock = time.perf_counter()
        kept, record.defense_report = self._defend(cell, context, train)
        timings["defense_s"] = time.perf_counter() - clock
        if len(kept) == 0:
            raise PluginError(f"defense '{cell.defense.name}' removed every training case.")

        clock = time.perf_counter()
        seed_everything(streams.integer("init"))
        segmenter: Segmenter = create_plugin(SEGMENTERS, cell.segmenter.name, cell.segmenter.params)  # type: ignore[assignment]
        if cell.task.dims not in segmenter.dims:  # validation refuses such configs; a cell built by hand may not be validated
            supported = " or ".join(f"{d}-D" for d in segmenter.dims)
            raise PluginError(f"segmenter '{cell.segmenter.name}' works in {supported} only; task.dims is {cell.task.dims}.")
        try:
            segmenter.bind(replace(context, seed=streams.integer("batches")))
            masks = map_rows(kept.labels, np.arange(len(kept)), lambda rows: region_mask(rows, cell.task.target), kept.shape, np.uint8)
            images = kept.select_channels(cell.task.inputs)
            if segmenter.needs_cases:  # whole cases with their geometry: the segmenter builds its own volumes
                segmenter.fit_cases(_segmenter_view(kept, images, cell.task.inputs), masks)
            else:
                if cell.task.dims == 3:
                    images, masks = (case_volumes(array, kept.case_ids, kept.geometry)[0] for array in (images, masks))
                segmenter.fit(images, masks)
            timings["fit_s"] = time.perf_counter() - clock

            clock = time.perf_counter()
            images = self.val.select_channels(cell.task.inputs)
            if segmenter.needs_cases:
                pred = _checked_masks(segmenter.predict_cases(_segmenter_view(self.val, images, cell.task.inputs)), images, cell.segmenter.name)
            elif cell.task.dims == 3:
                # one volume per validation case, its predictions put back on its slices: the same voxels as in 2-D
                volumes, rows = case_volumes(images, self.val.case_ids, self.val.geometry)
                pred = volume_slices(_checked_masks(segmenter.predict(volumes), volumes, cell.segmenter.name), rows)
            else:
                pred = _checked_masks(segmenter.predict(images), images, cell.segmenter.name)
            truth = region_mask(self.val.labels, cell.task.target)
            metrics = case_metrics(pred > 0, truth, self.val.case_ids, self.val.geometry)
            if not np.isfinite(metrics[list(METRICS)].to_numpy()).all():
                raise PluginError(f"segmenter '{cell.segmenter.name}': metrics are not finite.")
            record.case_metrics = metrics
            timings["predict_s"] = time.perf_counter() - clock
        finally:  # what the segmenter holds (temporary folders) goes, whether or not the cell got this far
            _close_segmenter(segmenter, cell.segmenter.name)
        if self.predictions_dir is not None:
            save_predictions(self.predictions_dir / cell.key, pred, self.val.case_ids, self.val.geometry)

    def _draw_examples(self, cell: Cell, clean: SliceSet, poisoned: SliceSet, sources: tuple[str, ...]) -> None:
        from .figures import plot_attack_examples

        name = self.example_figures.get(_attack_setting(cell), f"{safe_file_name(cell.attack.name)}-examples.png")
        path = self.figures_dir / name
        if path.exists():
            return
        try:
            plot_attack_examples(clean, poisoned, path, sources=[s for s in sources if s in clean.channels])
        except Exception as exc:  # a figure is a courtesy; it must not fail the cell
            logger.warning("could not draw %s: %s", path, exc)

    def _defend(self, cell: Cell, context: RunContext, train: SliceSet) -> tuple[SliceSet, dict[str, Any]]:
        if cell.defense.name == NO_DEFENSE:
            return train, {}
        defense: Defense = create_plugin(DEFENSES, cell.defense.name, cell.defense.params)  # type: ignore[assignment]
        who = f"defense '{cell.defense.name}'"
        trusted_cases = set(self.trusted.cases) if self.trusted is not None else set()
        # opaque, shuffled ids from a secret the defense lacks: nothing but the slices tells poison apart
        secret = (cell.key, json.dumps(cell.config(), sort_keys=True), self.fingerprint)
        rng = view_rng(*secret)
        view = DefenseView.build(train, sorted(trusted_cases), rng)
        with tempfile.TemporaryDirectory(prefix="poisonbench-defense-") as scratch:
            # a private scratch folder instead of the shared cache (attack artifacts), no data fingerprint,
            # and a seed of its own: the cell seed would let it redraw the attack's case choice
            seed = int(rng.integers(0, 2**63))
            defense.bind(replace(context, seed=seed, cache_dir=Path(scratch), dataset_fingerprint=""))
            defense.fit(view.trusted)
            # one call scores every training case, the trusted ones among them: their scores
            # (out of sample, as `Defense.score` promises) calibrate the decision rule
            scores = _defense_scores(defense.score(view.train), view.train, who)
        # trusted cases are never attacked and never removable: the others are the candidates
        hidden_trusted = set(view.trusted.cases) if view.trusted is not None else set()
        trusted_scores = {case: value for case, value in scores.items() if case in hidden_trusted} if hidden_trusted else None
        candidates = {case: value for case, value in scores.items() if case not in hidden_trusted}
        removed_hidden = [str(case) for case in defense.decide(candidates, trusted_scores)]
        stray = sorted(set(removed_hidden) - set(candidates))
        if stray:
            raise PluginError(f"{who}: decide() chose cases that are not removable training cases: {stray[:5]}.")
        removed = sorted(view.real_ids[case] for case in set(removed_hidden))
        poisoned = set(train.poisoned_cases())
        stats = detection_stats(view.to_real(scores), removed, poisoned, trusted=trusted_cases)
        stats["removed_cases"] = removed
        if poisoned and not removed:
            stats["warning"] = (
                f"{who} removed nothing although {len(poisoned)} of its {len(candidates)} removable "
                "training cases were poisoned; check its decision rule (budget, quantile, mad_k)."
            )
        kept = train.subset([case for case in train.cases if case not in set(removed)])
        return kept, stats


def _segmenter_view(data: SliceSet, images: np.ndarray, inputs: list[str]) -> SliceSet:
    """What a `Segmenter.needs_cases` segmenter sees of ``data``: the input channels ``images``, case ids
    and geometry; labels all 0 (a validation case's truth is not its to read) and no poison flags."""
    return data.with_arrays(
        images=images, channels=tuple(inputs), labels=np.zeros((len(data), *data.shape), np.uint8),
        poisoned=np.zeros(len(data), bool),
    )


def example_figure_names(cells: Iterable[Cell]) -> dict[str, str]:
    """The example figure of each attack setting of a sweep (`CellRunner.example_figures`).

    ``<attack>-examples.png`` when the sweep has one setting of the attack; with several
    (``gan-synthetic`` with and without ``stealth``), each is named by its label, the
    parameters that tell the settings apart (``gan-synthetic (stealth=True)``), so that
    one does not overwrite another's figure.
    """
    from .analysis import plugin_labels

    settings = {_attack_setting(cell): cell.attack.as_dict() for cell in cells}
    labels = plugin_labels(list(settings.values()), "attack")
    return {setting: f"{safe_file_name(label)}-examples.png" for setting, label in zip(settings, labels)}


def _attack_setting(cell: Cell) -> str:
    """A cell's attack with its parameters, as text that compares equal for equal settings."""
    return json.dumps(cell.attack.as_dict(), sort_keys=True, default=str)


def _close_segmenter(segmenter: Segmenter, name: str) -> None:
    """`Segmenter.close`; a failure to release is logged, never raised over the cell's own outcome."""
    try:
        segmenter.close()
    except Exception as exc:
        logger.warning("segmenter '%s': close() failed: %s", name, exc)


def _checked_masks(pred: Any, images: np.ndarray, segmenter: str) -> np.ndarray:
    """A segmenter's predictions for ``images`` (``[N, C, H, W]`` or ``[V, C, S, H, W]``), checked: 0/1 masks of their shape less ``C``."""
    pred = np.asarray(pred)
    expected = (len(images), *images.shape[2:])
    if pred.shape != expected:
        raise PluginError(f"segmenter '{segmenter}': predict() returned shape {pred.shape}; expected {expected}.")
    if not np.isin(pred, (0, 1)).all():
        bad = pred[~np.isin(pred, (0, 1))][:3].tolist()
        raise PluginError(f"segmenter '{segmenter}': predict() must return 0/1 masks; got values such as {bad}.")
    return pred


def case_volumes(
    slices: np.ndarray, case_ids: np.ndarray, geometry: SliceGeometry | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each case's slices stacked into one volume, in their true order, zero-padded to the deepest case.

    The volumes a ``task.dims: 3`` segmenter trains on and predicts: slices ordered by
    their grid index (`benchmark.geometry`; row order without geometry), stacked one after
    another (gaps between kept slices are not filled), the padding slices at the end.

    Args:
        slices: ``[N, C, H, W]`` images or ``[N, H, W]`` masks.
        case_ids: ``[N]`` case of each slice.
        geometry: the slices' geometry, or None.

    Returns:
        (volumes ``[V, C, S, H, W]`` or ``[V, S, H, W]`` of ``slices``' dtype, cases in order
        of first appearance; for each case the rows of ``slices`` at ``S = 0, 1, ...``).
    """
    rows = []
    for case in pd.unique(case_ids):
        index = np.flatnonzero(case_ids == case)
        if geometry is not None:
            index = index[np.argsort(geometry.case_grid(index, str(case)).index, kind="stable")]
        rows.append(index)
    depth = max((len(r) for r in rows), default=0)
    volumes = allocate((len(rows), *slices.shape[1:-2], depth, *slices.shape[-2:]), slices.dtype)
    for v, index in enumerate(rows):
        volume = np.moveaxis(np.asarray(slices[index]), 0, -3)
        volumes[v, ..., : len(index), :, :] = volume
        volumes[v, ..., len(index) :, :, :] = 0
    return volumes, rows


def volume_slices(volumes: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
    """Masks ``[V, S, H, W]`` of `case_volumes`' volumes back on the slices they came from: ``[N, H, W]``, padding dropped."""
    out = np.empty((sum(len(r) for r in rows), *volumes.shape[-2:]), dtype=volumes.dtype)
    for v, index in enumerate(rows):
        out[index] = volumes[v, : len(index)]
    return out


def _defense_scores(raw: Any, given: SliceSet, who: str) -> dict[str, float]:
    """A defense's scores for the cases of ``given`` (opaque ids), checked: one finite number each."""
    try:
        scores = {str(case): float(value) for case, value in dict(raw).items()}
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{who}: score() must return a mapping of case id to number; {exc}.") from None
    missing = [case for case in given.cases if case not in scores]
    if missing:
        raise PluginError(f"{who}: score() gave no score for cases {missing[:5]} (of {len(given.cases)} it was given).")
    scores = {case: scores[case] for case in given.cases}
    if not all(np.isfinite(list(scores.values()))):
        raise PluginError(f"{who}: score() returned NaN or inf.")
    return scores


def save_predictions(folder: Path, pred: np.ndarray, case_ids: np.ndarray, geometry: SliceGeometry | None = None) -> None:
    """Write each case's predicted mask as ``<case>.nii.gz`` on the case's grid, as an export writes it
    (`benchmark.geometry.stack_slices`: its source's affine, slices at their true positions; identity without geometry)."""
    from .datasets.export import write_nifti

    folder.mkdir(parents=True, exist_ok=True)
    for case in pd.unique(case_ids):
        rows = np.flatnonzero(case_ids == case)
        grid = None if geometry is None else geometry.case_grid(rows, str(case))
        volume, affine, _ = stack_slices(np.asarray(pred[rows], dtype=np.uint8), grid)
        write_nifti(folder / f"{safe_file_name(str(case))}.nii.gz", volume, affine)


def run_cell(cell: Cell, data: SliceSet, device: str = "cpu", fingerprint: str = "", **kwargs: Any) -> CellRecord:
    """Run one cell outside a sweep (tests, benchmarks)."""
    split = split_cases(data, cell.split.val_fraction, cell.split.seed, cell.split.trusted)
    return CellRunner(data, split, device, fingerprint, **kwargs).run(cell)
