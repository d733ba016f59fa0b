"""The harness side of defenses: detection statistics, what the segmenter is trained on, config checks."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from benchmark import CaseAttack, Segmenter, list_defenses, register_attack, register_segmenter, validate_config
from benchmark.catalog import DEFENSES
from benchmark.cli import main
from benchmark.config import expand_cells
from benchmark.detection import detection_stats
from benchmark.runner import run_cell

from conftest import corrupt_case, make_set

TRUSTED_DEFENSES = [n for n in list_defenses() if n != "none" and DEFENSES.get(n).requires_trusted]


# --------------------------------------------------------------------------- detection metrics
def test_detection_stats_hand_computed():
    # ranking a(P) b(N) c(P) d(N): positive-negative pairs ordered right: (a,b) (a,d) (c,d) of 4 -> 0.75
    # AP: precision at each positive in rank order: a 1/1, c 2/3 -> (1 + 2/3) / 2
    scores = {"a": 0.9, "b": 0.8, "c": 0.3, "d": 0.1}
    stats = detection_stats(scores, removed=["a", "b"], poisoned={"a", "c"})
    assert stats["auroc"] == pytest.approx(0.75)
    assert stats["ap"] == pytest.approx(5 / 6)
    assert stats["precision"] == pytest.approx(0.5)
    assert stats["recall"] == pytest.approx(0.5)
    assert stats["f1"] == pytest.approx(0.5)
    assert stats["removed_fraction"] == pytest.approx(0.5)
    assert (stats["removed"], stats["poisoned"]) == (2, 2)


def test_detection_stats_without_poison_leave_auroc_empty():
    stats = detection_stats({"a": 2.0, "b": 1.0, "c": 0.0}, removed=["a"], poisoned=set())
    assert stats["auroc"] is None and stats["ap"] is None
    assert stats["precision"] == 0.0 and stats["recall"] is None
    assert stats["removed_fraction"] == pytest.approx(1 / 3)


def test_detection_stats_perfect_and_missed():
    scores = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0}
    perfect = detection_stats(scores, removed=["a", "b"], poisoned={"a", "b"})
    assert (perfect["auroc"], perfect["ap"], perfect["f1"]) == (1.0, 1.0, 1.0)
    missed = detection_stats(scores, removed=["a"], poisoned={"d"})
    assert missed["auroc"] == 0.0 and missed["precision"] == 0.0 and missed["recall"] == 0.0 and missed["f1"] == 0.0


# --------------------------------------------------------------------------- runner
FITTED: list[list[str]] = []


def _slice_hashes(images: np.ndarray) -> list[str]:
    """Identity of each slice by its t1 channel (never attacked here)."""
    return sorted(hashlib.sha1(np.ascontiguousarray(s, dtype=np.float32).tobytes()).hexdigest() for s in images)


class _Recorder(Segmenter):
    """Remembers the t1 slices it was fit on; predicts nothing."""

    def fit(self, images, masks):
        FITTED.append(_slice_hashes(images[:, 0]))

    def predict(self, images):
        return np.zeros((len(images), *images.shape[2:]), dtype=np.uint8)


class _ToyCorrupt(CaseAttack):
    """Replaces t1ce of chosen cases by a blurred, noisy image made from CT."""

    def corrupt_case(self, images, labels, channels, rng):
        return corrupt_case(images, rng), labels


def _cell(defense: dict, rate: float):
    register_segmenter("recorder")(_Recorder)
    register_attack("toy-corrupt")(_ToyCorrupt)
    config = validate_config(
        {
            "dataset": {"name": "synthetic-brats", "cases": 14, "slices": 4, "size": 32},
            "task": {"inputs": ["t1", "t1ce"], "target": "ET"},
            "split": {"val_fraction": 0.15, "seed": 0, "trusted": 4},
            "segmenters": [{"name": "recorder"}],
            "attacks": [{"name": "toy-corrupt", "rates": [rate]}],
            "defenses": [defense],
            "seeds": [0],
            "device": "cpu",
        }
    )
    (cell,) = expand_cells(config, "toy", "test")
    return cell


@pytest.mark.parametrize(
    "defense, expected_removed",
    [({"name": "mriqc", "budget": 0.25}, 2), ({"name": "spectral", "quantile": 1.0}, None), ({"name": "none"}, 0)],
)
def test_runner_records_detection_and_trains_on_exactly_the_kept_cases(defense, expected_removed, tmp_path):
    FITTED.clear()
    data = make_set(14, [], seed=3)
    record = run_cell(_cell(defense, 0.5), data, cache_dir=tmp_path)
    assert record.status == "finished", record.error
    report = record.defense_report
    train_cases = sorted(set(data.cases) - set(map(str, record.case_metrics.index)))  # 12 training cases
    assert len(train_cases) == 12
    if defense["name"] == "none":
        assert report == {}
        removed = []
    else:
        removed = report["removed_cases"]
        assert report["poisoned"] == 4  # half of the 8 attackable cases
        # only the 8 attackable cases are removable: the 4 trusted ones are left out of the figures
        assert report["removable"] == 8
        assert report["removed"] == len(removed) and report["removed_fraction"] == pytest.approx(len(removed) / 8)
        assert report["auroc"] >= 0.8  # the toy corruption is visible
        assert set(removed) <= set(train_cases) - set(_trusted_cases(data))
        if expected_removed is not None:
            assert len(removed) == expected_removed
    kept = [c for c in train_cases if c not in set(removed)]
    assert FITTED == [_slice_hashes(data.subset(kept).images[:, 0])]


def test_runner_detection_precision_matches_removed_poisoned_cases(tmp_path):
    """Precision and recall as recorded follow from which removed cases were poisoned."""
    data = make_set(14, [], seed=3)
    record = run_cell(_cell({"name": "mriqc", "budget": 0.5}, 0.5), data, cache_dir=tmp_path)
    assert record.status == "finished", record.error
    report = record.defense_report
    assert report["removed"] == 4  # half of the 8 removable cases
    hits = round(report["precision"] * report["removed"])
    assert report["recall"] == pytest.approx(hits / report["poisoned"])


#: Shorter training for the defenses that train a model (as in test_defenses.py).
FAST = {
    "loss-filter": {"epochs": 3, "warmup": 1},
    "feature-outlier": {"epochs": 3},
    "spectral-signatures": {"epochs": 3},
    "cross-modal": {"iterations": 40, "voxels": 5000},
}


@pytest.mark.parametrize("name", [n for n in list_defenses() if n != "none"])
def test_every_defense_detects_through_the_runner_under_opaque_ids(name, tmp_path):
    """Each built-in defense works with the shuffled, renamed view the runner gives it."""
    data = make_set(14, [], seed=3)
    record = run_cell(_cell({"name": name, "budget": 0.5, **FAST.get(name, {})}, 0.5), data, cache_dir=tmp_path)
    assert record.status == "finished", record.error
    assert record.defense_report["auroc"] >= 0.8, record.defense_report
    assert not set(record.defense_report["removed_cases"]) & set(_trusted_cases(data))


def test_a_defense_without_a_rule_removes_what_scores_above_every_trusted_case(tmp_path):
    """No budget, no quantile: the default rule acts (here on visibly corrupted cases) and nothing is flagged."""
    data = make_set(14, [], seed=3)
    record = run_cell(_cell({"name": "mriqc"}, 0.5), data, cache_dir=tmp_path)
    assert record.status == "finished", record.error
    report = record.defense_report
    assert report["removed"] > 0 and report["recall"] > 0
    assert "warning" not in report


def test_a_defense_that_removes_nothing_under_attack_is_flagged(tmp_path):
    data = make_set(14, [], seed=3)
    attacked = run_cell(_cell({"name": "mriqc", "budget": 0.0}, 0.5), data, cache_dir=tmp_path)
    assert attacked.status == "finished", attacked.error
    assert "removed nothing although 4 of its 8 removable training cases were poisoned" in attacked.defense_report["warning"]
    clean = run_cell(_cell({"name": "mriqc", "budget": 0.0}, 0.0), data, cache_dir=tmp_path)
    assert "warning" not in clean.defense_report


@pytest.mark.slow  # a whole `bench run` of two cells
def test_bench_run_warns_when_a_defense_removed_nothing_under_attack(tiny_config, write_config, tmp_path, capsys):
    register_segmenter("recorder")(_Recorder)
    tiny_config["dataset"]["cases"] = 8
    tiny_config["split"]["trusted"] = 2
    tiny_config["segmenters"] = [{"name": "recorder"}]
    tiny_config["attacks"] = [{"name": "noise", "rates": [0, 0.5]}]
    tiny_config["defenses"] = [{"name": "mriqc", "budget": 0.0}]
    assert main(["run", str(write_config(tiny_config)), "--out", str(tmp_path / "out")]) == 0
    err = " ".join(capsys.readouterr().err.split())  # undo the console's line wrapping
    assert err.count("warning:") == 1  # the rate-0 cell had nothing to remove
    assert re.search(r"defense 'mriqc' removed nothing although [1-9]\d* of its \d+ removable training cases were poisoned", err)


def _trusted_cases(data) -> list[str]:
    from benchmark.splitting import split_cases

    return split_cases(data, 0.15, 0, 4).trusted


def test_trusted_cases_are_never_removed_and_poisoned_share_counts_them(tmp_path):
    """``budget: 1.0`` removes every removable case, never a trusted one; the segmenter trains on the trusted 4."""
    FITTED.clear()
    data = make_set(14, [], seed=3)
    record = run_cell(_cell({"name": "mriqc", "budget": 1.0}, 0.5), data, cache_dir=tmp_path)
    assert record.status == "finished", record.error
    trusted = _trusted_cases(data)
    assert len(trusted) == 4 and not set(record.defense_report["removed_cases"]) & set(trusted)
    assert record.defense_report["removed"] == 8 and record.defense_report["removed_fraction"] == 1.0
    assert FITTED == [_slice_hashes(data.subset(trusted).images[:, 0])]
    # 4 of the 8 attackable cases are poisoned; the training set has 12 cases with the trusted ones
    assert record.attack_report["poisoned_cases"] == 4
    assert record.attack_report["poisoned_share"] == pytest.approx(4 / 12)


def test_detection_figures_leave_trusted_cases_out():
    # trusted t1, t2 score lowest and would count as correctly ranked clean cases; left out, a(P) b(N) c(P) d(N)
    scores = {"a": 0.9, "b": 0.8, "c": 0.3, "d": 0.1, "t1": -1.0, "t2": -2.0}
    stats = detection_stats(scores, removed=["a", "b"], poisoned={"a", "c"}, trusted={"t1", "t2"})
    assert stats["auroc"] == pytest.approx(0.75)
    assert stats["ap"] == pytest.approx(5 / 6)
    assert stats["removed_fraction"] == pytest.approx(0.5)
    assert stats["removable"] == 4
    with pytest.raises(ValueError, match="t1"):
        detection_stats(scores, removed=["t1"], poisoned={"a"}, trusted={"t1", "t2"})


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("name", TRUSTED_DEFENSES)
def test_defense_needing_trusted_cases_without_them_is_exit_2(name, tiny_config, write_config, capsys):
    tiny_config["defenses"] = [{"name": "none"}, {"name": name, "quantile": 0.9}]
    tiny_config["split"]["trusted"] = 0
    assert main(["validate", str(write_config(tiny_config))]) == 2
    assert "split.trusted" in capsys.readouterr().err
    tiny_config["split"]["trusted"] = 1
    assert main(["validate", str(write_config(tiny_config))]) == 0


def test_the_defense_sweep_config_is_valid():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "defenses.yaml"
    assert main(["validate", str(path)]) == 0
