"""The harness side of defenses: detection statistics, what the segmenter is trained on, config checks."""

from __future__ import annotations

import hashlib

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
    [({"name": "mriqc", "budget": 0.25}, 3), ({"name": "spectral", "quantile": 1.0}, None), ({"name": "none"}, 0)],
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
        assert report["removed"] == len(removed) and report["removed_fraction"] == pytest.approx(len(removed) / 12)
        assert report["auroc"] >= 0.8  # the toy corruption is visible
        assert set(removed) <= set(train_cases)
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
    assert report["removed"] == 6
    hits = round(report["precision"] * report["removed"])
    assert report["recall"] == pytest.approx(hits / report["poisoned"])


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
