"""``bench export``: bundle content, canonical digest, schema, and the export → add → build round trip."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from benchmark import METRICS, aggregate
from benchmark.cli import main
from leaderboard import Board, canonical_json, compute_digest, export_bundle, load_schema
from leaderboard.bundle import finite_or_none


def test_canonical_json_rules():
    value = {"b": [1.0, float("nan"), float("inf")], "a": {"é": "ü", "z": 1}}
    assert canonical_json(value) == '{"a":{"z":1,"é":"ü"},"b":[1.0,null,null]}'.encode("utf-8")
    assert finite_or_none(np.float32(0.5)) == 0.5 and finite_or_none(np.int64(3)) == 3


def test_digest_is_sha256_of_canonical_bundle_without_digest(bundle):
    body = {k: v for k, v in bundle.items() if k != "digest"}
    expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")).hexdigest()
    assert bundle["digest"] == expected == compute_digest(bundle)
    assert compute_digest({**bundle, "digest": "whatever"}) == expected


def test_bundle_content(bundle):
    assert not list(Draft202012Validator(load_schema()).iter_errors(bundle))
    assert bundle["schema_version"] == 1
    assert bundle["submitter"] == {"name": "Jane Doe", "affiliation": "Example Lab", "link": "https://example.org"}
    assert len(bundle["cells"]) == 16  # the failed cell is not exported
    assert bundle["provenance"]["failed_cells"] == 1
    assert bundle["provenance"]["cell_keys"] == [c["key"] for c in bundle["cells"]]
    assert bundle["provenance"]["torch"] == "2.3.0" and bundle["provenance"]["device"] == "cpu"
    assert isinstance(bundle["provenance"]["dataset_fingerprint"], str)  # synthetic-brats is registered
    config = bundle["config"]
    assert [a["name"] for a in config["attacks"]] == ["none", "noise"]
    assert config["attacks"][1]["rates"] == [0.25, 0.5, 1.0] and config["seeds"] == [0, 1]
    cell = next(c for c in bundle["cells"] if c["config"]["rate"] == 0.5 and c["config"]["defense"]["name"] == "none")
    for metric in METRICS:
        agg = aggregate(np.array([case[metric] for case in cell["cases"]]))
        assert cell["aggregates"][metric] == {"mean": agg.mean, "std": agg.std, "ci_low": agg.ci_low, "ci_high": agg.ci_high, "n": 8}
    assert cell["attack_report"]["ssim"] is None and cell["attack_report"]["psnr"] == 21.5  # NaN mapped to null
    defended = next(c for c in bundle["cells"] if c["config"]["defense"]["name"] == "spectral" and c["config"]["rate"] == 1.0)
    assert defended["defense_report"]["auroc"] == pytest.approx(0.9)
    assert "NaN" not in json.dumps(bundle)


def test_export_without_database_exits_2(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "nothing"), "--to", str(tmp_path / "s.json")]) == 2
    assert "no results database" in capsys.readouterr().err


def test_export_add_build_round_trip(results_dir, tmp_path, capsys):
    sub, board, site = tmp_path / "sub.json", tmp_path / "board", tmp_path / "site"
    assert main(["export", "--out", str(results_dir), "--to", str(sub), "--name", "Jane Doe", "--affiliation", "Lab", "--link", "https://x.org"]) == 0
    bundle = json.loads(sub.read_text())
    assert bundle["digest"] == compute_digest(bundle)
    assert main(["leaderboard", "add", str(sub), "--board", str(board)]) == 0
    files = [f for f in board.glob("*.json") if f.name != "index.json"]
    assert [f.name for f in files] == [f"jane-doe-{bundle['digest'][:12]}.json"]
    assert json.loads(files[0].read_text())["submission"] == bundle  # stored unchanged
    capsys.readouterr()
    assert main(["leaderboard", "build", "--board", str(board), "--out", str(site)]) == 0
    assert "1 entry" in capsys.readouterr().out

    for name in ("index.html", "leaderboard.md", "leaderboard.json", "leaderboard.csv", f"entries/jane-doe-{bundle['digest'][:12]}.html"):
        assert (site / name).is_file(), name
    pngs = sorted((site / "figures").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((site / "leaderboard.json").read_text())
    assert [e["status"] for e in data["entries"]] == ["self-reported"]
    (attack,) = data["attacks"]
    assert attack["attack_name"] == "noise" and [p["rate"] for p in attack["points"]] == [0.0, 0.25, 0.5, 1.0]
    # the clean Dice is the seed-averaged mean of the clean cells; drops grow with the rate
    assert attack["clean_dice"] == pytest.approx(np.mean([c["aggregates"]["dice"]["mean"] for c in bundle["cells"]
                                                          if c["config"]["rate"] == 0 and c["config"]["defense"]["name"] == "none"]), abs=1e-6)
    drops = [p["drop"] for p in attack["points"][1:]]
    assert drops == sorted(drops) and drops[-1] == pytest.approx(0.30, abs=1e-3)
    # two seeds say nothing about training noise: no p-value, no star, the rows say so
    assert all(p["p_value"] is None and not p["significant"] and p["seeds_note"] == "2 seeds" for p in attack["points"][1:])
    assert 0 < attack["rate_at_5pct"] < 0.5
    (defense,) = data["defenses"]
    assert defense["auroc"] == pytest.approx(np.mean([0.825, 0.85, 0.9]), abs=1e-6)
    assert defense["clean_cost"] == pytest.approx(0.01, abs=1e-6)
    assert [p["rate"] for p in defense["points"]] == [0.25, 0.5, 1.0]
    assert [p["recovered"] for p in defense["points"]] == pytest.approx([0.015, 0.05, 0.15], abs=1e-6)
    # two seeds cannot tell these damages from training noise (t with 1 degree of freedom): no recovery, with the reason
    assert all(p["recovery"] is None and "not above the detectable difference" in p["recovery_note"] for p in defense["points"])
    assert defense["mean_recovery"] is None
    (segmenter,) = data["segmenters"]
    assert segmenter["drops"][attack["attack"]] == pytest.approx(0.10, abs=1e-3)

    with (site / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8  # (1 clean + 3 rates) × (none, spectral), seeds pooled
    assert {r["status"] for r in rows} == {"self-reported"}
    markdown = (site / "leaderboard.md").read_text()
    assert "## Attacks" in markdown and "| Jane Doe | self-reported | unet" in markdown

    # verified entries are labelled so after a rebuild
    entry = Board(board).entries()[0]
    Board(board).record_verification(entry, {"status": "verified", "summary": "1/1 re-run cell(s) matched"})
    assert main(["leaderboard", "build", "--board", str(board), "--out", str(site)]) == 0
    assert json.loads((site / "leaderboard.json").read_text())["entries"][0]["status"] == "verified"
    assert 'class="badge verified">verified<' in (site / "index.html").read_text()


def test_build_empty_board(tmp_path):
    (tmp_path / "board").mkdir()
    assert main(["leaderboard", "build", "--board", str(tmp_path / "board"), "--out", str(tmp_path / "site")]) == 0
    assert "No entries yet." in (tmp_path / "site" / "index.html").read_text()


def test_no_nan_anywhere_in_outputs(results_dir, tmp_path):
    bundle = export_bundle(results_dir)
    assert all(math.isfinite(v) for c in bundle["cells"] for case in c["cases"] for k, v in case.items() if k in METRICS)


def test_lesion_wise_metrics_are_exported_only_where_a_cell_measured_them(results_dir):
    import sqlite3

    plain = export_bundle(results_dir, {"name": "Jane Doe", "affiliation": "", "link": ""})
    assert all("lesion_dice" not in case and "lesion_hd95" not in case for cell in plain["cells"] for case in cell["cases"])
    assert all("lesion_dice" not in cell["aggregates"] for cell in plain["cells"])  # older boards read it unchanged
    measured_key = plain["cells"][0]["key"]
    with sqlite3.connect(results_dir / "results.sqlite") as db:
        db.execute("UPDATE case_metrics SET lesion_dice = 0.5 + 0.01 * rowid % 7, lesion_hd95 = 3.0 WHERE cell_key = ?", (measured_key,))
    bundle = export_bundle(results_dir, {"name": "Jane Doe", "affiliation": "", "link": ""})
    assert not list(Draft202012Validator(load_schema()).iter_errors(bundle))
    cell = next(c for c in bundle["cells"] if c["key"] == measured_key)
    values = [case["lesion_dice"] for case in cell["cases"]]
    assert all(isinstance(v, float) for v in values) and cell["aggregates"]["lesion_hd95"]["mean"] == 3.0
    assert cell["aggregates"]["lesion_dice"]["mean"] == pytest.approx(aggregate(np.array(values)).mean)
    others = [c for c in bundle["cells"] if c["key"] != measured_key]
    assert all("lesion_dice" not in case for c in others for case in c["cases"])
