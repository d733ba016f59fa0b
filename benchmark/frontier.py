"""The stealth–damage frontier: how much an attack setting hurts against how well it is caught.

One point per attack setting (an attack with its parameters, as the tables label it) and
poison rate: its Dice damage without a defense (clean Dice − attacked Dice, mean over the
seeds both measured) against the best AUROC any defense of the study reaches on it. An
attacker wants the lower right (much damage, no defense better than chance); a setting in
the upper left is both harmless and caught. The rows come from ``defenses.csv``
(`benchmark.analysis.defense_effect`), so the figure and the table say the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .figures import in_default_style

__all__ = ["FRONTIER_COLUMNS", "frontier_figure", "frontier_rows", "plot_frontier"]

FRONTIER_COLUMNS = ["segmenter", "attack", "rate", "seeds", "damage", "best_auroc", "best_defense", "dice_without", "dice_clean"]


def frontier_rows(defenses: pd.DataFrame) -> pd.DataFrame:
    """One row per segmenter, attack setting and poisoned rate: damage and the best defense's AUROC.

    Args:
        defenses: the ``defenses.csv`` table (`benchmark.analysis.defense_effect`).

    Returns:
        `FRONTIER_COLUMNS`; empty when no defense scored a poisoned cell. ``best_auroc``
        is the highest AUROC over the study's defenses (NaN where none was defined).
    """
    if defenses.empty:
        return pd.DataFrame(columns=FRONTIER_COLUMNS)
    poisoned = defenses[(defenses["rate"] > 0) & defenses["auroc"].notna()]
    rows = []
    for (segmenter, attack, rate), group in poisoned.groupby(["segmenter", "attack", "rate"], sort=True):
        best = group.loc[group["auroc"].idxmax()]
        rows.append({
            "segmenter": segmenter, "attack": attack, "rate": float(rate), "seeds": int(group["seeds"].min()),
            "damage": float(best["damage"]), "best_auroc": float(best["auroc"]), "best_defense": best["defense"],
            "dice_without": float(best["dice_without"]), "dice_clean": float(best["dice_clean"]),
        })
    return pd.DataFrame(rows, columns=FRONTIER_COLUMNS)


@in_default_style
def plot_frontier(rows: pd.DataFrame, path: Path, title: str | None = None) -> Path:
    """Best defense AUROC against Dice damage, one marker per attack setting, one colour per rate.

    Args:
        rows: `frontier_rows`.
        path: the PNG to write.
        title: figure title. Defaults to a description of the axes.

    Returns:
        ``path``.
    """
    import matplotlib.pyplot as plt

    fig = frontier_figure(rows, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier_figure(rows: pd.DataFrame, title: str | None = None):
    """The figure `plot_frontier` saves (matplotlib ``Figure``); the caller closes it.

    Each point is labelled with the defense that reached its AUROC; the legend lists one
    setting per line below the axes, so a long setting label is shown whole.
    """
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(rows["attack"]))
    rates = sorted(rows["rate"].unique())
    markers = "osD^vP*Xh<>p"
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, max(len(rates), 1)))
    fig, ax = plt.subplots(figsize=(8.0, 5.2 + 0.18 * (len(settings) + len(rates))), layout="constrained")
    for s, setting in enumerate(settings):
        for r, rate in enumerate(rates):
            point = rows[(rows["attack"] == setting) & (rows["rate"] == rate)]
            if point.empty:
                continue
            ax.scatter(point["damage"], point["best_auroc"], marker=markers[s % len(markers)], s=70, color=colours[r],
                       edgecolor="black", linewidth=0.5, zorder=3)
            for _, p in point.iterrows():
                # alternate below and above, so neighbouring settings' labels do not overlap
                ax.annotate(str(p["best_defense"]), (p["damage"], p["best_auroc"]), xytext=(0, -13 if s % 2 == 0 else 8),
                            textcoords="offset points", ha="center", fontsize=7, color="dimgrey")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.axvline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("Dice damage without a defense (clean − attacked, mean over seeds)")
    ax.set_ylabel("best defense AUROC on the poisoned cases")
    ax.set_ylim(0.0, 1.1)
    ax.margins(x=0.1)
    seeds = int(rows["seeds"].min()) if len(rows) else 0
    ax.set_title(title or f"stealth–damage frontier ({seeds} seed{'s' if seeds != 1 else ''} per point; chance AUROC 0.5)")
    handles = [plt.Line2D([], [], marker=markers[s % len(markers)], linestyle="", color="grey", markeredgecolor="black",
                          label=setting) for s, setting in enumerate(settings)]
    handles += [plt.Line2D([], [], marker="o", linestyle="", color=colours[r], label=f"rate {rate:.3g}") for r, rate in enumerate(rates)]
    fig.legend(handles=handles, loc="outside lower center", ncol=1, fontsize=8, frameon=False)
    return fig
