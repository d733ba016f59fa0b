"""What the core asks of plugins through their base classes, and the SDK / tools split of the public API."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import benchmark
from benchmark import (
    ZSCORE,
    Defense,
    DefenseParams,
    Segmenter,
    SliceSet,
    create_attack,
    create_dataset,
    create_defense,
    register_defense,
    register_segmenter,
    validate_config,
)
from benchmark import sdk, tools
from benchmark.cli import main
from benchmark.config import expand_cells
from benchmark.figures import original_case
from benchmark.runner import run_cell
from benchmark.sliceset import meta_from_json

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the public API
def test_sdk_and_tools_split_the_public_api():
    assert not set(sdk.__all__) & set(tools.__all__)
    assert sorted(benchmark.__all__) == sorted([*sdk.__all__, *tools.__all__])
    for name in sdk.__all__:
        assert getattr(benchmark, name) is getattr(sdk, name), name
    for name in tools.__all__:
        assert getattr(benchmark, name) is getattr(tools, name), name
    with pytest.raises(AttributeError):
        benchmark.no_such_name  # noqa: B018


def test_plugins_import_the_sdk_only():
    """Shipped plugins import SDK names from ``benchmark`` and no harness module directly."""
    wrong = []
    for folder in ("attacks", "defenses", "baselines"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("benchmark"):
                    names = [alias.name for alias in node.names]
                    if node.module != "benchmark" or set(names) - set(sdk.__all__):
                        wrong.append((path.relative_to(REPO).as_posix(), node.module, names))
    assert wrong == []


# --------------------------------------------------------------------------- channels named by the config
@pytest.mark.parametrize(
    "override, key",
    [
        ({"task": {"inputs": ["t1ce", "t1cd"], "target": "ET"}}, "task.inputs[1]: channel 't1cd'"),
        ({"attacks": [{"name": "noise", "target": "T1ce", "rates": [0.5]}]}, "attacks[0].target: channel 'T1ce'"),
        ({"attacks": [{"name": "modality-swap", "source": "pd", "rates": [0.5]}]}, "attacks[0].source: channel 'pd'"),
        ({"attacks": [{"name": "gan-synthetic", "source": ["t1", "t3"], "rates": [0.5]}]}, "attacks[0].source: channel 't3'"),
        ({"defenses": [{"name": "mriqc", "channels": ["flair", "dwi"]}]}, "defenses[0].channels: channel 'dwi'"),
        ({"defenses": [{"name": "cross-modal", "target_channel": "adc"}]}, "defenses[0].target_channel: channel 'adc'"),
    ],
)
def test_a_channel_typo_is_exit_2_from_validate_naming_the_key_and_the_channels(override, key, tiny_config, write_config, capsys):
    tiny_config["split"]["trusted"] = 2
    tiny_config.update(override)
    assert main(["validate", str(write_config(tiny_config))]) == 2
    err = capsys.readouterr().err
    assert key in err
    assert "available channels: t1, t1ce, t2, flair, ct" in err


def test_channels_the_data_set_has_are_valid(tiny_config, write_config, capsys):
    tiny_config["split"]["trusted"] = 2
    tiny_config["task"]["inputs"] = ["t1", "flair"]
    tiny_config["attacks"] = [{"name": "modality-swap", "source": "t2", "target": "flair", "rates": [0.5]}]
    tiny_config["defenses"] = [{"name": "mriqc", "channels": ["t1", "ct"]}, {"name": "spectral"}]
    assert main(["validate", str(write_config(tiny_config))]) == 0, capsys.readouterr().err


def test_channels_wait_for_the_data_when_the_data_set_cannot_tell(tmp_path):
    """A reader whose folder is not there yet declares no channels: validation leaves the names to loading."""
    assert create_dataset("brats", root=str(tmp_path / "absent")).channels() is None
    config = validate_config(
        {"dataset": {"name": "brats", "root": str(tmp_path / "absent")}, "task": {"inputs": ["anything"]},
         "segmenters": [{"name": "unet"}]}
    )
    assert config.task.inputs == ["anything"]


def test_plugins_declare_the_channels_they_name():
    assert create_attack("modality-swap", source="t2").named_channels() == {"target": ("t1ce",), "source": ("t2",)}
    assert create_attack("gan-synthetic", source=["t1", "t2"]).named_channels() == {"target": ("t1ce",), "source": ("t1", "t2")}
    assert create_attack("label-erosion").named_channels() == {}
    assert create_defense("mriqc").named_channels() == {}  # None: the task's inputs
    assert create_defense("cross-modal", sources=["t1", "t2"]).named_channels() == {"sources": ("t1", "t2")}


def test_a_reader_protects_its_folder(tmp_path):
    assert create_dataset("brats", root=str(tmp_path)).protected_folders() == (tmp_path,)
    assert create_dataset("synthetic-brats").protected_folders() == ()


# --------------------------------------------------------------------------- defenses score once
SCORED: list[list[str]] = []


class CountingDefense(Defense):
    """Scores by mean intensity and records every call."""

    class Params(DefenseParams):
        pass

    def fit(self, trusted):
        self.trusted = sorted(trusted.cases) if trusted is not None else []

    def score(self, train):
        SCORED.append(sorted(train.cases))
        return {case: float(np.mean(train.images[train.case_ids == case])) for case in train.cases}


class BlankSegmenter(Segmenter):
    """Predicts empty masks."""

    def fit(self, images, masks):
        pass

    def predict(self, images):
        return np.zeros((len(images), *images.shape[2:]), dtype=np.uint8)


@pytest.mark.parametrize("trusted", [0, 3])
def test_trusted_cases_are_scored_once_with_the_training_set(trusted, tmp_path):
    register_defense("test-counting")(CountingDefense)
    register_segmenter("test-blank-sdk")(BlankSegmenter)
    SCORED.clear()
    rng = np.random.default_rng(0)
    cases, slices = 12, 2
    data = SliceSet.create(
        rng.normal(size=(cases * slices, 1, 8, 8)).astype(np.float32), np.zeros((cases * slices, 8, 8), np.uint8),
        [f"c{i:02d}" for i in range(cases) for _ in range(slices)], ("t1ce",),
        norm_masks=np.ones((cases * slices, 8, 8), bool), normalisation=ZSCORE,
    )
    config = validate_config(
        {"dataset": {"name": "synthetic-brats", "cases": cases}, "task": {"inputs": ["t1ce"]},
         "split": {"val_fraction": 0.25, "seed": 0, "trusted": trusted}, "segmenters": [{"name": "test-blank-sdk"}],
         "attacks": [{"name": "noise", "rates": [0.5]}], "defenses": [{"name": "test-counting", "quantile": 1.0} if trusted
                                                                       else {"name": "test-counting", "budget": 0.25}],
         "device": "cpu"}
    )
    (cell,) = expand_cells(config, "toy", "test")
    record = run_cell(cell, data, fingerprint="toy", cache_dir=tmp_path)
    assert record.status == "finished", record.error
    assert len(SCORED) == 1, SCORED
    assert len(SCORED[0]) == 9  # every training case, the trusted ones among them


# --------------------------------------------------------------------------- what readers and figures no longer know
def test_cached_meta_gets_integer_keys_back_only_where_declared():
    meta = {"source_labels": {0: 0, 1: 1, 3: 4}, "convention": "brats2021", "names": {"a": 1}}
    restored = meta_from_json(json.loads(json.dumps(meta)))
    assert restored == meta
    assert list(restored["source_labels"]) == [0, 1, 3]


def test_a_plugins_digit_keyed_map_in_meta_keeps_its_text_keys():
    meta = {"source_labels": {0: 0, 2: 1}, "case_sites": {"001": "a", "002": {"7": "b"}}, "any_map": {"nested": {"2": 7}}}
    restored = meta_from_json(json.loads(json.dumps(meta)))
    assert restored["case_sites"] == {"001": "a", "002": {"7": "b"}}  # never 1 and 2
    assert restored["any_map"] == {"nested": {"2": 7}}
    assert restored["source_labels"] == {0: 0, 2: 1}
    assert meta_from_json({"labels": {"1": 2}}, int_keyed={"labels"}) == {"labels": {1: 2}}


def test_an_added_copy_is_matched_to_its_case_by_content():
    rng = np.random.default_rng(1)
    clean = SliceSet.create(
        rng.normal(size=(8, 2, 6, 6)).astype(np.float32), rng.integers(0, 4, size=(8, 6, 6)).astype(np.uint8),
        [f"c{i}" for i in range(4) for _ in range(2)], ("ct", "t1ce"),
    )
    copy = clean.subset(["c2"])
    images = copy.images.copy()
    images[:, 1] = 0.0  # a new target channel; the source channel and the masks stay
    added = copy.with_arrays(images=images, case_ids=np.array(["copy-17"] * 2), poisoned=np.ones(2, bool))
    poisoned = SliceSet.concatenate([clean, added])
    assert original_case("copy-17", clean, poisoned) == "c2"
    assert original_case("c1", clean, poisoned) == "c1"
    stranger = added.with_arrays(images=rng.normal(size=(2, 2, 6, 6)).astype(np.float32), labels=np.full((2, 6, 6), 9, np.uint8))
    assert original_case("copy-17", clean, SliceSet.concatenate([clean, stranger])) is None


def test_no_public_name_is_also_a_submodule_of_the_package():
    """A submodule named like a public function would replace it on ``benchmark`` once imported."""
    import pkgutil

    submodules = {module.name for module in pkgutil.iter_modules(benchmark.__path__)}
    assert set(sdk.__all__ + tools.__all__) & submodules <= {"environment"}  # bound eagerly in benchmark/__init__.py
