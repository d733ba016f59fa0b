"""Recovery and clean cost of defenses, from a results database with known Dice values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark import METRICS, ResultStore
from benchmark.cli.main import main
from benchmark.defense_tables import defense_effect_frame
from benchmark.outputs import write_sweep_tables
from benchmark.store import CellRecord

CASES = ["case-a", "case-b"]
GAN = {"name": "gan-synthetic", "mode": "replace"}
SEGMENTER = {"name": "unet", "epochs": 2}


def _record(key, rate, defense, seed, dice, attack=GAN, defense_report=None, status="finished", attack_report=None):
    frame = pd.DataFrame({m: [dice] * len(CASES) for m in METRICS}, index=pd.Index(CASES, name="case"))
    for count in ("tp", "fp", "tn", "fn"):
        frame[count] = 1
    config = {"segmenter": SEGMENTER, "attack": attack, "rate": rate, "defense": defense, "seed": seed}
    return CellRecord(key, config, status, 0.0, 1.0, case_metrics=frame if status == "finished" else None,
                      attack_report=attack_report or {}, defense_report=defense_report or {},
                      error=None if status == "finished" else "boom")


# seed -> (clean, poisoned) Dice without a defense; the defense gets back a known share.
# Three seeds of small spread: the damage (about 0.3) is far above the detectable difference.
UNDEFENDED = {0: (0.80, 0.50), 1: (0.82, 0.51), 2: (0.81, 0.53)}


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        for seed, (clean, poisoned) in UNDEFENDED.items():
            store.write(_record(f"none-0-{seed}", 0.0, {"name": "none"}, seed, clean))
            store.write(_record(f"none-5-{seed}", 0.5, {"name": "none"}, seed, poisoned))
            # spectral: costs 0.02 when clean, wins back 3/4 of the damage of both seeds together
            store.write(_record(f"spec-0-{seed}", 0.0, {"name": "spectral", "budget": 0.5}, seed, clean - 0.02,
                                defense_report={"auroc": None, "removed_fraction": 0.1}))
            store.write(_record(f"spec-5-{seed}", 0.5, {"name": "spectral", "budget": 0.5}, seed, poisoned + 0.75 * (clean - poisoned),
                                defense_report={"auroc": 0.9 + 0.1 * seed, "ap": 0.8, "f1": 0.5, "removed_fraction": 0.4}))
        yield store


def test_recovery_and_clean_cost_against_the_undefended_cells(store):
    frame = defense_effect_frame(store.runs(), store.case_metrics()).set_index("rate")
    assert list(frame["defense"]) == ["spectral", "spectral"]
    clean, poisoned = np.mean([0.80, 0.82, 0.81]), np.mean([0.50, 0.51, 0.53])
    attacked = frame.loc[0.5]
    assert attacked["seeds"] == 3
    assert attacked["dice_clean"] == pytest.approx(clean) and attacked["dice_without"] == pytest.approx(poisoned)
    assert attacked["recovery"] == pytest.approx(0.75)
    assert np.isnan(attacked["clean_cost"])
    assert attacked["auroc"] == pytest.approx(1.0) and attacked["removed_fraction"] == pytest.approx(0.4)
    assert attacked["recovery_note"] == "" and 0 < attacked["detectable_difference"] < attacked["damage"]
    at_zero = frame.loc[0.0]
    assert at_zero["clean_cost"] == pytest.approx(0.02)
    assert np.isnan(at_zero["recovery"]) and np.isnan(at_zero["auroc"])


def test_only_seeds_with_every_reference_cell_count(store):
    # seed 3 has a defended cell but no undefended ones: it must not shift the means
    store.write(_record("spec-5-3", 0.5, {"name": "spectral", "budget": 0.5}, 3, 0.6))
    attacked = defense_effect_frame(store.runs(), store.case_metrics()).set_index("rate").loc[0.5]
    assert attacked["seeds"] == 3 and attacked["recovery"] == pytest.approx(0.75)


def test_failed_cells_are_left_out(store):
    store.write(_record("none-5-0", 0.5, {"name": "none"}, 0, 0.0, status="failed"))
    attacked = defense_effect_frame(store.runs(), store.case_metrics()).set_index("rate").loc[0.5]
    # seeds 1 and 2 are left: too few to test, which the note says
    assert attacked["seeds"] == 2 and attacked["dice"] == pytest.approx(np.mean([0.51 + 0.75 * 0.31, 0.53 + 0.75 * 0.28]))
    assert attacked["recovery"] == pytest.approx(0.75) and attacked["recovery_note"] == "2 seeds"


def test_two_configurations_of_one_defense_stay_apart(store):
    for seed, (clean, poisoned) in UNDEFENDED.items():
        store.write(_record(f"spec2-5-{seed}", 0.5, {"name": "spectral", "budget": 0.2}, seed, poisoned))
    frame = defense_effect_frame(store.runs(), store.case_metrics())
    attacked = frame[frame["rate"] == 0.5].set_index("defense")
    assert set(attacked.index) == {"spectral (budget=0.2)", "spectral (budget=0.5)"}
    assert attacked.loc["spectral (budget=0.2)", "recovery"] == pytest.approx(0.0)
    assert attacked.loc["spectral (budget=0.5)", "recovery"] == pytest.approx(0.75)


def test_an_attack_that_does_no_damage_has_no_recovery(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        for key, rate, defense, dice in [("a", 0.0, "none", 0.8), ("b", 0.5, "none", 0.85), ("c", 0.5, "spectral", 0.8)]:
            store.write(_record(key, rate, {"name": defense}, 0, dice))
        assert np.isnan(defense_effect_frame(store.runs(), store.case_metrics()).loc[0, "recovery"])


@pytest.mark.parametrize("with_own_clean_cell", [False, True])
def test_the_none_attack_is_the_preferred_clean_reference(tmp_path, with_own_clean_cell):
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.write(_record("clean", 0.0, {"name": "none"}, 0, 0.8, attack={"name": "none"}))
        if with_own_clean_cell:  # the attack's own rate-0 cell is not used while a 'none' attack cell exists
            store.write(_record("own-clean", 0.0, {"name": "none"}, 0, 0.6))
        store.write(_record("hit", 0.5, {"name": "none"}, 0, 0.4))
        store.write(_record("fix", 0.5, {"name": "spectral"}, 0, 0.7))
        row = defense_effect_frame(store.runs(), store.case_metrics()).set_index("attack").loc["gan-synthetic"]
        assert row["dice_clean"] == pytest.approx(0.8) and row["damage"] == pytest.approx(0.4)


def test_one_seed_gives_no_recovery_however_large_the_damage(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.write(_record("clean", 0.0, {"name": "none"}, 0, 0.8))
        store.write(_record("hit", 0.5, {"name": "none"}, 0, 0.2))
        store.write(_record("fix", 0.5, {"name": "spectral"}, 0, 0.7))
        row = defense_effect_frame(store.runs(), store.case_metrics()).iloc[0]
    assert row["damage"] == pytest.approx(0.6) and np.isnan(row["recovery"])
    assert row["recovery_note"] == "detectable difference unknown (1 seed)"


def test_no_recovery_ratio_over_a_negligible_damage(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.write(_record("clean", 0.0, {"name": "none"}, 0, 0.800))
        store.write(_record("hit", 0.5, {"name": "none"}, 0, 0.795))
        store.write(_record("fix", 0.5, {"name": "spectral"}, 0, 0.700))
        row = defense_effect_frame(store.runs(), store.case_metrics()).iloc[0]
    assert row["dice"] == pytest.approx(0.7) and np.isnan(row["recovery"])  # not −19


def test_sweep_tables_write_defenses_csv_and_report_prints_it(store, tmp_path, capsys):
    write_sweep_tables(store.runs(), store.case_metrics(), tmp_path)
    written = pd.read_csv(tmp_path / "defenses.csv")
    assert written.loc[written["rate"] == 0.5, "recovery"].item() == pytest.approx(0.75)
    store.close()
    assert main(["report", "--out", str(tmp_path), "--defenses"]) == 0
    printed = capsys.readouterr().out
    assert "spectral" in printed and "0.750" in printed and "0.020" in printed


def test_report_defenses_without_defended_cells_says_so(tmp_path, capsys):
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.write(_record("clean", 0.0, {"name": "none"}, 0, 0.8))
    assert main(["report", "--out", str(tmp_path), "--defenses"]) == 0
    assert "no finished cells with a defense other than 'none'" in capsys.readouterr().out


def test_a_defended_sweep_writes_one_row_per_defense_and_rate(tiny_config, write_config, tmp_path, capsys):
    tiny_config["split"]["trusted"] = 2
    tiny_config["attacks"] = [{"name": "noise", "rates": [0, 0.5]}]
    tiny_config["defenses"] = [{"name": "none"}, {"name": "spectral", "budget": 0.25}]
    out = tmp_path / "out"
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 0
    written = pd.read_csv(out / "defenses.csv")
    assert written[["attack", "defense", "rate", "seeds"]].values.tolist() == [["noise", "spectral", 0.0, 1], ["noise", "spectral", 0.5, 1]]
    detection = pd.read_csv(out / "detection.csv").set_index("rate")
    assert written.set_index("rate").loc[0.5, "removed_fraction"] == pytest.approx(detection.loc[0.5, "removed_fraction"])
    results = pd.read_csv(out / "results.csv").groupby(["defense", "rate"])["dice"].mean()
    assert written.set_index("rate").loc[0.0, "clean_cost"] == pytest.approx(results[("none", 0.0)] - results[("spectral", 0.0)])

    capsys.readouterr()
    assert main(["run", str(write_config(tiny_config)), "--out", str(out)]) == 0  # resumed: prints the tables
    assert "defenses: detection, recovery" in capsys.readouterr().err
    tiny_config["defenses"] = [{"name": "none"}]
    assert main(["run", str(write_config(tiny_config)), "--out", str(tmp_path / "undefended")]) == 0
    assert "defenses: detection, recovery" not in capsys.readouterr().err


def test_without_a_clean_cell_dice_is_still_compared(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.write(_record("hit", 0.5, {"name": "none"}, 0, 0.4))
        store.write(_record("fix", 0.5, {"name": "spectral"}, 0, 0.7, defense_report={"auroc": 1.0}))
        row = defense_effect_frame(store.runs(), store.case_metrics()).iloc[0]
    assert row["seeds"] == 1 and row["dice"] == pytest.approx(0.7) and row["dice_without"] == pytest.approx(0.4)
    assert np.isnan(row["dice_clean"]) and np.isnan(row["recovery"]) and row["auroc"] == 1.0


def test_detection_figures_come_from_the_seeds_that_are_compared(store):
    # seed 3 is defended only; its AUROC must not enter the mean over seeds 0, 1 and 2
    store.write(_record("spec-5-3", 0.5, {"name": "spectral", "budget": 0.5}, 3, 0.0, defense_report={"auroc": 0.0}))
    attacked = defense_effect_frame(store.runs(), store.case_metrics()).set_index("rate").loc[0.5]
    assert attacked["auroc"] == pytest.approx(1.0)


def test_a_failed_cell_does_not_change_the_labels(store):
    store.write(_record("spec2-5-0", 0.5, {"name": "spectral", "budget": 0.2}, 0, 0.0, status="failed"))
    frame = defense_effect_frame(store.runs(), store.case_metrics())
    assert set(frame["defense"]) == {"spectral (budget=0.5)"}


def test_two_settings_of_one_attack_stay_apart_in_every_table(tmp_path):
    stealthy = {**GAN, "stealth": True}
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.write(_record("plain", 0.5, {"name": "spectral"}, 0, 0.7, defense_report={"auroc": 1.0}, attack=GAN,
                            attack_report={"ssim": 0.11}))
        store.write(_record("stealthy", 0.5, {"name": "spectral"}, 0, 0.6, defense_report={"auroc": 0.6}, attack=stealthy,
                            attack_report={"ssim": 0.08}))
        write_sweep_tables(store.runs(), store.case_metrics(), tmp_path)
    labels = {"plain": "gan-synthetic", "stealthy": "gan-synthetic (stealth=true)"}
    for table in ("results", "attacks", "detection"):
        written = pd.read_csv(tmp_path / f"{table}.csv")
        assert dict(zip(written["cell"], written["attack"])) == labels, table
    detection = pd.read_csv(tmp_path / "detection.csv").set_index("attack")
    assert detection.loc["gan-synthetic (stealth=true)", "auroc"] == pytest.approx(0.6)
    summary_attacks = set(pd.read_csv(tmp_path / "summary.csv")["attack"])
    assert summary_attacks == set(labels.values())
