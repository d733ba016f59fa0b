"""Forged results: metrics that do not follow from the counts, detection figures out of range, near-duplicates."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from benchmark import METRICS, ResultStore
from benchmark.cli import main
from leaderboard import Board, SubmissionError
from leaderboard.validate import results_fingerprint
from leaderboard.verify import compare_cases, verify_entry


def _refusals(bundle, helpers, tmp_path, board=None):
    board = Board(board or tmp_path / "board")
    with pytest.raises(SubmissionError) as info:
        board.add(helpers.dump(bundle, tmp_path / "forged.json"))
    return info.value.reasons


def test_forged_accuracy_and_sensitivity_are_refused(bundle, helpers, tmp_path):
    forged = copy.deepcopy(bundle)
    for case in forged["cells"][4]["cases"]:
        case["accuracy"] = min(1.0, case["accuracy"] + 0.001)
        case["sensitivity"] = min(1.0, case["sensitivity"] + 0.05)
    reasons = _refusals(helpers.reseal(forged, recompute_aggregates=True), helpers, tmp_path)
    assert {r.split(":")[0] for r in reasons} == {"counts"}
    assert any(r.startswith("counts: cells/4/cases/0/accuracy is") and "tp=" in r for r in reasons)
    assert any("/sensitivity is" in r for r in reasons)
    assert reasons[-1].startswith("counts: 6 more per-case metric(s)")  # 16 problems, 10 listed


@pytest.mark.parametrize("metric", METRICS)
def test_each_metric_changed_with_the_counts_left_alone_is_refused(bundle, helpers, tmp_path, metric):
    forged = copy.deepcopy(bundle)
    case = forged["cells"][1]["cases"][3]
    case[metric] = case[metric] - 1e-6
    reasons = _refusals(helpers.reseal(forged, recompute_aggregates=True), helpers, tmp_path)
    assert reasons == [reasons[0]] and reasons[0].startswith(f"counts: cells/1/cases/3/{metric} is")


def test_counts_changed_with_every_metric_recomputed_are_accepted(bundle, helpers, tmp_path):
    honest = copy.deepcopy(bundle)
    case = honest["cells"][0]["cases"][0]
    case["fn"] += 1000
    helpers.recount(case)
    Board(tmp_path / "board").add(helpers.dump(helpers.reseal(honest, recompute_aggregates=True), tmp_path / "ok.json"))


def test_empty_region_conventions_are_those_of_benchmark_metrics(bundle, helpers, tmp_path):
    b = copy.deepcopy(bundle)
    case = b["cells"][0]["cases"][0]
    case.update(tp=0, fp=0, fn=0, tn=5000)  # nothing to find, nothing predicted: every metric is 1
    case.update({m: 1.0 for m in METRICS})
    Board(tmp_path / "board").add(helpers.dump(helpers.reseal(b, recompute_aggregates=True), tmp_path / "ok.json"))
    case["dice"] = case["jaccard"] = 0.0  # the other convention is refused
    reasons = _refusals(helpers.reseal(b, recompute_aggregates=True), helpers, tmp_path, board=tmp_path / "board2")
    assert {r.split("/")[-1].split(" ")[0] for r in reasons} == {"dice", "jaccard"}


@pytest.mark.parametrize(
    "field, value", [("auroc", 7.5), ("ap", -3.0), ("precision", 1.5), ("recall", "high"), ("f1", True), ("removed_fraction", -0.1)]
)
def test_detection_figures_out_of_range_are_refused(bundle, helpers, tmp_path, field, value):
    forged = copy.deepcopy(bundle)
    defended = next(c for c in forged["cells"] if c["defense_report"] and "auroc" in c["defense_report"])
    defended["defense_report"][field] = value
    index = forged["cells"].index(defended)
    reasons = _refusals(helpers.reseal(forged), helpers, tmp_path)
    assert reasons == [f"range: cells/{index}/defense_report/{field}: {value!r} is not a number in [0, 1] (or null)."]


def test_near_duplicates_are_duplicates(bundle, helpers, tmp_path, capsys):
    board = tmp_path / "board"
    assert main(["leaderboard", "add", str(helpers.dump(bundle, tmp_path / "sub.json")), "--board", str(board)]) == 0
    nudged = copy.deepcopy(bundle)
    nudged["cells"][2]["cases"][1]["dice"] += 1e-15
    nudged["submitter"]["name"] = "Nudged"
    renamed = copy.deepcopy(bundle)
    renamed["cells"][5]["key"] = "0123456789abcdef0123"
    renamed["provenance"]["cell_keys"] = [c["key"] for c in renamed["cells"]]
    shuffled = copy.deepcopy(bundle)
    shuffled["cells"].reverse()
    for cell in shuffled["cells"]:
        cell["cases"].reverse()
    for name, copycat in [("nudged", nudged), ("renamed", renamed), ("shuffled", shuffled)]:
        resealed = helpers.reseal(copycat, recompute_aggregates=True)
        assert results_fingerprint(resealed) == results_fingerprint(bundle), name
        assert main(["leaderboard", "add", str(helpers.dump(resealed, tmp_path / f"{name}.json")), "--board", str(board)]) == 2
        err = capsys.readouterr().err
        assert "duplicate: the same results" in err and "counts:" not in err, (name, err)
    assert len(Board(board).entries()) == 1 and len(list(board.glob("*.json"))) == 2  # the entry and the index


def test_compare_cases_reports_every_metric_and_the_counts(bundle):
    cases = bundle["cells"][0]["cases"]
    same = compare_cases(cases, copy.deepcopy(cases))
    assert same["same_cases"] and all(v == 0 for v in same["max_abs_diff"].values())
    rerun = copy.deepcopy(cases)
    rerun[2]["accuracy"] -= 0.01
    rerun[3]["tn"] -= 1000
    diffs = compare_cases(cases, rerun)["max_abs_diff"]
    assert diffs["dice"] == 0 and diffs["accuracy"] == pytest.approx(0.01)
    assert diffs["counts"] == pytest.approx(1000 / (sum(rerun[3][k] for k in ("tp", "fp", "fn"))))
    assert not compare_cases(cases, rerun[:-1])["same_cases"]


def _fake_rerun(monkeypatch, helpers, bundle, spoil):
    """Replace the re-run by one that stores the submitted cases, changed by ``spoil``."""
    import leaderboard.verify as verify

    def run_sweep(config, out, quiet):
        import pandas as pd

        seed = config.seeds[0]
        cell = next(c for c in bundle["cells"] if c["config"]["seed"] == seed and c["config"]["rate"] == config.attacks[0][1][0]
                    and c["config"]["defense"]["name"] == config.defenses[0].name and c["config"]["attack"]["name"] == config.attacks[0][0].name)
        cases = spoil(copy.deepcopy(cell["cases"]))
        frame = pd.DataFrame(cases).set_index("case")
        record = helpers.record(cell["key"], cell["config"]["attack"], cell["config"]["rate"], cell["config"]["defense"], seed, frame["dice"].to_numpy(), 1.0)
        record.case_metrics = frame
        with ResultStore(out / "results.sqlite") as store:
            store.write(record)
        return SimpleNamespace(exit_code=0, ran=[cell["key"]], skipped=[])

    monkeypatch.setattr(verify, "run_sweep", run_sweep)


def test_verify_compares_every_metric_not_only_dice(bundle, helpers, tmp_path, monkeypatch):
    board = Board(tmp_path / "board")
    entry = board.add(helpers.dump(bundle, tmp_path / "sub.json"))
    _fake_rerun(monkeypatch, helpers, bundle, lambda cases: cases)
    key = bundle["cells"][0]["key"]  # attack none, defense none
    assert verify_entry(board, entry.entry_id, key)["status"] == "verified"

    def other_accuracy(cases):
        cases[0]["accuracy"] -= 0.01  # Dice identical, accuracy not
        return cases

    _fake_rerun(monkeypatch, helpers, bundle, other_accuracy)
    record = verify_entry(board, entry.entry_id, key)
    assert record["status"] == "mismatch"
    assert record["cells"][0]["max_abs_diff"]["dice"] == 0 and record["cells"][0]["max_abs_diff"]["accuracy"] == pytest.approx(0.01)

    def other_counts(cases):
        cases[0]["tp"] += 10**6  # metrics left as submitted
        return cases

    _fake_rerun(monkeypatch, helpers, bundle, other_counts)
    assert verify_entry(board, entry.entry_id, key)["status"] == "mismatch"


def _with_hd95(bundle, helpers, unmeasured: int = 2) -> dict:
    """``bundle`` with HD95 (mm) on every case but ``unmeasured`` per cell, aggregates recomputed: an honest export."""
    b = copy.deepcopy(bundle)
    for cell in b["cells"]:
        for j, case in enumerate(cell["cases"]):
            case["hd95"] = None if j < unmeasured else 3.0 + 2.5 * j + 20 * (1 - case["dice"])
    return helpers.reseal(b, recompute_aggregates=True)


def test_hd95_aggregates_are_recomputed_and_forged_ones_refused(bundle, helpers, tmp_path):
    honest = _with_hd95(bundle, helpers)
    assert honest["cells"][1]["aggregates"]["hd95"]["n"] == len(honest["cells"][1]["cases"]) - 2  # over the measured cases
    Board(tmp_path / "board").add(helpers.dump(honest, tmp_path / "honest.json"))

    forged = copy.deepcopy(honest)
    forged["cells"][1]["aggregates"]["hd95"]["mean"] -= 1.5  # a better (lower) HD95 than its cases give
    reasons = _refusals(helpers.reseal(forged), helpers, tmp_path, board=tmp_path / "b1")
    assert reasons == [reasons[0]] and reasons[0].startswith("aggregate: cells/1/aggregates/hd95/mean is")

    # nothing measured: the aggregate is null (both NaN agree), and a number claimed there is refused
    unmeasured = _with_hd95(bundle, helpers, unmeasured=100)
    assert unmeasured["cells"][0]["aggregates"]["hd95"] == {"mean": None, "std": None, "ci_low": None, "ci_high": None, "n": 0}
    Board(tmp_path / "b2").add(helpers.dump(unmeasured, tmp_path / "none.json"))
    claimed = copy.deepcopy(unmeasured)
    claimed["cells"][0]["aggregates"]["hd95"]["mean"] = 4.0
    reasons = _refusals(helpers.reseal(claimed), helpers, tmp_path, board=tmp_path / "b3")
    assert any(r.startswith("aggregate: cells/0/aggregates/hd95/mean is 4.0") for r in reasons)

    negative = copy.deepcopy(honest)
    negative["cells"][2]["aggregates"]["hd95"]["ci_low"] = -1.0
    reasons = _refusals(helpers.reseal(negative), helpers, tmp_path, board=tmp_path / "b4")
    assert any(r.startswith("range: cells/2/aggregates/hd95/ci_low: -1.0 is not a distance") for r in reasons)


def test_compare_cases_compares_hd95(bundle, helpers):
    cases = _with_hd95(bundle, helpers)["cells"][0]["cases"]
    assert compare_cases(cases, copy.deepcopy(cases))["max_abs_diff"]["hd95"] == 0  # unmeasured on both sides agrees
    rerun = copy.deepcopy(cases)
    rerun[3]["hd95"] = cases[3]["hd95"] + 2.0
    assert compare_cases(cases, rerun)["max_abs_diff"]["hd95"] == pytest.approx(2.0 / rerun[3]["hd95"])
    rerun = copy.deepcopy(cases)
    rerun[0]["hd95"] = 5.0  # measured here, not in the submission
    assert compare_cases(cases, rerun)["max_abs_diff"]["hd95"] is None
    rerun = copy.deepcopy(cases)
    rerun[4]["hd95"] = float("nan")  # submitted, not measured by the re-run
    assert compare_cases(cases, rerun)["max_abs_diff"]["hd95"] is None
    old = [{k: v for k, v in c.items() if k != "hd95"} for c in cases]  # a bundle from before HD95
    assert "hd95" not in compare_cases(old, cases)["max_abs_diff"]


def _with_lesion_metrics(bundle: dict, helpers, unmeasured: int = 0) -> dict:
    """``bundle`` with lesion-wise Dice and HD95 on its cases, the first ``unmeasured`` of each cell null."""
    b = copy.deepcopy(bundle)
    for cell in b["cells"]:
        for j, case in enumerate(cell["cases"]):
            case["lesion_dice"] = None if j < unmeasured else min(1.0, case["dice"] + 0.05)
            case["lesion_hd95"] = None if j < unmeasured else 2.0 + j
    return helpers.reseal(b, recompute_aggregates=True)


def test_lesion_wise_aggregates_are_recomputed_and_checked(bundle, helpers, tmp_path):
    honest = _with_lesion_metrics(bundle, helpers, unmeasured=1)
    cell = honest["cells"][0]
    assert cell["aggregates"]["lesion_dice"]["n"] == len(cell["cases"]) - 1
    Board(tmp_path / "board").add(helpers.dump(honest, tmp_path / "honest.json"))
    forged = copy.deepcopy(honest)
    forged["cells"][0]["aggregates"]["lesion_dice"]["mean"] += 0.1  # better than its cases give
    reasons = _refusals(helpers.reseal(forged), helpers, tmp_path, board=tmp_path / "b1")
    assert any(r.startswith("aggregate: cells/0/aggregates/lesion_dice/mean is") for r in reasons)
    out_of_range = copy.deepcopy(honest)
    out_of_range["cells"][0]["cases"][2]["lesion_dice"] = 1.5
    reasons = _refusals(helpers.reseal(out_of_range, recompute_aggregates=True), helpers, tmp_path, board=tmp_path / "b2")
    assert any(r.startswith("range: cells/0/cases/2/lesion_dice: 1.5 is not in [0, 1]") for r in reasons)


def test_compare_cases_compares_lesion_wise_metrics_where_the_submitter_measured_them(bundle, helpers):
    cases = _with_lesion_metrics(bundle, helpers)["cells"][0]["cases"]
    same = compare_cases(cases, copy.deepcopy(cases))["max_abs_diff"]
    assert same["lesion_dice"] == 0 and same["lesion_hd95"] == 0
    rerun = copy.deepcopy(cases)
    rerun[1]["lesion_dice"] -= 0.25
    rerun[2]["lesion_hd95"] = float("nan")  # submitted, not measured by the re-run (no extra there)
    diffs = compare_cases(cases, rerun)["max_abs_diff"]
    assert diffs["lesion_dice"] == pytest.approx(0.25) and diffs["lesion_hd95"] is None
    # a submitter without the extra left them null: a re-run that measured them does not contradict it
    unmeasured = _with_lesion_metrics(bundle, helpers, unmeasured=100)["cells"][0]["cases"]
    diffs = compare_cases(unmeasured, cases)["max_abs_diff"]
    assert "lesion_dice" not in diffs and "lesion_hd95" not in diffs


def test_verify_compares_hd95(bundle, helpers, tmp_path, monkeypatch):
    measured = _with_hd95(bundle, helpers)
    board = Board(tmp_path / "board")
    entry = board.add(helpers.dump(measured, tmp_path / "sub.json"))
    key = measured["cells"][0]["key"]
    _fake_rerun(monkeypatch, helpers, measured, lambda cases: cases)
    record = verify_entry(board, entry.entry_id, key)
    assert record["status"] == "verified" and "hd95" in record["compared"] and record["cells"][0]["max_abs_diff"]["hd95"] == 0

    def other_hd95(cases):
        cases[5]["hd95"] += 3.0  # every ratio and count identical, the boundary not
        return cases

    _fake_rerun(monkeypatch, helpers, measured, other_hd95)
    record = verify_entry(board, entry.entry_id, key)
    assert record["status"] == "mismatch" and record["cells"][0]["max_abs_diff"]["dice"] == 0
    assert record["cells"][0]["max_abs_diff"]["hd95"] == pytest.approx(3.0 / (measured["cells"][0]["cases"][5]["hd95"] + 3.0))


def test_verify_without_the_extra_refuses_an_entry_with_lesion_wise_metrics(bundle, helpers, tmp_path, monkeypatch):
    import benchmark

    board = Board(tmp_path / "board")
    entry = board.add(helpers.dump(_with_lesion_metrics(bundle, helpers), tmp_path / "lesions.json"))
    monkeypatch.setattr(benchmark, "lesionwise_missing", lambda: "needs brats-evaluation; install it with: pip install 'poisonbench[brats-eval]'")
    with pytest.raises(benchmark.BenchError, match=r"lesion-wise metrics.*poisonbench\[brats-eval\].*nothing was re-run"):
        verify_entry(board, entry.entry_id, "sample")
    assert not board.get(entry.entry_id).verified and board.get(entry.entry_id).verification is None
