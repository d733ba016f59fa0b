"""Contract tests for every registered defense, parametrised from the registry.

Each defense must rank visibly corrupted cases above clean ones, never read the
ground-truth ``poisoned`` flags, and decide with the shared budget / quantile rule.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmark import ConfigError, RunContext, SliceSet, create_defense, list_defenses
from benchmark.catalog import DEFENSES

from conftest import ForbiddenFlags

QC_DEFENSES = [name for name in list_defenses() if name != "none"]
TRUSTED_DEFENSES = [name for name in QC_DEFENSES if DEFENSES.get(name).requires_trusted]
CONTEXT = dict(device="cpu", seed=0, inputs=("t1ce",), target="ET")
#: Shorter training for the defenses that train a model, so the suite stays fast on a CPU.
FAST = {
    "loss-filter": {"epochs": 4, "warmup": 1},
    "feature-outlier": {"epochs": 3},
    "spectral-signatures": {"epochs": 3},
    "cross-modal": {"iterations": 40, "voxels": 5000},
}


def _defense(name: str, **params):
    defense = create_defense(name, **{**FAST.get(name, {}), **params})
    defense.bind(RunContext(**CONTEXT))
    return defense


def _blind(data: SliceSet, flags) -> SliceSet:
    return data.with_arrays(poisoned=flags)


def test_every_defense_is_covered():
    expected = {"mriqc", "spectral", "feature-outlier", "spectral-signatures", "loss-filter", "cross-modal"}
    assert expected <= set(QC_DEFENSES)


@pytest.fixture(scope="module")
def scored(request, toy_data):
    """Scores of each defense on the toy set, computed once per module."""
    cache: dict[str, tuple[dict[str, float], dict[str, float]]] = {}

    def get(name: str):
        if name not in cache:
            defense = _defense(name)
            trusted = _blind(toy_data["trusted"], ForbiddenFlags(len(toy_data["trusted"])))
            train = _blind(toy_data["train"], ForbiddenFlags(len(toy_data["train"])))
            defense.fit(trusted)
            scores = defense.score(train)
            cache[name] = (scores, defense.score(trusted))
        return cache[name]

    return get


@pytest.mark.parametrize("name", QC_DEFENSES)
def test_ranks_corrupted_cases_above_clean_ones(name, scored, toy_data):
    """On 16 cases, 6 with a visibly corrupted t1ce, the corrupted ones score highest (AUROC ≥ 0.85)."""
    scores, trusted_scores = scored(name)
    train = toy_data["train"]
    assert sorted(scores) == sorted(train.cases)
    assert all(math.isfinite(v) for v in scores.values())
    bad = set(train.poisoned_cases())
    cases = sorted(scores)
    auroc = roc_auc_score([c in bad for c in cases], [scores[c] for c in cases])
    assert auroc >= 0.85, f"{name}: AUROC {auroc:.3f} on visibly corrupted cases"
    assert set(trusted_scores) == set(toy_data["trusted"].cases)


@pytest.mark.parametrize("name", QC_DEFENSES)
def test_scores_do_not_depend_on_the_poisoned_flags(name, scored, toy_data):
    """ForbiddenFlags (used by `scored`) raises on any read; shuffled flags give identical scores too."""
    scores, _ = scored(name)
    rng = np.random.default_rng(0)
    train = toy_data["train"]
    shuffled = _blind(train, rng.permutation(np.asarray(train.poisoned)))
    defense = _defense(name)
    defense.fit(_blind(toy_data["trusted"], np.ones(len(toy_data["trusted"]), dtype=bool)))
    again = defense.score(shuffled)
    assert again.keys() == scores.keys()
    np.testing.assert_allclose([again[c] for c in scores], [scores[c] for c in scores], rtol=1e-5, atol=1e-8)


def test_forbidden_flags_catch_a_peeking_defense(toy_data):
    """The guard itself works: a defense that reads the flags fails."""
    train = _blind(toy_data["train"], ForbiddenFlags(len(toy_data["train"])))
    with pytest.raises(AssertionError, match="poisoned flags"):
        train.poisoned_cases()


SCORES = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0, "e": 1.0}


@pytest.mark.parametrize("name", QC_DEFENSES)
@pytest.mark.parametrize(
    "rule, trusted_scores, expected",
    [
        ({}, {"t1": 1.0, "t2": 3.5}, ["a", "b"]),  # no rule, trusted cases: above every trusted score
        ({}, None, []),  # no rule, no trusted cases: none above median 3 + 3 x 1.4826 x MAD 1
        ({"budget": 0.0}, None, []),
        ({"budget": 0.4}, None, ["a", "b"]),
        ({"budget": 0.5}, None, ["a", "b", "c"]),  # 2.5 cases rounds half up
        ({"budget": 1.0}, None, ["a", "b", "c", "d", "e"]),
        ({"quantile": 0.5}, {"t1": 1.0, "t2": 2.0, "t3": 3.0}, ["a", "b", "c"]),  # threshold 2, strictly above
        ({"quantile": 1.0}, {"t1": 1.0, "t2": 4.0}, ["a"]),  # threshold 4
    ],
)
def test_decision_rules_remove_the_right_cases(name, rule, trusted_scores, expected):
    defense = _defense(name, **rule)
    assert defense.decide(dict(SCORES), trusted_scores) == expected


#: ten clean-looking scores and two outliers: median 5.5, MAD 3 -> threshold 5.5 + k x 1.4826 x 3
OUTLYING = {**{f"c{i}": float(i) for i in range(10)}, "p1": 20.0, "p2": 40.0}


@pytest.mark.parametrize("name", QC_DEFENSES)
@pytest.mark.parametrize("mad_k, expected", [(None, ["p2", "p1"]), (3.5, ["p2"]), (0.5, ["p2", "p1", "c9", "c8"])])
def test_without_rule_or_trusted_cases_robust_outliers_are_removed(name, mad_k, expected):
    """Default k = 3: threshold 5.5 + 3 x 4.4478 = 18.84; k = 3.5: 21.07; k = 0.5: 7.72."""
    defense = _defense(name, **({} if mad_k is None else {"mad_k": mad_k}))
    assert defense.decide(dict(OUTLYING), None) == expected


def test_outlier_threshold_survives_a_majority_of_equal_scores():
    from benchmark.plugins import outlier_threshold

    # MAD is 0: the scale falls back to 1.2533 x mean absolute deviation (here 2.0 / 5), not 0
    assert outlier_threshold([1.0, 1.0, 1.0, 1.0, 3.0], 3.0) == pytest.approx(1.0 + 3.0 * 1.2533 * 0.4)
    assert outlier_threshold([2.0, 2.0, 2.0], 3.0) == 2.0  # all equal: nothing lies above
    assert outlier_threshold([], 3.0) == math.inf


@pytest.mark.parametrize("name", QC_DEFENSES)
def test_budget_and_quantile_together_are_refused(name):
    with pytest.raises(ConfigError, match="set either budget or quantile, not both"):
        create_defense(name, budget=0.2, quantile=0.5)


def test_the_identity_defense_stays_a_no_op():
    defense = create_defense("none")
    assert defense.decide(dict(OUTLYING), None) == []
    assert defense.decide(dict(SCORES), {"t": -1.0}) == []


@pytest.mark.parametrize("name", QC_DEFENSES)
def test_quantile_rule_without_trusted_scores_is_a_config_error(name):
    with pytest.raises(ConfigError, match="trusted"):
        _defense(name, quantile=0.9).decide(dict(SCORES), None)


@pytest.mark.parametrize("name", QC_DEFENSES)
def test_invalid_rule_parameters_are_rejected(name):
    with pytest.raises(ConfigError, match="budget"):
        create_defense(name, budget=1.5)
    with pytest.raises(ConfigError, match="unknown_knob|extra"):
        create_defense(name, unknown_knob=1)


@pytest.mark.parametrize("name", TRUSTED_DEFENSES)
def test_trusted_defense_refuses_to_fit_without_trusted_cases(name):
    with pytest.raises(ValueError, match="trusted"):
        _defense(name).fit(None)


def test_cross_modal_scores_trusted_cases_only_with_the_model_that_never_saw_them(toy_data):
    """Out-of-fold scoring: model k (fit without fold k) scores fold k's trusted cases and every untrusted case."""
    defense = _defense("cross-modal")
    defense.fit(toy_data["trusted"])
    seen: list[tuple[int, int]] = []

    class Probe:
        def __init__(self, k):
            self.k = k

        def predict(self, features):
            seen.append((self.k, len(features)))
            return np.zeros(len(features))

    defense.models = [Probe(k) for k in range(len(defense.models))]
    train = toy_data["train"]
    head = np.any(train.images != 0, axis=1)
    voxels = {case: int(head[train.case_ids == case].sum()) for case in train.cases}
    defense.residuals(train)
    for k in range(len(defense.models)):
        expected = sum(v for case, v in voxels.items() if defense.fold_of.get(case, k) == k)
        assert (k, expected) in seen
