"""A bundle holds one study: export picks one (the last run by default) and validation checks the cells agree."""

from __future__ import annotations

import copy

from benchmark import ResultStore
from benchmark.cli.main import main
from leaderboard import check_bundle, export_bundle


def _second_study(results_dir) -> tuple[str, list[str]]:
    with ResultStore(results_dir / "results.sqlite") as store:
        derived = store.studies().iloc[0]["study"]
        keys = sorted(store.finished_keys())[:2]
        store.record_study("feedfacefeedface", {"dataset_fingerprint": "fp", "package_version": "0.1.0"}, keys, "a smaller study",
                           at=2_000_000_000.0)
    return derived, keys


def test_export_covers_the_last_study_unless_told(results_dir, tmp_path, capsys):
    derived, keys = _second_study(results_dir)
    last = export_bundle(results_dir)
    assert sorted(c["key"] for c in last["cells"]) == keys and last["provenance"]["study"] == "feedfacefeedface"
    other = export_bundle(results_dir, study=derived[:6])
    assert len(other["cells"]) > len(keys) and other["provenance"]["study"] == derived
    assert check_bundle(last) == [] and check_bundle(other) == []

    assert main(["export", "--out", str(results_dir), "--to", str(tmp_path / "b.json"), "--study", "feedface", "--study", derived]) == 2
    err = capsys.readouterr().err
    assert "one study" in err and "feedfacefeedface" in err and derived in err
    assert not (tmp_path / "b.json").exists()


def _resealed(bundle):
    from leaderboard import compute_digest

    bundle["digest"] = compute_digest(bundle)
    return bundle


def test_validation_refuses_cells_of_different_studies(bundle):
    mixed = copy.deepcopy(bundle)
    mixed["cells"][1]["config"]["split"] = {**mixed["cells"][1]["config"]["split"], "seed": 7}
    reasons = check_bundle(_resealed(mixed))
    assert any(r.startswith("study: cells/1/config/split differs") for r in reasons)

    upgraded = copy.deepcopy(bundle)
    upgraded["cells"][2]["package_version"] = "9.9.9"
    reasons = check_bundle(_resealed(upgraded))
    assert any("cells/2/package_version is '9.9.9'" in r for r in reasons)
