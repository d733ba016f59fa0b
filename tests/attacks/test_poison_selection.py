"""Poison sets nest across rates, and a cell's seed splits into independent streams."""

from __future__ import annotations

import csv

import fault_plugins  # noqa: F401 - registers the test-threshold segmenter
import numpy as np
import pytest
from attack_toys import toy_sliceset

from benchmark import (
    ATTACKS,
    Attack,
    SEED_STREAMS,
    CaseAttack,
    ConfigError,
    Segmenter,
    SeedStreams,
    SliceSet,
    create_attack,
    poison_order,
    select_cases,
)
from benchmark.cli.main import main
from benchmark.config import expand_cells, validate_config
from benchmark.runner import run_cell

RATES = [0.0, 1 / 6, 2 / 6, 0.5, 4 / 6, 5 / 6, 1.0]


def cases_only(count: int) -> SliceSet:
    """A slice set of ``count`` one-slice cases (ids in shuffled order: selection must not depend on it)."""
    ids = [f"case{i:03d}" for i in np.random.default_rng(99).permutation(count)]
    return SliceSet.create(np.zeros((count, 1, 4, 4), np.float32), np.zeros((count, 4, 4), np.uint8), ids, ["t1ce"])


def poison_stream(seed: int) -> np.random.Generator:
    return SeedStreams(seed).generator("poison")


@pytest.mark.parametrize("count", [6, 30, 31])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7])
def test_selected_cases_nest_across_rates(count, seed):
    data = cases_only(count)
    picks = [set(select_cases(data, rate, poison_stream(seed))) for rate in RATES]
    for lower, higher in zip(picks, picks[1:]):
        assert lower <= higher
    assert [len(p) for p in picks] == [int(np.floor(r * count + 0.5 + 1e-9)) for r in RATES]
    order = poison_order(data, poison_stream(seed))
    assert sorted(order) == sorted(data.cases) and set(order[: len(picks[3])]) == picks[3]


def test_selection_depends_on_the_seed_not_the_slice_order():
    data = cases_only(30)
    reordered = data.subset(sorted(data.cases)[::-1])
    reordered = SliceSet.concatenate([reordered.subset([c]) for c in sorted(data.cases)[::-1]])
    assert select_cases(data, 0.5, poison_stream(4)) == select_cases(reordered, 0.5, poison_stream(4))
    assert len({tuple(select_cases(data, 0.5, poison_stream(s))) for s in range(6)}) > 1


def case_attacks() -> list[str]:
    """Case attacks that poison without fitting first (the generative ones train a model: tested with a stand-in below)."""
    ATTACKS.discover()
    return sorted(n for n in ATTACKS.names() if issubclass(ATTACKS.get(n), CaseAttack) and ATTACKS.get(n).fit is Attack.fit)


@pytest.mark.parametrize("name", case_attacks())
@pytest.mark.parametrize("seed", [0, 5])
def test_every_case_attack_adds_poison_as_the_rate_grows(name, seed):
    """The cases poisoned at a rate stay poisoned, and poisoned identically, at every higher rate."""
    toy = toy_sliceset(cases=6, slices=2, size=16)
    outs = [create_attack(name).poison(toy, rate, poison_stream(seed)) for rate in RATES]
    for lower, higher in zip(outs, outs[1:]):
        assert set(lower.poisoned_cases()) <= set(higher.poisoned_cases())
        for case in lower.poisoned_cases():
            rows = toy.case_ids == case
            np.testing.assert_array_equal(lower.images[rows], higher.images[rows])
            np.testing.assert_array_equal(lower.labels[rows], higher.labels[rows])


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_gan_synthetic_follows_the_same_order(mode):
    toy = toy_sliceset(cases=6, slices=2, size=16)
    attack = create_attack("gan-synthetic", mode=mode)
    t = toy.channel_index("t1ce")
    attack.alter_case = lambda images, labels, channels, rng, normalisation: images[:, t] * 0.5  # a generator stand-in
    picks = []
    for rate in RATES:
        out = attack.poison(toy, rate, poison_stream(3))
        picks.append({case.removesuffix("~syn") for case in out.poisoned_cases()})
        assert picks[-1] == set(select_cases(toy, rate, poison_stream(3)))
    for lower, higher in zip(picks, picks[1:]):
        assert lower <= higher


def test_streams_are_independent_and_named():
    base = SeedStreams(3)
    assert list(SEED_STREAMS) == ["poison", "generator", "init", "batches"]
    # fixed indices: stream i is the i-th child of SeedSequence(seed).spawn
    children = np.random.SeedSequence(3).spawn(len(SEED_STREAMS))
    for name, index in SEED_STREAMS.items():
        assert np.array_equal(base.sequence(name).generate_state(4), children[index].generate_state(4))
    assert len({base.integer(name) for name in SEED_STREAMS}) == len(SEED_STREAMS)
    # moving the initialisation keeps the poisoned cases, and the other way round
    data = cases_only(30)
    moved_init = SeedStreams(3, {"init": 11})
    assert moved_init.integer("init") != base.integer("init")
    assert moved_init.integer("generator") == base.integer("generator") and moved_init.integer("batches") == base.integer("batches")
    for rate in RATES:
        assert select_cases(data, rate, moved_init.generator("poison")) == select_cases(data, rate, base.generator("poison"))
    held = SeedStreams(8, {"poison": 3})
    assert select_cases(data, 0.5, held.generator("poison")) == select_cases(data, 0.5, base.generator("poison"))
    assert held.integer("init") == SeedStreams(8).integer("init") != base.integer("init")


@pytest.mark.parametrize("overrides", [{"shuffle": 1}, {"init": -1}, {"init": 1.5}, {"init": True}])
def test_bad_stream_overrides_are_config_errors(overrides):
    with pytest.raises(ConfigError, match="seed stream"):
        SeedStreams(0, overrides)


seen_seeds: list[int] = []


class SeedRecorder(Segmenter):
    """Remembers the seed of its context and predicts nothing."""

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        seen_seeds.append(self.context.seed)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.zeros((len(images), *images.shape[2:]), np.uint8)


def test_runner_draws_each_stream_from_the_cell_seed(tmp_path):
    from benchmark.catalog import SEGMENTERS

    SEGMENTERS.add("test-seed-recorder", SeedRecorder)
    data = toy_sliceset(cases=12, slices=1, size=16)
    config = validate_config({
        "dataset": {"name": "synthetic-brats", "cases": 12, "slices": 1, "size": 32},
        "split": {"val_fraction": 0.25, "seed": 0},
        "segmenters": [{"name": "test-seed-recorder"}],
        "attacks": [{"name": "noise", "rates": RATES[1:]}],
        "seeds": [0, 4],
        "device": "cpu",
    })
    seen_seeds.clear()
    reports: dict[int, list[list[str]]] = {}
    for cell in expand_cells(config, "toy", "test"):
        record = run_cell(cell, data, "cpu", "toy", cache_dir=tmp_path)
        assert record.status == "finished", record.error
        ids = record.attack_report["poisoned_case_ids"]
        assert len(ids) == record.attack_report["poisoned_cases"]
        reports.setdefault(cell.seed, []).append(ids)
        assert seen_seeds[-1] == SeedStreams(cell.seed).integer("batches")
    for seed, picks in reports.items():
        for lower, higher in zip(picks, picks[1:]):
            assert set(lower) <= set(higher)
    assert reports[0] != reports[4]


def test_attacks_csv_lists_the_nested_case_ids(tmp_path, write_config, tiny_config):
    tiny_config["dataset"] = {"name": "synthetic-brats", "cases": 9, "slices": 1, "size": 32, "seed": 0}
    tiny_config["split"] = {"val_fraction": 0.34, "seed": 0}
    tiny_config["segmenters"] = [{"name": "test-threshold"}]
    tiny_config["attacks"] = [{"name": "label-erosion", "rates": [1 / 6, 0.5, 5 / 6]}]
    tiny_config["seeds"] = [0, 1]
    out = tmp_path / "out"
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 0
    with open(out / "attacks.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    by_seed: dict[str, list[tuple[float, set[str]]]] = {}
    for row in rows:
        ids = set(filter(None, row["poisoned_case_ids"].split(";")))
        assert len(ids) == int(float(row["poisoned_cases"]))
        by_seed.setdefault(row["seed"], []).append((float(row["rate"]), ids))
    for picks in by_seed.values():
        picks.sort(key=lambda pick: pick[0])
        for (_, lower), (_, higher) in zip(picks, picks[1:]):
            assert lower <= higher and len(lower) < len(higher)
