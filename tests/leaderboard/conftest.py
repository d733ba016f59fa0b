"""A results database written directly with ResultStore: a known dose-response, two seeds, a defense."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import METRICS, OPTIONAL_METRICS, ResultStore, metrics_from_confusion
from benchmark.store import CellRecord
from leaderboard import compute_digest
from leaderboard.bundle import AGGREGATE_METHOD, _aggregates

DATASET = {"name": "synthetic-brats", "cases": 6, "slices": 4, "size": 32, "seed": 0}
TASK = {"inputs": ["t1ce"], "target": "ET"}
SPLIT = {"val_fraction": 0.34, "seed": 0, "trusted": 0}
SEGMENTER = {"name": "unet", "epochs": 2, "batch_size": 8, "lr": 0.003, "channels": [4, 8, 16]}
CASES = [f"synth-{i:03d}" for i in range(8)]
RATES = [0.25, 0.5, 1.0]
SEEDS = [0, 1]

# clean per-case Dice, and how much each rate removes (case-specific, so the paired test has signal)
CLEAN = np.array([0.86, 0.82, 0.90, 0.78, 0.88, 0.84, 0.80, 0.87])
DROP = {0.25: 0.03, 0.5: 0.10, 1.0: 0.30}


def counts_for_dice(dice: float) -> dict[str, int]:
    """TP/FP/TN/FN whose Dice is ``dice`` to about 1e-8 (large counts, errors split evenly)."""
    tp = 10_000_000
    errors = int(round(2 * tp * (1 - dice) / dice))
    return {"tp": tp, "fp": errors // 2, "tn": 1_000_000_000, "fn": errors - errors // 2}


def _frame(dice: np.ndarray) -> pd.DataFrame:
    """Per-case counts near the wanted Dice, and every metric as `benchmark.metrics` derives it from them."""
    dice = np.clip(dice, 0.01, 1)
    counts = pd.DataFrame([counts_for_dice(float(d)) for d in dice], index=pd.Index(CASES, name="case"))
    return metrics_from_confusion(counts)


def _record(key: str, attack: dict, rate: float, defense: dict, seed: int, dice: np.ndarray, t: float,
            attack_report: dict | None = None, defense_report: dict | None = None) -> CellRecord:
    config = {"dataset": DATASET, "task": TASK, "split": SPLIT, "segmenter": SEGMENTER, "attack": attack,
              "rate": rate, "defense": defense, "seed": seed}
    env = {"versions": {"poisonbench": "0.1.0", "torch": "2.3.0"}, "python": "3.11", "platform": "test", "device": "cpu",
           "torch_threads": 1, "git_commit": None}
    return CellRecord(key, config, "finished", t, t + 1.0, {"fit_s": 1.0}, env, _frame(dice), attack_report or {}, defense_report or {})


def write_results(out: Path) -> Path:
    """Write the fixture database into ``out/results.sqlite`` and return ``out``."""
    none_attack, noise = {"name": "none"}, {"name": "noise", "sigma": 0.5}
    no_defense, defense = {"name": "none"}, {"name": "spectral", "quantile": 0.9}
    t = 1_700_000_000.0
    n = 0
    with ResultStore(out / "results.sqlite") as store:
        for seed in SEEDS:
            jitter = np.random.default_rng(seed).normal(0, 0.002, len(CASES))
            store.write(_record(f"{n:02d}" + "a" * 18, none_attack, 0.0, no_defense, seed, CLEAN + jitter, t)); n += 1
            store.write(_record(f"{n:02d}" + "b" * 18, none_attack, 0.0, defense, seed, CLEAN + jitter - 0.01, t,
                                defense_report={"auroc": None, "ap": None, "removed": 1, "poisoned": 0})); n += 1
            for rate in RATES:
                spread = np.linspace(0.5, 1.5, len(CASES))
                attacked = CLEAN + jitter - DROP[rate] * spread
                store.write(_record(f"{n:02d}" + "c" * 18, noise, rate, no_defense, seed, attacked, t + n,
                                    attack_report={"poisoned_cases": int(rate * 4), "psnr": 21.5, "ssim": float("nan")})); n += 1
                store.write(_record(f"{n:02d}" + "d" * 18, noise, rate, defense, seed, attacked + DROP[rate] * 0.5, t + n,
                                    defense_report={"auroc": 0.8 + 0.1 * rate, "ap": 0.7, "precision": 0.5, "recall": 0.75,
                                                    "f1": 0.6, "removed": 2, "poisoned": int(rate * 4), "removed_cases": ["synth-100"]})); n += 1
        # a failed cell is not exported
        failed = _record("ff" + "e" * 18, noise, 0.75, no_defense, 0, CLEAN, t + 99)
        failed.status, failed.case_metrics, failed.error = "failed", None, "Traceback...\nRuntimeError: boom"
        store.write(failed)
    return out


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return write_results(tmp_path / "results")


@pytest.fixture
def bundle(results_dir: Path) -> dict:
    from leaderboard import export_bundle

    return export_bundle(results_dir, {"name": "Jane Doe", "affiliation": "Example Lab", "link": "https://example.org"}, created="2025-01-01T00:00:00+00:00")


def recount(case: dict) -> dict:
    """``case`` with every metric recomputed from its TP/FP/TN/FN (in place; returned for chaining)."""
    frame = metrics_from_confusion(pd.DataFrame([{k: case[k] for k in ("tp", "fp", "tn", "fn")}]))
    case.update({m: float(frame[m].iloc[0]) for m in METRICS})
    return case


def reseal(bundle: dict, recompute_aggregates: bool = False) -> dict:
    """A copy with its aggregates (optionally) and digest recomputed, as an honest exporter would."""
    bundle = copy.deepcopy(bundle)
    if recompute_aggregates:
        for cell in bundle["cells"]:
            cell["aggregates"] = {m: _aggregates(np.array([np.nan if c.get(m) is None else c[m] for c in cell["cases"]], dtype=float))
                                  for m in (*METRICS, *OPTIONAL_METRICS) if all(m in c for c in cell["cases"])}
    bundle["digest"] = compute_digest(bundle)
    return bundle


def dump(bundle: dict, path: Path) -> Path:
    path.write_text(json.dumps(bundle), encoding="utf-8")
    return path


@pytest.fixture
def helpers():
    class H:
        pass

    h = H()
    h.reseal, h.dump, h.write_results, h.recount, h.record = reseal, dump, write_results, recount, _record
    h.counts_for_dice = counts_for_dice
    h.aggregate_method = AGGREGATE_METHOD
    return h
