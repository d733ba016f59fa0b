"""``bench leaderboard verify``: a real tiny sweep, exported, added, re-run here and compared."""

from __future__ import annotations

import copy
import json

import pytest

from benchmark.cli import main
from leaderboard import Board
from leaderboard.verify import cell_sweep, choose_cells


def test_cell_sweep_round_trips_a_cell_config(bundle):
    from benchmark import validate_config

    cell = bundle["cells"][0]["config"]
    sweep = cell_sweep({**cell, "segmenter": {"name": "unet"}, "attack": {"name": "none"}, "defense": {"name": "none"}, "rate": 0.0})
    config = validate_config(sweep)
    assert config.seeds == [cell["seed"]] and config.attacks[0][1] == [0.0] and config.device == "cpu"
    assert config.executor.name == "local" and config.executor.threads is None
    assert validate_config(cell_sweep(cell, threads=3)).executor.threads == 3


def test_choose_cells_is_reproducible(bundle):
    from leaderboard.board import Entry

    entry = Entry("e", None, bundle, "", None)
    assert choose_cells(entry) == choose_cells(entry)
    assert len(choose_cells(entry, "all")) == 16
    assert choose_cells(entry, bundle["cells"][5]["key"][:6])[0]["key"] == bundle["cells"][5]["key"]
    with pytest.raises(Exception, match="no cell"):
        choose_cells(entry, "ffffffffff")


@pytest.mark.slow
def test_verify_marks_a_matching_entry_verified_and_a_doctored_one_not(tiny_config, write_config, tmp_path, capsys, helpers):
    import torch

    out, board, site = tmp_path / "out", tmp_path / "board", tmp_path / "site"
    tiny_config["executor"] = {"name": "local", "threads": 1}  # the verifier below runs with 2 by default
    assert main(["run", str(write_config(tiny_config)), "--out", str(out), "--quiet"]) == 0
    sub = tmp_path / "sub.json"
    assert main(["export", "--out", str(out), "--to", str(sub), "--name", "Honest"]) == 0
    assert main(["leaderboard", "add", str(sub), "--board", str(board)]) == 0
    bundle = json.loads(sub.read_text())
    entry_id = f"honest-{bundle['digest'][:12]}"

    # a doctored copy: missed voxels claimed as found, every metric, aggregate and the digest recomputed so it passes 'add'
    doctored = copy.deepcopy(bundle)
    doctored["submitter"]["name"] = "Doctored"
    for cell in doctored["cells"]:
        for case in cell["cases"]:
            case["tp"], case["fn"] = case["tp"] + case["fn"], 0
            helpers.recount(case)
    doctored = helpers.reseal(doctored, recompute_aggregates=True)
    assert main(["leaderboard", "add", str(helpers.dump(doctored, tmp_path / "doc.json")), "--board", str(board)]) == 0
    capsys.readouterr()

    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["leaderboard", "verify", entry_id, "--board", str(board)]) == 0
    finally:
        torch.set_num_threads(threads_before)
    assert "verified" in capsys.readouterr().out
    record = Board(board).get(entry_id).verification
    assert record["status"] == "verified" and record["cells"][0]["same_key"] and record["cells"][0]["max_abs_dice_diff"] <= 1e-3
    # the re-run recorded the submission's thread count, not the verifier's 2
    assert bundle["provenance"]["torch_threads"] == 1 and record["torch_threads"] == 1

    assert main(["leaderboard", "verify", f"doctored-{doctored['digest'][:12]}", "--board", str(board)]) == 1
    assert "mismatch" in capsys.readouterr().out
    record = Board(board).get(f"doctored-{doctored['digest'][:12]}").verification
    assert record["status"] == "mismatch" and record["cells"][0]["max_abs_diff"]["sensitivity"] > 1e-3

    assert main(["leaderboard", "build", "--board", str(board), "--out", str(site)]) == 0
    statuses = {e["name"]: e["status"] for e in json.loads((site / "leaderboard.json").read_text())["entries"]}
    assert statuses == {"Honest": "verified", "Doctored": "self-reported"}
