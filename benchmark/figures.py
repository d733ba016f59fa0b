"""Figures of a sweep: example poisoned cases and dose-response curves (matplotlib, Agg).

Both functions write a PNG and return its path; they never open a window.
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path
from typing import Callable, ParamSpec, Sequence, TypeVar

import numpy as np
import pandas as pd

from .sliceset import SliceSet

__all__ = ["in_default_style", "original_case", "plot_attack_examples", "plot_dose_response"]

P = ParamSpec("P")
R = TypeVar("R")

DOSE_METRICS = ("dice", "accuracy", "sensitivity")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def in_default_style(draw: Callable[P, R]) -> Callable[P, R]:
    """Run a drawing function under matplotlib's default style, its text never read as TeX.

    Libraries change matplotlib's global style in the process they run in (nnU-Net's trainer
    calls ``seaborn.set(font_scale=2.5)``), which would draw every later figure of that
    process with giant labels; and a ``$`` in a plugin's or a submitter's name is text.
    """

    @functools.wraps(draw)
    def drawn(*args: P.args, **kwargs: P.kwargs) -> R:
        import matplotlib

        plt = _pyplot()
        with plt.style.context("default"), matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


def _representative_slice(labels: np.ndarray) -> int:
    """The slice with the most labelled pixels (the middle one when no slice is labelled)."""
    counts = (labels > 0).reshape(len(labels), -1).sum(axis=1)
    return int(np.argmax(counts)) if counts.any() else len(labels) // 2


def original_case(case: str, clean: SliceSet, poisoned: SliceSet) -> str | None:
    """The clean case a poisoned case stands for: itself when ``clean`` has its id, else
    the clean case of as many slices that shares the most with it (its masks, its
    untouched channels), so an attack that adds copies under new ids needs not say how
    it names them. None when no clean case shares anything with it.

    Each candidate's middle slice is compared first; a case's full arrays (tens of MB at
    BraTS scale) are compared only where that slice is the same.
    """
    known = set(clean.cases)
    if case in known:
        return case
    fake = np.flatnonzero(poisoned.case_ids == case)
    if len(fake) == 0:
        return None
    middle = len(fake) // 2
    fake_labels_slice = np.asarray(poisoned.labels[fake[middle]])
    fake_slices = [np.asarray(poisoned.images[fake[middle], c]) for c in range(len(clean.channels))]
    best, best_shared = None, 0
    for candidate, real in _case_rows(clean.case_ids).items():
        if len(real) != len(fake):
            continue
        shared = 0
        if np.array_equal(clean.labels[real[middle]], fake_labels_slice):
            shared += int(np.array_equal(clean.labels[real], poisoned.labels[fake]))
        for c, fake_slice in enumerate(fake_slices):
            if np.array_equal(clean.images[real[middle], c], fake_slice):
                shared += int(np.array_equal(clean.images[real, c], poisoned.images[fake, c]))
        if shared > best_shared:
            best, best_shared = candidate, shared
    return best


def _case_rows(case_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of each case, in ascending row order, by case id in first-seen order (one pass over the ids)."""
    ids, first, inverse = np.unique(case_ids, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse.ravel(), minlength=len(ids)))[:-1])
    return {str(ids[i]): groups[i] for i in np.argsort(first)}


def _brain_of_row(data: SliceSet, row: int) -> np.ndarray | None:
    """The data set's normalisation mask (the brain) of one slice, or None when it records none."""
    masks = data.norm_mask_rows(np.array([row]))
    return None if masks is None else masks[0]


@in_default_style
def plot_attack_examples(
    clean: SliceSet, poisoned: SliceSet, path: Path, source: str | None = None, max_cases: int = 3, sources: Sequence[str] = (),
) -> Path:
    """One row per poisoned case: source channels, real target, poisoned target, mask.

    The target channels are those that differ between ``clean`` and ``poisoned`` on the
    poisoned cases (the first one is shown). A case an attack added under a new id is
    matched to the clean case it copies by content (`original_case`). A label-only attack
    shows the real and the poisoned masks instead.

    Args:
        clean: the training set before the attack.
        poisoned: the attack's output (``poisoned`` flags set).
        path: PNG to write (folders are created).
        source: channel the attack translated from, shown first when given. Defaults to None.
        max_cases: most cases shown. Defaults to 3.
        sources: several channels the attack translated from (after ``source``), each
            shown in its own column. Defaults to none.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in poisoned.poisoned_cases()[:max_cases]:
        original = original_case(case, clean, poisoned)
        if original is None:
            continue
        real_idx = np.flatnonzero(clean.case_ids == original)
        fake_idx = np.flatnonzero(poisoned.case_ids == case)
        if len(real_idx) != len(fake_idx):
            continue
        rows.append((case, real_idx, fake_idx))
    changed: list[int] = []
    if rows:
        for c in range(len(clean.channels)):
            if any(not np.array_equal(clean.images[r, c], poisoned.images[f, c]) for _, r, f in rows):
                changed.append(c)
    sources = list(dict.fromkeys(([source] if source else []) + list(sources)))
    columns = sources + ["real", "poisoned", "mask"]
    fig, axes = plt.subplots(max(len(rows), 1), len(columns), figsize=(2.6 * len(columns), 2.6 * max(len(rows), 1)), squeeze=False)
    if not rows:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][0].text(0.0, 0.5, "no poisoned case", transform=axes[0][0].transAxes)
    labels_changed = False
    for row, (case, real_idx, fake_idx) in enumerate(rows):
        s = _representative_slice(clean.labels[real_idx])
        r, f = real_idx[s], fake_idx[s]
        labels_changed = labels_changed or not np.array_equal(clean.labels[real_idx], poisoned.labels[fake_idx])
        target = changed[0] if changed else (clean.channels.index(sources[0]) if sources and sources[0] in clean.channels else 0)
        name = clean.channels[target]
        real, fake = clean.images[r, target], poisoned.images[f, target]
        vmin, vmax = np.percentile(np.concatenate([real.ravel(), fake.ravel()]), [1, 99])
        panels = []
        for source_name in sources:
            image = poisoned.images[f, poisoned.channel_index(source_name)] if source_name in poisoned.channels else None
            panels.append((image, f"{source_name} (source)", None))
        panels.append((real, f"{name} real", (vmin, vmax)))
        panels.append((fake, f"{name} {'poisoned' if changed else '(unchanged)'}", (vmin, vmax)))
        for col, (image, title, limits) in enumerate(panels):
            ax = axes[row][col]
            if image is not None:
                kwargs = {"vmin": limits[0], "vmax": limits[1]} if limits else {}
                if limits is None:  # the source: a window over the brain (a CT's bone saturates, its soft tissue shows)
                    brain = _brain_of_row(clean, r)
                    inside = image[brain] if brain is not None and brain.any() else image[image != 0]
                    values = inside if inside.size else image.ravel()
                    lo, hi = np.percentile(values, [1, 99])
                    kwargs = {"vmin": lo, "vmax": hi}
                ax.imshow(image, cmap="gray", **kwargs)
            ax.set_title(f"{case}: {title}" if col == 0 else title, fontsize=8)
            ax.axis("off")
        ax = axes[row][len(panels)]
        ax.imshow(real, cmap="gray", vmin=vmin, vmax=vmax)
        mask = np.ma.masked_equal(poisoned.labels[f], 0)
        ax.imshow(mask, cmap="autumn", alpha=0.5, interpolation="nearest")
        if labels_changed:
            ax.contour(clean.labels[r] > 0, levels=[0.5], colors="cyan", linewidths=0.6)
        ax.set_title("mask" + (" (poisoned; cyan: real)" if labels_changed else ""), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@in_default_style
def plot_dose_response(summary: pd.DataFrame, attack: str, path: Path, title: str | None = None) -> Path:
    """Dice, accuracy and sensitivity against the poison rate, over seeds and cases, with interval bands.

    The one dose-response plotter: ``bench run`` and the leaderboard both draw with it.
    Rows are those of `benchmark.analysis.dose_response_rows` (defense ``none``; the
    clean baseline as the rate-0 point); bands are the two-level bootstrap intervals of
    `benchmark.analysis.summary_table`; a star marks a significant drop (≥ 3 seeds). One
    line per segmenter.

    Args:
        summary: `benchmark.analysis.summary_table` of one study (per metric ``m``:
            ``m, m_ci_low, m_ci_high``; ``significant``).
        attack: attack label to plot.
        path: PNG to write (folders are created).
        title: figure title. Defaults to ``"<attack>: dose response"``.

    Returns:
        ``path``.
    """
    from .analysis import dose_response_rows

    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = dose_response_rows(summary, attack) if not summary.empty else summary
    fig, axes = plt.subplots(1, len(DOSE_METRICS), figsize=(4.2 * len(DOSE_METRICS), 3.6 + 0.2 * max(rows["segmenter"].nunique() if not rows.empty else 1, 1)), squeeze=False)
    segmenters = sorted(rows["segmenter"].unique()) if not rows.empty else []
    for ax, metric in zip(axes[0], DOSE_METRICS):
        for segmenter in segmenters:
            part = rows[rows["segmenter"] == segmenter]
            if metric not in part or part[metric].isna().all():
                continue
            x = part["rate"].astype(float).to_numpy() * 100
            seeds = int(part["seeds"].min()) if "seeds" in part and part["seeds"].notna().any() else 0
            label = f"{segmenter} ({seeds} seed{'s' if seeds != 1 else ''})" if seeds else segmenter
            line = ax.plot(x, part[metric].astype(float), marker="o", label=label)[0]
            if f"{metric}_ci_low" in part:
                ax.fill_between(x, part[f"{metric}_ci_low"].astype(float), part[f"{metric}_ci_high"].astype(float),
                                color=line.get_color(), alpha=0.2, linewidth=0)
            if metric == "dice" and "significant" in part:
                for rate, value, significant in zip(x, part[metric], part["significant"]):
                    if significant is True:
                        ax.annotate("*", (rate, value), textcoords="offset points", xytext=(0, 5), ha="center", color="#b42318")
        # the rate is a share of the attackable cases; trusted cases, never attacked, dilute it
        ax.set_xlabel("attack rate (% of attackable training cases)")
        ax.set_ylabel(f"{metric} (mean, 95 % interval)")
        ax.set_title(metric.capitalize(), fontsize=10)
        ax.grid(alpha=0.3)
    if segmenters:
        # below the panels: segmenter labels carry their parameters and would squeeze an axis
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, [textwrap.shorten(label, 110, placeholder="…") for label in labels],
                   loc="lower center", bbox_to_anchor=(0.5, 0.06), fontsize=8, frameon=False, ncol=1)
    else:
        axes[0][0].text(0.5, 0.5, "no finished cells", ha="center", transform=axes[0][0].transAxes)
    fig.suptitle(title or f"{attack}: dose response (defense none)", fontsize=11)
    fig.text(0.5, 0.005, _interval_caption(rows), ha="center", va="bottom", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.06 + 0.05 * max(len(segmenters), 1), 1, 1))
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def _interval_caption(rows: pd.DataFrame) -> str:
    """What the bands count: seeds and cases, or validation cases alone for one training run."""
    seeds = int(rows["seeds"].min()) if "seeds" in rows and rows["seeds"].notna().any() else 0
    if seeds >= 2:
        return f"bands: 95 % intervals over {seeds} seeds and the validation cases; * Holm-significant drop"
    return "bands: 95 % intervals over validation cases only (1 training run: training noise not counted)"
