"""The reference board: ``bench leaderboard rebuild-reference`` end to end on a tiny config, and
the committed board (``leaderboard/entries/``) built and opened in a real browser.

The committed board is required: while ``leaderboard/entries/`` is missing or holds no entry,
its tests fail (they never skip). The site's own checks also run on a generated entry, so a
broken site shows apart from a missing board.

The browser check needs Debian's chromium at ``/usr/bin/chromium`` (``.ci/browser-deps.sh``)
and the ``playwright`` Python package, as ``test_browser.py`` does.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from benchmark import ResultStore, load_config
from benchmark.cli import main
from leaderboard import Board, build_site
from leaderboard.board import INDEX_NAME
from leaderboard.site import BuildResult
from leaderboard.reference import REFERENCE_CONFIGS, _publish, missing_requirements, reference_configs

REPO = Path(__file__).resolve().parents[2]
COMMITTED_BOARD = REPO / "leaderboard" / "entries"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

TINY = """\
dataset: {name: synthetic-brats, cases: 6, slices: 4, size: 32, seed: 0}
task: {inputs: [t1ce], target: ET}
split: {val_fraction: 0.34, seed: 0}
segmenters: [{name: unet, epochs: 2, batch_size: 8, lr: 0.003, channels: [4, 8, 16]}]
attacks: [{name: noise, rates: [0, 0.5, 1.0]}]
defenses: [{name: none}]
seeds: [0]
device: cpu
executor: {name: local}
out: results-tiny
"""


def _rebuild(*extra: str) -> int:
    return main(["leaderboard", "rebuild-reference", "--config", "configs/tiny.yaml", "--runs", "runs", "--board", "board",
                 "--site", "site", "--quiet", *extra])


@pytest.fixture
def tiny_checkout(tmp_path, monkeypatch):
    """A folder laid out like the repository, holding one tiny config; the working directory."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _started(run_dir: Path) -> dict[str, float]:
    with ResultStore(run_dir / "results.sqlite") as store:
        runs = store.runs()
    return dict(zip(runs["cell_key"], runs["started_at"]))


@pytest.mark.slow
def test_rebuild_reference_end_to_end(tiny_checkout, capsys):
    assert _rebuild("--verify") == 0
    out = capsys.readouterr().out
    assert "added poisonbench-reference-tiny-" in out and "verified" in out
    run_dir = tiny_checkout / "runs" / "tiny"
    first_cells = _started(run_dir)
    assert len(first_cells) == 3

    board = Board(tiny_checkout / "board")
    contents = board.load()
    assert not contents.left_out
    [entry] = contents.entries
    assert entry.entry_id.startswith("poisonbench-reference-tiny-") and entry.verified
    assert entry.submitter["name"] == "poisonbench reference tiny"
    assert sorted(c["key"] for c in entry.submission["cells"]) == sorted(first_cells)
    # the bundle is what 'bench export' writes from the run folder
    assert main(["export", "--out", str(run_dir), "--to", "exported.json", "--name", "poisonbench reference tiny",
                 "--affiliation", "poisonbench"]) == 0
    exported = json.loads(Path("exported.json").read_text())
    assert exported["cells"] == entry.submission["cells"] and exported["config"] == entry.submission["config"]
    markdown = (tiny_checkout / "site" / "leaderboard.md").read_text()
    assert "poisonbench reference tiny" in markdown and "noise" in markdown
    assert (tiny_checkout / "site" / "index.html").is_file() and list((tiny_checkout / "site" / "figures").glob("*.png"))

    # export only: nothing is trained, the entry (and its verification) stays
    capsys.readouterr()
    assert _rebuild("--no-run") == 0
    assert f"unchanged {entry.entry_id}" in capsys.readouterr().out
    assert _started(run_dir) == first_cells
    assert [e.entry_id for e in board.entries()] == [entry.entry_id] and board.entries()[0].verified

    # a second seed: the finished cells are reused, the new ones run, the entry is replaced
    assert _rebuild("--set", "seeds=[0,1]") == 0
    assert "replaced poisonbench-reference-tiny-" in capsys.readouterr().out
    now = _started(run_dir)
    assert len(now) == 6 and {k: now[k] for k in first_cells} == first_cells
    [replaced] = board.entries()
    assert replaced.entry_id != entry.entry_id and len(replaced.submission["cells"]) == 6
    assert not entry.path.exists()
    index = json.loads((tiny_checkout / "board" / "index.json").read_text())
    assert set(index["entries"]) == {replaced.entry_id}


def test_a_default_config_whose_extra_is_missing_is_skipped_and_its_entry_kept(tiny_checkout, capsys, monkeypatch):
    import baselines.nnunet as nnunet_plugin

    monkeypatch.setattr(nnunet_plugin, "nnunet_missing", lambda: "needs nnunetv2; install it with: pip install 'poisonbench[nnunet]'")
    (tiny_checkout / "configs" / "paper.yaml").write_text(TINY)
    (tiny_checkout / "configs" / "paper-nnunet.yaml").write_text(TINY.replace("{name: unet, epochs: 2, batch_size: 8, lr: 0.003, channels: [4, 8, 16]}", "{name: nnunet, epochs: 1}"))
    code = main(["leaderboard", "rebuild-reference", "--runs", "runs", "--board", "board", "--site", "site", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "configs/paper-nnunet.yaml: skipped, its entry kept: segmenter 'nnunet' needs nnunetv2; install it with: pip install 'poisonbench[nnunet]'" in out
    assert "added poisonbench-reference-paper-" in out and not (tiny_checkout / "runs" / "paper-nnunet").exists()
    # named explicitly, the same config is an error before anything runs (exit 2), as 'bench validate' says
    assert main(["leaderboard", "rebuild-reference", "--config", "configs/paper-nnunet.yaml", "--runs", "runs", "--board", "board",
                 "--site", "site", "--quiet"]) == 2
    assert "poisonbench[nnunet]" in capsys.readouterr().err


def test_no_run_refuses_a_study_that_was_not_run(tiny_checkout, capsys):
    assert _rebuild("--no-run") == 1
    err = capsys.readouterr().err
    assert "configs/tiny.yaml" in err and "no results database" in err
    assert not (tiny_checkout / "board").exists() or not list((tiny_checkout / "board").glob("*.json"))


def test_every_config_is_checked_before_anything_runs(tiny_checkout, capsys):
    bad = TINY.replace("name: noise", "name: nosie")
    (tiny_checkout / "configs" / "bad.yaml").write_text(bad)
    code = main(["leaderboard", "rebuild-reference", "--config", "configs/tiny.yaml", "--config", "configs/bad.yaml",
                 "--runs", "runs", "--board", "board", "--site", "site", "--quiet"])
    assert code == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert not (tiny_checkout / "runs").exists()
    assert main(["leaderboard", "rebuild-reference", "--config", "configs/missing.yaml"]) == 2
    assert "configs/missing.yaml" in capsys.readouterr().err


def test_the_reference_configs_are_present_and_valid():
    present = reference_configs(REPO)
    assert [str(p) for p in present[:3]] == ["configs/paper.yaml", "configs/defenses.yaml", "configs/defenses-family.yaml"]
    assert set(present) <= set(REFERENCE_CONFIGS)
    for path in present:
        if missing_requirements(REPO / path):  # an extra not installed here: validation names it (tested above)
            assert all("pip install 'poisonbench[" in line for line in missing_requirements(REPO / path))
            continue
        load_config(REPO / path)  # raises with the key path when a reference config is invalid


def _reference_bundle(bundle: dict, helpers, stem: str, fn: int = 0) -> dict:
    """``bundle`` as the reference export of config ``stem``; ``fn`` more false negatives on one case: other results."""
    b = copy.deepcopy(bundle)
    b["submitter"] = {"name": f"poisonbench reference {stem}", "affiliation": "poisonbench", "link": ""}
    b["cells"][0]["cases"][0]["fn"] += fn
    helpers.recount(b["cells"][0]["cases"][0])
    return helpers.reseal(b, recompute_aggregates=True)


def test_rebuilding_a_config_replaces_its_own_entry_only(bundle, helpers, tmp_path):
    board = Board(tmp_path / "board")
    stems = ["paper", "paper-regime", "defenses", "defenses-family"]
    first = {stem: board.add(helpers.dump(_reference_bundle(bundle, helpers, stem, fn=100 * i), tmp_path / f"{stem}.json"))
             for i, stem in enumerate(stems)}
    # a submission whose id begins like paper's but is no reference export: never touched either
    kept = board.add(helpers.dump(_reference_bundle(bundle, helpers, "paper x", fn=900), tmp_path / "other.json"))
    assert kept.entry_id.startswith("poisonbench-reference-paper-")

    for i, stem in enumerate(("paper", "defenses")):
        status, entry_id = _publish(board, Path(f"configs/{stem}.yaml"), _reference_bundle(bundle, helpers, stem, fn=1000 * (i + 1)), tmp_path)
        assert status == "replaced" and entry_id != first[stem].entry_id
    ids = {e.entry_id for e in board.entries()}
    assert first["paper-regime"].entry_id in ids and first["defenses-family"].entry_id in ids and kept.entry_id in ids
    assert first["paper"].entry_id not in ids and first["defenses"].entry_id not in ids and len(ids) == 5
    # the same results again: unchanged, and still one entry per config
    status, entry_id = _publish(board, Path("configs/paper-regime.yaml"), _reference_bundle(bundle, helpers, "paper-regime", fn=100), tmp_path)
    assert (status, entry_id) == ("unchanged", first["paper-regime"].entry_id)


def test_the_readme_names_every_reference_config_as_present():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The reference board", 1)[1].split("\n### ", 1)[0]
    for path in reference_configs(REPO):
        assert f"`{path}`" in section, path
    assert "once it exists" not in section  # every reference config is in the checkout


def test_remove_takes_an_entry_and_its_index_record(bundle, helpers, tmp_path):
    board = Board(tmp_path / "board")
    entry = board.add(helpers.dump(bundle, tmp_path / "s.json"))
    board.record_verification(entry, {"status": "verified", "summary": "ok"})
    board.remove(entry.entry_id)
    assert board.entries() == [] and entry.entry_id not in json.loads(board.index_path.read_text())["entries"]
    with pytest.raises(Exception, match="no entry"):
        board.remove(entry.entry_id)


# -- the committed board, in a real browser ----------------------------------------------------
COMMIT_HINT = "run 'bench leaderboard rebuild-reference --verify' and commit leaderboard/entries/"


def _committed_board() -> Board:
    """The committed board; a failure (never a skip) while it is missing or empty."""
    assert COMMITTED_BOARD.is_dir(), f"{COMMITTED_BOARD} is not committed: {COMMIT_HINT}"
    assert [p for p in COMMITTED_BOARD.glob("*.json") if p.name != INDEX_NAME], f"{COMMITTED_BOARD} holds no entry: {COMMIT_HINT}"
    return Board(COMMITTED_BOARD)


def test_committed_entries_pass_the_board_checks():
    contents = _committed_board().load()
    assert not contents.left_out, contents.left_out
    assert contents.entries
    unverified = [e.entry_id for e in contents.entries if not e.verified]
    assert not unverified, f"reference entries not verified (run rebuild-reference with --verify): {unverified}"


def _built(board: Board, out: Path) -> tuple[list, BuildResult]:
    result = build_site(board, out)
    assert not result.left_out, result.left_out
    return board.entries(), result


@pytest.fixture
def generated_site(bundle, helpers, tmp_path):
    """A board of one small generated entry built into a site: the site's own checks, whatever is committed."""
    board = Board(tmp_path / "board")
    board.add(helpers.dump(bundle, tmp_path / "generated.json"))
    return _built(board, tmp_path / "site")


needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium (run .ci/browser-deps.sh)")


@pytest.mark.slow
@needs_chromium
def test_the_committed_board_in_a_real_browser(tmp_path):
    board_dir = tmp_path / "board"  # a copy: the build never writes into the committed board
    shutil.copytree(_committed_board().root, board_dir)
    _check_in_browser(*_built(Board(board_dir), tmp_path / "site"))


@pytest.mark.slow
@needs_chromium
def test_a_generated_board_in_a_real_browser(generated_site):
    _check_in_browser(*generated_site)


def _check_in_browser(entries: list, result: BuildResult) -> None:
    """Every entry rendered, the cells table sorts by Dice both ways, every figure loads, no console error."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    assert result.figures, "the board has no figure"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type in ("error", "warning") else None)
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))

            def open_page(path: Path) -> None:
                page.goto(path.as_uri())
                page.wait_for_selector("html[data-sortable=ready]", timeout=10_000)
                # figures load lazily, as a reader scrolls to them: ask for every one now and wait for each
                page.locator("img").evaluate_all(
                    "imgs => Promise.all(imgs.map(i => { i.loading = 'eager';"
                    " return i.complete ? null : new Promise(done => { i.onload = done; i.onerror = done; }); }))")
                broken = page.locator("img").evaluate_all(
                    "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'))")
                assert not broken, f"{path.name}: figures that did not load: {broken}"

            open_page(result.out / "index.html")
            # every entry rendered, by name
            assert page.locator("table#entries tbody tr").count() == len(entries)
            names = page.locator("table#entries").inner_text()
            assert all(e.submitter.get("name", "") in names for e in entries)
            assert page.locator("img").count() >= 1

            # the cells table sorts by Dice, both ways
            header = page.locator("table#cells thead th").filter(has_text=re.compile(r"^Dice$"))
            index = int(header.evaluate("th => th.cellIndex"))

            def column() -> list[float]:
                values = page.locator("table#cells tbody tr").evaluate_all(
                    f"rows => rows.map(r => r.cells[{index}].getAttribute('data-sort') || r.cells[{index}].textContent.trim())")
                return [float(v) for v in values]

            assert len(column()) >= 2
            header.click()
            assert header.get_attribute("aria-sort") == "ascending" and column() == sorted(column())
            header.click()
            assert header.get_attribute("aria-sort") == "descending" and column() == sorted(column(), reverse=True)

            # every entry page: its cells, its figures
            for entry in entries:
                open_page(result.out / "entries" / f"{entry.entry_id}.html")
                assert page.locator("table#entry-cells tbody tr").count() >= 1
            assert not errors, errors
        finally:
            browser.close()
