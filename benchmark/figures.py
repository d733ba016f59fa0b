"""Figures of a sweep: example poisoned cases and dose-response curves (matplotlib, Agg).

Both functions write a PNG and return its path; they never open a window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .sliceset import SliceSet

__all__ = ["plot_attack_examples", "plot_dose_response"]

DOSE_METRICS = ("dice", "accuracy", "sensitivity")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _representative_slice(labels: np.ndarray) -> int:
    """The slice with the most labelled pixels (the middle one when no slice is labelled)."""
    counts = (labels > 0).reshape(len(labels), -1).sum(axis=1)
    return int(np.argmax(counts)) if counts.any() else len(labels) // 2


def plot_attack_examples(clean: SliceSet, poisoned: SliceSet, path: Path, source: str | None = None, max_cases: int = 3) -> Path:
    """One row per poisoned case: source channel, real target, poisoned target, mask.

    The target channels are those that differ between ``clean`` and ``poisoned`` on the
    poisoned cases (the first one is shown). Cases added by an attack (``<case>~syn``)
    are matched to their original case. A label-only attack shows the real and the
    poisoned masks instead.

    Args:
        clean: the training set before the attack.
        poisoned: the attack's output (``poisoned`` flags set).
        path: PNG to write (folders are created).
        source: channel the attack translated from, shown first when given. Defaults to None.
        max_cases: most cases shown. Defaults to 3.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in poisoned.poisoned_cases()[:max_cases]:
        original = case if case in set(clean.cases) else case.split("~", 1)[0]
        if original not in set(clean.cases):
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
    columns = (["source"] if source else []) + ["real", "poisoned", "mask"]
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
        target = changed[0] if changed else (clean.channels.index(source) if source in clean.channels else 0)
        name = clean.channels[target]
        real, fake = clean.images[r, target], poisoned.images[f, target]
        vmin, vmax = np.percentile(np.concatenate([real.ravel(), fake.ravel()]), [1, 99])
        panels = []
        if source:
            panels.append((poisoned.images[f, poisoned.channel_index(source)] if source in poisoned.channels else None, f"{source} (source)", None))
        panels.append((real, f"{name} real", (vmin, vmax)))
        panels.append((fake, f"{name} {'poisoned' if changed else '(unchanged)'}", (vmin, vmax)))
        for col, (image, title, limits) in enumerate(panels):
            ax = axes[row][col]
            if image is not None:
                kwargs = {"vmin": limits[0], "vmax": limits[1]} if limits else {}
                if limits is None:  # the source: scale to its head voxels, bone (CT) saturating
                    values = image[image != 0] if (image != 0).any() else image.ravel()
                    lo, hi = np.percentile(values, [1, 90])
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


def plot_dose_response(summary: pd.DataFrame, attack: str, path: Path) -> Path:
    """Dice, accuracy and sensitivity against the poison rate, mean over seeds, with CI bands.

    Uses finished cells of ``attack`` with defense ``none``; rows of attack ``none`` at
    rate 0 are added as the clean point. The band spans the mean over seeds of each
    cell's bootstrap CI. One line per segmenter.

    Args:
        summary: one row per cell: ``segmenter, attack, rate, defense, seed, status`` and,
            per metric ``m``, ``m, m_ci_low, m_ci_high`` (see `benchmark.report.summary_frame`).
        attack: attack to plot.
        path: PNG to write (folders are created).

    Returns:
        ``path``.
    """
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = summary
    if "status" in frame:
        frame = frame[frame["status"] == "finished"]
    if "defense" in frame:
        frame = frame[frame["defense"] == "none"]
    rows = frame[frame["attack"] == attack]
    if attack != "none":
        clean = frame[(frame["attack"] == "none") & (frame["rate"].astype(float) == 0.0)]
        if not clean.empty and (rows.empty or not (rows["rate"].astype(float) == 0.0).any()):
            rows = pd.concat([rows, clean])
    fig, axes = plt.subplots(1, len(DOSE_METRICS), figsize=(4.2 * len(DOSE_METRICS), 3.4), squeeze=False)
    segmenters = sorted(rows["segmenter"].unique()) if "segmenter" in rows else []
    for ax, metric in zip(axes[0], DOSE_METRICS):
        for segmenter in segmenters:
            part = rows[rows["segmenter"] == segmenter].copy()
            part["rate"] = part["rate"].astype(float)
            cols = [c for c in (metric, f"{metric}_ci_low", f"{metric}_ci_high") if c in part]
            grouped = part.groupby("rate")[cols].mean().sort_index()
            if grouped.empty or metric not in grouped:
                continue
            x = grouped.index.to_numpy() * 100
            line = ax.plot(x, grouped[metric], marker="o", label=segmenter)[0]
            if len(cols) == 3:
                ax.fill_between(x, grouped[f"{metric}_ci_low"], grouped[f"{metric}_ci_high"], color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("poisoned training cases (%)")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize(), fontsize=10)
        ax.grid(alpha=0.3)
    if segmenters:
        axes[0][0].legend(fontsize=8)
    else:
        axes[0][0].text(0.5, 0.5, "no finished cells", ha="center", transform=axes[0][0].transAxes)
    fig.suptitle(f"{attack}: dose response (defense none, mean over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
