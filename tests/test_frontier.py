"""The stealth–damage frontier: rows from the defenses table, and when the figure is drawn."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmark.frontier import FRONTIER_COLUMNS, frontier_rows
from benchmark.sweep import draw_frontier


def _defenses(attacks: list[str]) -> pd.DataFrame:
    rows = []
    for a, attack in enumerate(attacks):
        for rate in (0.0, 0.5):
            for d, (defense, auroc) in enumerate([("mriqc", 0.6 + 0.1 * a), ("spectral", 0.9 - 0.1 * a)]):
                rows.append({
                    "segmenter": "unet", "attack": attack, "rate": rate, "defense": defense, "seeds": 3,
                    "auroc": None if rate == 0 else auroc, "damage": 0.1 * (a + 1) if rate else 0.0,
                    "dice_without": 0.8 - 0.1 * (a + 1), "dice_clean": 0.8,
                })
    return pd.DataFrame(rows)


def test_one_row_per_setting_and_poisoned_rate_with_the_best_defense():
    rows = frontier_rows(_defenses(["gan-synthetic", "gan-synthetic(stealth=true)"]))
    assert list(rows.columns) == FRONTIER_COLUMNS
    assert len(rows) == 2 and (rows["rate"] == 0.5).all()
    by_attack = rows.set_index("attack")
    assert by_attack.loc["gan-synthetic", "best_defense"] == "spectral"
    assert by_attack.loc["gan-synthetic", "best_auroc"] == pytest.approx(0.9)
    assert by_attack.loc["gan-synthetic(stealth=true)", "best_auroc"] == pytest.approx(0.8)
    assert by_attack.loc["gan-synthetic(stealth=true)", "damage"] == pytest.approx(0.2)


def test_the_figure_needs_two_settings(tmp_path):
    assert draw_frontier(_defenses(["gan-synthetic"]), tmp_path) is None
    assert not (tmp_path / "frontier.png").exists()
    path = draw_frontier(_defenses(["gan-synthetic", "gan-synthetic(source=[t1, t2, flair])"]), tmp_path)
    assert path == tmp_path / "frontier.png" and path.stat().st_size > 10_000


def test_a_detection_only_study_gets_no_empty_figure(tmp_path):
    table = _defenses(["gan-synthetic", "gan-synthetic(stealth=true)"])
    table[["damage", "dice_without", "dice_clean"]] = float("nan")  # no undefended cells: no damage measured
    assert len(frontier_rows(table)) == 2
    assert draw_frontier(table, tmp_path) is None
    assert not (tmp_path / "frontier.png").exists()


def test_no_defense_scores_no_rows():
    table = _defenses(["blur", "noise"])
    table["auroc"] = None
    assert frontier_rows(table).empty
    assert frontier_rows(pd.DataFrame()).empty


def test_long_setting_labels_fit_inside_the_figure_and_each_point_names_its_defense():
    import matplotlib.pyplot as plt

    from benchmark.frontier import frontier_figure

    long_labels = [
        "gan-synthetic (enhancement_weight=0.0, epochs=3, source=ct)",
        "gan-synthetic (enhancement_weight=5.0, epochs=6, lambda_stealth=1.0, source=ct, stealth=true)",
        'gan-synthetic (enhancement_weight=5.0, epochs=6, source=["t1", "t2", "flair"])',
    ]
    fig = frontier_figure(frontier_rows(_defenses(long_labels)))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        inside = fig.bbox
        [legend] = fig.legends
        box = legend.get_window_extent(renderer)
        assert box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert sorted(texts) == sorted(frontier_rows(_defenses(long_labels))["best_defense"])
    finally:
        plt.close(fig)
