"""benchmark.analysis: aggregation, pairing, intervals, tests and the detectable difference on hand examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from benchmark.analysis import (
    MIN_SEEDS,
    SUMMARY_COLUMNS,
    DetectableDifference,
    adjust_p_values,
    clean_baseline,
    crossed_degrees_of_freedom,
    defense_effect,
    detectable_difference,
    drop_interval,
    mean_interval,
    plugin_labels,
    summary_table,
    two_level_bootstrap,
)


def _tables(values: dict[tuple, dict[int, dict[str, float]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cell and case tables from {(segmenter, attack, rate, defense): {seed: {case: dice}}}."""
    rows, cells = [], []
    for (segmenter, attack, rate, defense), by_seed in values.items():
        for seed, by_case in by_seed.items():
            cell = f"{segmenter}-{attack}-{rate}-{defense}-{seed}"
            cells.append(dict(cell=cell, segmenter=segmenter, attack=attack, rate=rate, defense=defense, seed=seed,
                              attack_report={"poisoned_share": rate / 2}, defense_report={"auroc": 0.5 + seed / 10}))
            for case, dice in by_case.items():
                rows.append(dict(segmenter=segmenter, attack=attack, rate=rate, defense=defense, seed=seed, cell=cell, case=case,
                                 dice=dice, accuracy=dice, sensitivity=dice))
    return pd.DataFrame(cells), pd.DataFrame(rows)


def _flat(dice_by_seed: dict[int, float], cases=("a", "b")) -> dict[int, dict[str, float]]:
    return {seed: {case: value for case in cases} for seed, value in dice_by_seed.items()}


CLEAN = ("unet", "none", 0.0, "none")
HIT = ("unet", "gan", 0.5, "none")
FIXED = ("unet", "gan", 0.5, "qc")


def test_recovery_is_a_ratio_of_means_not_a_mean_of_ratios():
    # per-seed recoveries 0.5, 1.0 and 0.0 (mean 0.5); over the seeds' means: 0.1 / (0.8 − 0.5333) = 0.375
    cells, cases = _tables({
        CLEAN: _flat({0: 0.8, 1: 0.8, 2: 0.8}),
        HIT: _flat({0: 0.4, 1: 0.7, 2: 0.5}),
        FIXED: _flat({0: 0.6, 1: 0.8, 2: 0.5}),
    })
    row = defense_effect(cells, cases, DetectableDifference(0.0, 0.0, 3)).iloc[0]
    assert row["recovery"] == pytest.approx(0.1 / (0.8 - 1.6 / 3))
    assert row["recovery"] != pytest.approx(0.5)
    assert row["seeds"] == 3 and row["auroc"] == pytest.approx(0.6) and row["poisoned_share"] == pytest.approx(0.25)


def test_cell_value_is_the_mean_of_per_case_values_over_cases_every_seed_scored():
    # seed 0 scored case c too (a very low Dice): it is left out so both seeds weigh the same cases
    cells, cases = _tables({CLEAN: {0: {"a": 0.9, "b": 0.7, "c": 0.0}, 1: {"a": 0.8, "b": 0.6}}})
    row = summary_table(cells, cases).iloc[0]
    assert row["cases"] == 2 and row["seeds"] == 2
    assert row["dice"] == pytest.approx(np.mean([0.9, 0.7, 0.8, 0.6]))  # not the pooled 3.0 / 5 = 0.6


def test_each_seed_weighs_the_same():
    # one case scored twice in seed 0 (duplicate rows) must not give seed 0 more weight
    cells, cases = _tables({CLEAN: {0: {"a": 0.9}, 1: {"a": 0.5}}})
    cases = pd.concat([cases, cases[cases["seed"] == 0]], ignore_index=True)
    assert summary_table(cells, cases).iloc[0]["dice"] == pytest.approx(0.7)


def test_drop_pairs_seeds_and_cases_with_the_clean_cell():
    cells, cases = _tables({
        CLEAN: {0: {"a": 0.8, "b": 0.9}, 1: {"a": 0.8, "b": 0.9}, 2: {"a": 0.8, "b": 0.9}, 3: {"a": 0.0, "b": 0.0}},
        HIT: {0: {"a": 0.5, "b": 0.7}, 1: {"a": 0.6, "b": 0.6}, 2: {"a": 0.5, "b": 0.5}},
    })
    summary = summary_table(cells, cases)
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    summary = summary.set_index("attack")
    hit = summary.loc["gan"]
    assert hit["drop"] == pytest.approx(0.85 - np.mean([0.6, 0.6, 0.5]))  # seed 3 of the clean cell is not paired
    assert hit["drop_ci_low"] <= hit["drop"] <= hit["drop_ci_high"]
    assert hit["p_value"] is not None and 0 < hit["p_value"] < 1 and hit["significant"] in (True, False)
    assert pd.isna(summary.loc["none", "drop"]) and summary.loc["none", "note"] == "clean baseline"


def test_significant_follows_holm_over_the_study_s_drops():
    # four drops of 0.03 (per seed 0.02, 0.03, 0.04): each raw p ≈ 0.035 < 0.05, Holm over four is ≈ 0.14
    groups = {CLEAN: _flat({0: 0.80, 1: 0.80, 2: 0.80})}
    groups.update({("unet", "gan", rate, "none"): _flat({0: 0.78, 1: 0.77, 2: 0.76}) for rate in (0.1, 0.2, 0.3, 0.4)})
    summary = summary_table(*_tables(groups))
    drops = summary[summary["attack"] == "gan"]
    assert (drops["p_value"] < 0.05).all()
    assert drops["p_holm"].tolist() == pytest.approx(adjust_p_values(drops["p_value"].tolist()))
    assert (drops["p_holm"] > 0.05).all() and not drops["significant"].any()
    # alone, the same drop is significant
    alone = summary_table(*_tables({CLEAN: groups[CLEAN], HIT: groups[("unet", "gan", 0.1, "none")]}))
    assert alone.set_index("attack").loc["gan", "significant"] is True
    # the printed table stars only what summary.csv calls significant, and says how
    from rich.console import Console

    from benchmark.report import print_study_summary

    console = Console(record=True, width=250)
    print_study_summary(summary, console)
    printed = console.export_text()
    assert "+0.030 [" in printed and "+0.030* [" not in printed and "Holm-adjusted p < 0.05 over the study's drops" in printed


@pytest.mark.parametrize("seeds, note", [(1, "1 seed"), (2, "2 seeds")])
def test_fewer_than_three_seeds_give_no_p_value(seeds, note):
    cells, cases = _tables({CLEAN: _flat({s: 0.8 + s / 100 for s in range(seeds)}), HIT: _flat({s: 0.3 for s in range(seeds)})})
    hit = summary_table(cells, cases).set_index("attack").loc["gan"]
    assert hit["drop"] > 0.4 and pd.isna(hit["p_value"]) and pd.isna(hit["significant"]) and hit["note"] == note


def test_the_p_value_is_a_t_test_on_the_corrected_bootstrap_standard_error():
    rng = np.random.default_rng(1)
    clean = pd.DataFrame(0.8 + rng.normal(0, 0.02, (4, 6)))
    attacked = clean - 0.05 + rng.normal(0, 0.02, (4, 6))
    drop = drop_interval(clean, attacked)
    difference = (clean - attacked).to_numpy()
    draws = two_level_bootstrap(difference)
    assert drop.se == pytest.approx(draws.std(ddof=1) * math.sqrt(4 / 3))
    assert drop.dof == pytest.approx(crossed_degrees_of_freedom(difference)) and drop.dof >= 3
    assert drop.p_value == pytest.approx(2 * student_t.sf(abs(drop.mean) / drop.se, drop.dof))
    half = student_t.ppf(0.975, drop.dof) * drop.se
    assert (drop.ci_low, drop.ci_high) == pytest.approx((drop.mean - half, drop.mean + half))
    assert drop.seeds == 4 >= MIN_SEEDS


def test_one_bootstrap_case_draw_is_shared_by_every_drawn_seed():
    # seeds agree, cases differ: a case draw per seed would average the case variation over the seeds
    values = np.tile(np.linspace(0.2, 0.9, 30), (5, 1))
    draws = two_level_bootstrap(values, resamples=4000)
    case_means = np.random.default_rng(0).choice(values[0], size=(4000, 30)).mean(axis=1)
    assert draws.std() == pytest.approx(case_means.std(), rel=0.1)


@pytest.mark.parametrize("seeds", [3, 5])
def test_intervals_cover_and_tests_hold_their_level_over_seeds_and_cases(seeds):
    # 200 synthetic studies: seed SD 0.02, case SD 0.15, seed x case SD 0.02, true mean 0
    rng = np.random.default_rng(2024)
    covered = false_positives = 0
    studies = 200
    for _ in range(studies):
        values = rng.normal(0, 0.02, (seeds, 1)) + rng.normal(0, 0.15, (1, 30)) + rng.normal(0, 0.02, (seeds, 30))
        interval = mean_interval(values, test=True, resamples=400)
        covered += interval.ci_low <= 0.0 <= interval.ci_high
        false_positives += interval.p_value < 0.05
    assert covered / studies >= 0.9
    assert false_positives / studies <= 0.08


def test_intervals_count_training_noise_and_are_reproducible():
    # every case agrees within a seed; seeds disagree: an interval over cases alone would have no width
    values = np.array([[0.9] * 8, [0.7] * 8, [0.8] * 8])
    interval = mean_interval(values)
    assert interval.mean == pytest.approx(0.8)
    assert interval.ci_high - interval.ci_low > 0.1
    assert mean_interval(values) == interval  # fixed generator seed


def test_holm_and_benjamini_hochberg_by_hand():
    assert adjust_p_values([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert adjust_p_values([0.01, 0.04, 0.03], "bh") == pytest.approx([0.03, 0.04, 0.04])
    with pytest.raises(ValueError):
        adjust_p_values([0.1], "bonferroni-ish")


def test_detectable_difference_follows_the_paired_drop_not_the_spread_of_cell_means():
    # seeds move clean and attacked Dice together (cell means spread by 0.05): the paired drop hardly moves
    shift = {0: 0.0, 1: 0.05, 2: 0.10}
    cells, cases = _tables({
        CLEAN: _flat({s: 0.70 + v for s, v in shift.items()}),
        HIT: _flat({s: 0.60 + v + (0.002 if s == 1 else 0.0) for s, v in shift.items()}),
    })
    found = detectable_difference(cases)
    drop = drop_interval(*(cases[cases["attack"] == a].pivot_table(index="seed", columns="case", values="dice") for a in ("none", "gan")))
    assert found.se == pytest.approx(drop.se) and found.sd == pytest.approx(drop.se * math.sqrt(3))
    assert found.delta == pytest.approx((student_t.ppf(0.975, 2) + student_t.ppf(0.8, 2)) * drop.se)
    assert found.delta < 0.02  # the seed-to-seed SD of cell means (0.05) would give δ ≈ 0.2
    assert "1 seed" in detectable_difference(cases[cases["seed"] == 0]).describe()


def test_detectable_difference_counts_the_case_component_of_the_drop():
    # every seed's mean drop is 0.1, but the attack hurts some cases more: the drop still has a standard error
    per_case = {"a": 0.0, "b": 0.2, "c": 0.05, "d": 0.15}
    cells, cases = _tables({
        CLEAN: {s: {c: 0.8 for c in per_case} for s in range(3)},
        HIT: {s: {c: 0.8 - d for c, d in per_case.items()} for s in range(3)},
    })
    found = detectable_difference(cases)
    assert found.delta is not None and found.delta > 0.05  # pooled SD of cell means is 0 here


def test_recovery_only_where_the_damage_exceeds_the_detectable_difference():
    cells, cases = _tables({
        CLEAN: _flat({0: 0.80, 1: 0.82, 2: 0.84}),
        HIT: _flat({0: 0.74, 1: 0.78, 2: 0.72}),  # damage 0.06, paired drops 0.06, 0.04, 0.12
        FIXED: _flat({0: 0.79, 1: 0.84, 2: 0.80}),
    })
    gated = defense_effect(cells, cases).iloc[0]
    assert np.isnan(gated["recovery"]) and "not above the detectable difference" in gated["recovery_note"]
    assert gated["damage"] == pytest.approx(0.0733, abs=1e-3) and gated["detectable_difference"] > gated["damage"]
    given = defense_effect(cells, cases, DetectableDifference(0.05, 0.01, 3)).iloc[0]
    assert given["recovery"] == pytest.approx((0.81 - 0.7467) / 0.0733, abs=1e-2) and given["recovery_note"] == ""


def test_clean_cost_at_rate_zero():
    cells, cases = _tables({CLEAN: _flat({0: 0.8}), ("unet", "none", 0.0, "qc"): _flat({0: 0.75})})
    row = defense_effect(cells, cases).iloc[0]
    assert row["clean_cost"] == pytest.approx(0.05) and np.isnan(row["recovery"])


def test_clean_baseline_prefers_the_none_attack():
    groups = [CLEAN, ("unet", "gan", 0.0, "none"), HIT, ("other", "gan", 0.0, "none")]
    assert clean_baseline(groups, "unet", "gan") == CLEAN
    assert clean_baseline(groups, "other", "gan") == ("other", "gan", 0.0, "none")
    assert clean_baseline(groups, "missing", "gan") is None


def test_labels_show_only_the_parameters_that_differ():
    specs = [{"name": "spectral", "budget": 0.2, "bins": 8}, {"name": "spectral", "budget": 0.5, "bins": 8}, {"name": "mriqc", "q": "x"}]
    assert plugin_labels(specs) == ["spectral (budget=0.2)", "spectral (budget=0.5)", "mriqc"]


def test_a_setting_that_leaves_an_option_out_is_labelled_without_it():
    from benchmark.analysis import plugin_labels

    labels = plugin_labels([
        {"name": "gan-synthetic", "epochs": 6},
        {"name": "gan-synthetic", "epochs": 6, "stealth": True, "lambda_stealth": 1.0},
    ])
    assert labels == ["gan-synthetic", "gan-synthetic (lambda_stealth=1.0, stealth=true)"]
