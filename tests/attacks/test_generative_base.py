"""`benchmark.GenerativeAttack` on its own: a least-squares 'model' written against the SDK only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest
from pydantic import Field, ValidationError

from benchmark import CaseNormalisation, ConfigError, GenerativeAttack, GenerativeParams, RunContext, SliceSet


class LinearParams(GenerativeParams):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"fast": {"ridge": 0.0}, "smooth": {"ridge": 10.0}}

    preset: Literal["fast", "smooth"] = "fast"
    ridge: float = Field(0.0, ge=0)


class LinearAttack(GenerativeAttack):
    """Target = sources · w + b, fitted by (ridge) least squares over the training slices."""

    Params = LinearParams
    artifact_kind = "linear"
    model_version = "test-1"
    trainings: ClassVar[int] = 0

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.coefficients: np.ndarray | None = None
        self.seen_rows = 0

    def train_model(self, sources: np.ndarray, targets: np.ndarray, folder: Path) -> dict[str, Any]:
        self.seen_rows = len(sources)
        x = np.concatenate([sources.transpose(0, 2, 3, 1).reshape(-1, sources.shape[1]), np.ones((sources[:, 0].size, 1))], axis=1)
        y = targets.reshape(-1)
        w = np.linalg.solve(x.T @ x + self.params.ridge * np.eye(x.shape[1]), x.T @ y)
        np.save(folder / "w.npy", w)
        return {"images_per_s": 1.0, "train_s": 0.5, "slices": len(sources)}

    def load_model(self, folder: Path) -> None:
        self.coefficients = np.load(folder / "w.npy")

    def alter_case(self, images, labels, channels, rng, normalisation: CaseNormalisation) -> np.ndarray:
        source = self.source_slices(np.asarray(images), channels)
        return np.einsum("skhw,k->shw", source, self.coefficients[:-1]) + self.coefficients[-1]


def _attack(cache: Path, seed: int = 0, **params: Any) -> LinearAttack:
    attack = LinearAttack(**{"source": ["t1", "ct"], "holdout_cases": 2, **params})
    attack.bind(RunContext(seed=seed, cache_dir=cache, dataset_fingerprint="toy"))
    return attack


def test_fit_trains_on_the_pool_but_its_held_out_cases_then_loads_from_the_cache(tmp_path, toy: SliceSet):
    before = LinearAttack.trainings
    first = _attack(tmp_path)
    first.fit(toy, np.random.default_rng(0))
    held = toy.cases[-2:]
    assert first.seen_rows == int((~np.isin(toy.case_ids, held)).sum())
    manifest = json.loads(next(tmp_path.glob("linear/*/manifest.json")).read_text())
    assert manifest["holdout"] == held and manifest["training_cases"] == len(toy.cases) - 2 and manifest["slices"] == first.seen_rows
    report = first.report()
    assert report["generator_cached"] is False and report["linear_train_s"] == 0.5
    assert np.isfinite([report["mae"], report["psnr"], report["ssim"]]).all()

    second = _attack(tmp_path, mode="add")  # add and replace share one model
    second.fit(toy, np.random.default_rng(1))
    assert second.generator_cached is True and second.seen_rows == 0 and LinearAttack.trainings == before + 1
    np.testing.assert_array_equal(second.coefficients, first.coefficients)
    assert second.report()["mae"] == report["mae"]


def test_the_key_follows_what_changes_the_model(tmp_path, toy):
    base = _attack(tmp_path).cache_key(toy)
    assert _attack(tmp_path, mode="add").cache_key(toy) == base
    assert _attack(tmp_path, preset="fast", ridge=0.0).cache_key(toy) == base  # a preset is the values it sets
    assert _attack(tmp_path, lambda_stealth=4.0).cache_key(toy) == base  # stealth off: its weight changes nothing
    others = {
        _attack(tmp_path, seed=1).cache_key(toy),
        _attack(tmp_path, preset="smooth").cache_key(toy),
        _attack(tmp_path, source="ct").cache_key(toy),
        _attack(tmp_path, stealth=True).cache_key(toy),
        _attack(tmp_path).cache_key(toy.subset(toy.cases[:-1])),
    }
    assert base not in others and len(others) == 5


def test_replace_and_add_poison_with_the_models_output(tmp_path, toy):
    attack = _attack(tmp_path)
    attack.fit(toy, np.random.default_rng(0))
    replaced = attack.poison(toy, 0.5, np.random.default_rng(3))
    chosen = sorted(set(replaced.case_ids[replaced.poisoned]))
    assert len(chosen) == 3 and len(replaced) == len(toy)
    target = toy.channel_index("t1ce")
    rows = np.isin(toy.case_ids, chosen)
    np.testing.assert_allclose(replaced.images[rows, target], attack.synthesise(toy.subset(chosen)), atol=1e-6)
    np.testing.assert_array_equal(replaced.images[~rows], toy.images[~rows])

    added = _attack(tmp_path, mode="add")
    added.fit(toy, np.random.default_rng(0))
    grown = added.poison(toy, 0.5, np.random.default_rng(3))
    assert len(grown) == len(toy) + rows.sum() and set(grown.case_ids[grown.poisoned]) == {f"{case}~syn" for case in chosen}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"source": ["t1", "t1"]}, "names a channel twice"),
        ({"source": "t1ce"}, "must be different channels"),
        ({"source": []}, "must name one channel"),
        ({"preset": "huge"}, "'fast' or 'smooth'"),
    ],
)
def test_shared_parameters_are_checked_once_for_every_generative_attack(params, message):
    with pytest.raises(ValidationError, match=message):
        LinearParams(**params)


def test_a_missing_source_channel_names_the_parameter_and_the_channels_there_are(tmp_path, toy):
    attack = _attack(tmp_path, source=["t1", "pet"])
    with pytest.raises(ConfigError, match=r"'source' parameter .*\['pet'\].*available channels"):
        attack.fit(toy, np.random.default_rng(0))


class _UnnamedVersion(LinearAttack):
    model_version = None


class _InheritedNames(LinearAttack):
    """Another model under its parent's names: it would load the parent's cached model."""

    def train_model(self, sources, targets, folder):
        return super().train_model(sources, targets, folder)


@pytest.mark.parametrize("unnamed", [_UnnamedVersion, _InheritedNames])
def test_a_subclass_that_does_not_name_its_own_model_is_refused(tmp_path, toy, unnamed):
    attack = unnamed(source="ct")
    attack.bind(RunContext(cache_dir=tmp_path, dataset_fingerprint="toy"))
    with pytest.raises(TypeError, match=f"{unnamed.__name__} must set artifact_kind and model_version"):
        attack.fit(toy, np.random.default_rng(0))
    assert not any(tmp_path.iterdir())


def test_a_subclass_that_does_not_name_its_model_is_refused_before_it_could_share_a_cached_one(tmp_path, toy):
    class Unnamed(LinearAttack):
        artifact_kind = None

    attack = Unnamed(source="ct")
    attack.bind(RunContext(cache_dir=tmp_path, dataset_fingerprint="toy"))
    with pytest.raises(TypeError, match="Unnamed must set artifact_kind and model_version"):
        attack.fit(toy, np.random.default_rng(0))
    assert not any(tmp_path.iterdir())
