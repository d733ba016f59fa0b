"""Contracts every registered plugin keeps, parametrised from the registries."""

from __future__ import annotations

import json
import re
from typing import Literal

import numpy as np
import pytest
from pydantic import Field

from benchmark import (
    Attack,
    DatasetSource,
    Defense,
    DefenseParams,
    Segmenter,
    SeedStreams,
    SliceSet,
    ZSCORE,
    register_attack,
    register_defense,
    register_segmenter,
    select_cases,
    validate_config,
)
from benchmark.catalog import REGISTRIES
from benchmark.cli import main
from benchmark.config import expand_cells
from benchmark.runner import run_cell
from plugin_scope import user_plugin_names



# every plugin a user could name: shipped, discovered through entry points, or imported
# by a user's module; not the test doubles other test modules register at collection
ALL = [(kind, name) for kind in REGISTRIES for name in user_plugin_names(kind)]
BASES = {"attacks": Attack, "defenses": Defense, "segmenters": Segmenter, "datasets": DatasetSource}
NEEDS_ROOT = {"brats", "decathlon", "nnunet"}  # real-data readers have no default folder


@pytest.mark.parametrize("kind, name", ALL)
def test_plugin_declares_documented_parameters(kind, name):
    cls = REGISTRIES[kind].get(name)
    assert issubclass(cls, BASES[kind])
    assert cls.summary(), f"{kind} '{name}' needs a one-line docstring summary"
    for field, info in cls.Params.model_fields.items():
        assert info.description, f"{kind} '{name}': parameter '{field}' has no description"


@pytest.mark.parametrize("kind, name", [(k, n) for k, n in ALL if n not in NEEDS_ROOT])
def test_plugin_builds_with_defaults(kind, name):
    plugin = REGISTRIES[kind].get(name)()
    assert plugin.params == plugin.Params()


def test_no_plugin_module_failed_to_load():
    for kind, registry in REGISTRIES.items():
        registry.discover()
        assert registry.load_errors == {}, f"{kind}: {registry.load_errors}"


def test_bench_list_prints_every_plugin(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for _, name in ALL:
        assert name in printed


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_bench_list_one_kind_with_pattern(kind, capsys):
    names = REGISTRIES[kind].names()
    pattern = names[0][:2] + "*"
    assert main(["list", kind, "--pattern", pattern]) == 0
    printed = capsys.readouterr().out
    matching = REGISTRIES[kind].names(pattern)
    assert names[0] in matching
    for name in matching:
        assert name in printed
    for name in set(names) - set(matching):
        if not any(name in other for other in matching):  # skip names contained in a shown one
            assert name not in printed


# --------------------------------------------------------------------------- defenses cannot cheat
CHEAT_ROUTES = ("suffix", "order", "cache", "fingerprint", "meta", "norm_masks", "seed")
#: the data set of the current test, which a cheating defense matches slices against
_DATA: dict[str, SliceSet] = {}
#: attack-side records a cheating defense might look up by the data fingerprint
_LEAKS: dict[str, list[str]] = {}
#: what each CheatingDefense.score call was handed
_SEEN: list[dict] = []


class MarkingAttack(Attack):
    """Poisons nothing visible: marks cases by id suffix, appends them last, lists them in meta and the cache."""

    def poison(self, train, rate, rng):
        chosen = select_cases(train, rate, rng)
        if not chosen:
            return train
        marked = train.subset(chosen)
        flags = np.ones(len(marked), dtype=bool)
        marked = marked.with_arrays(case_ids=np.char.add(marked.case_ids.astype(str), "~syn"), poisoned=flags)
        names = marked.cases
        clean = train.subset([case for case in train.cases if case not in set(chosen)])
        # unlike real cases, the marked ones claim an empty normalisation mask
        marked = marked.with_arrays(norm_masks=np.zeros_like(marked.norm_masks))
        out = SliceSet.concatenate([clean, marked])
        folder = self.context.cache_dir / "marking-attack"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{self.context.dataset_fingerprint}.json").write_text(json.dumps(names))
        _LEAKS[self.context.dataset_fingerprint] = names
        return out.with_arrays(meta={**out.meta, "marked_cases": names})


class CheatingDefense(Defense):
    """Scores cases by everything but their slices: id suffix, order, cache, fingerprint, meta."""

    class Params(DefenseParams):
        route: Literal["suffix", "order", "cache", "fingerprint", "meta", "norm_masks", "seed"] = Field(
            "suffix", description="the route tried"
        )

    def fit(self, trusted):
        self.trusted_ids = set(trusted.cases) if trusted is not None else set()

    def score(self, train):
        cases = train.cases
        cache = self.context.cache_dir
        _SEEN.append(
            {
                "ids": cases,
                "meta": dict(train.meta),
                "fingerprint": self.context.dataset_fingerprint,
                "cache": sorted(str(p) for p in cache.rglob("*")) if cache.exists() else [],
            }
        )
        route = self.params.route
        if route == "order":
            return {case: float(i) for i, case in enumerate(cases)}
        if route == "suffix":
            known = {case for case in cases if case.endswith("~syn")}
        elif route == "cache":
            known = {name for path in cache.rglob("*.json") for name in json.loads(path.read_text())}
        elif route == "fingerprint":
            known = set(_LEAKS.get(self.context.dataset_fingerprint, []))
        elif route == "norm_masks":
            masks = train.norm_masks
            known = set() if masks is None else {case for case in cases if not masks[train.case_ids == case].any()}
        elif route == "seed":
            # recover the real ids from the slices, then redraw the attack's case choice from the seed
            data = _DATA["data"]
            real = {case: _real_id(train.images[train.case_ids == case][0], data) for case in cases}
            pool = data.subset([real[case] for case in cases if case not in self.trusted_ids])
            chosen = set(select_cases(pool, 0.5, SeedStreams(self.context.seed).generator("poison")))
            known = {case for case in cases if real[case] in chosen}
        else:
            known = set(train.meta.get("marked_cases", []))
        return {case: float(case in known) for case in cases}


def _real_id(first_slice: np.ndarray, data: SliceSet) -> str:
    match = np.flatnonzero((data.images == first_slice).all(axis=(1, 2, 3)))
    return str(data.case_ids[match[0]])


class BlankSegmenter(Segmenter):
    """Predicts empty masks (the segmenter plays no part here)."""

    def fit(self, images, masks):
        pass

    def predict(self, images):
        return np.zeros((len(images), *images.shape[2:]), dtype=np.uint8)


@pytest.mark.parametrize("trusted", [0, 4])
@pytest.mark.parametrize("route", CHEAT_ROUTES)
def test_a_defense_learns_nothing_but_what_the_slices_show(route, trusted, tmp_path):
    """A defense that reads ids, order, cache, fingerprint or meta ranks invisible poison at chance.

    The attack changes no voxel, so the slices cannot tell; every other route is closed
    by the harness (opaque shuffled ids, no meta, no fingerprint, a private scratch folder
    instead of the shared cache): AUROC 0.5 ± 0.15 averaged over seeds.
    """
    register_attack("test-marking")(MarkingAttack)
    register_defense("test-cheat")(CheatingDefense)
    register_segmenter("test-blank")(BlankSegmenter)
    _SEEN.clear()
    rng = np.random.default_rng(0)
    cases, slices = 28, 2
    data = SliceSet.create(
        rng.normal(size=(cases * slices, 1, 8, 8)).astype(np.float32),
        rng.integers(0, 4, size=(cases * slices, 8, 8)).astype(np.uint8),
        [f"real{i:02d}" for i in range(cases) for _ in range(slices)],
        ("t1ce",),
        meta={"source": "test"},
        norm_masks=np.ones((cases * slices, 8, 8), dtype=bool),
        normalisation=ZSCORE,
    )
    _DATA["data"] = data
    config = validate_config(
        {
            "dataset": {"name": "synthetic-brats", "cases": cases},
            "task": {"inputs": ["t1ce"], "target": "ET"},
            "split": {"val_fraction": 0.15, "seed": 0, "trusted": trusted},
            "segmenters": [{"name": "test-blank"}],
            "attacks": [{"name": "test-marking", "rates": [0.5]}],
            "defenses": [{"name": "test-cheat", "route": route, "budget": 0.5}],
            "seeds": list(range(6)),
            "device": "cpu",
        }
    )
    aurocs = []
    for cell in expand_cells(config, "toy-fingerprint", "test"):
        record = run_cell(cell, data, fingerprint="toy-fingerprint", cache_dir=tmp_path / "cache")
        assert record.status == "finished", record.error
        assert record.defense_report["poisoned"] == (24 - trusted) // 2  # half of the attackable cases
        aurocs.append(record.defense_report["auroc"])
    assert 0.35 <= float(np.mean(aurocs)) <= 0.65, f"{route}: AUROC {np.mean(aurocs):.3f} over seeds {aurocs}"
    assert _SEEN
    for view in _SEEN:
        assert all(re.fullmatch(r"case-\d+", case) for case in view["ids"]), view["ids"][:3]
        assert view["meta"] == {} and view["fingerprint"] == "" and view["cache"] == []
