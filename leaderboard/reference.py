"""``bench leaderboard rebuild-reference``: the project's own entries on the board, from its own configs.

For each reference config (`REFERENCE_CONFIGS`, those present in the checkout):

1. run it into its run folder (``RUNS/<config stem>`` with ``--runs``, else the config's own
   ``out``, where ``bench run CONFIG`` writes): a folder that already holds the study's
   finished cells is reused, and an interrupted run resumes (``bench run`` semantics);
   with ``run=False`` nothing is trained and a study that is not complete is refused;
2. export its study with `leaderboard.export_bundle` (``bench export``) under the submitter
   name ``poisonbench reference <stem>``;
3. add the bundle to the board: an entry of the same config with the same results stays as
   it is (with its verification); one with other results is replaced;
4. optionally verify it (``bench leaderboard verify``: one sampled cell re-run);

then the site is built from the whole board (`leaderboard.build_site`).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import benchmark
from benchmark import BenchError, ExitCode, ResultStore

from .board import DEFAULT_BOARD, Board, Entry, safe_name
from .bundle import export_bundle, write_bundle
from .site import BuildResult, build_site
from .validate import results_fingerprint

__all__ = ["DEFAULT_SITE", "REFERENCE_CONFIGS", "REFERENCE_SUBMITTER", "ReferenceOutcome", "RebuildResult", "rebuild_reference",
           "missing_requirements", "reference_configs"]

REFERENCE_CONFIGS = (
    Path("configs/paper.yaml"),
    Path("configs/defenses.yaml"),
    Path("configs/defenses-family.yaml"),
    Path("configs/paper-regime.yaml"),
    Path("configs/paper-regime-unet2d.yaml"),
    Path("configs/paper-regime-stealth.yaml"),
    Path("configs/paper-unet3d.yaml"),
    Path("configs/paper-nnunet.yaml"),
)
"""The configs behind the reference board, in board order; those not in the checkout are skipped."""
DEFAULT_SITE = Path("leaderboard") / "published"
"""Where the reference site is built; its ``leaderboard.md`` is the one the README links."""
REFERENCE_SUBMITTER = "poisonbench reference"
REFERENCE_AFFILIATION = "poisonbench"


@dataclass
class ReferenceOutcome:
    """What happened to one config: ``added``, ``replaced``, ``unchanged``, ``failed`` or ``skipped`` (with why)."""

    config: Path
    run_dir: Path
    status: str
    entry_id: str | None = None
    message: str = ""
    verification: str | None = None


@dataclass
class RebuildResult:
    """Every config's outcome and the built site (None when the build was not asked for)."""

    outcomes: list[ReferenceOutcome] = field(default_factory=list)
    site: BuildResult | None = None

    @property
    def exit_code(self) -> ExitCode:
        bad = any(o.status == "failed" or o.verification not in (None, "verified") for o in self.outcomes)
        return ExitCode.CELL_FAILED if bad else ExitCode.OK


def reference_configs(root: str | Path = ".") -> list[Path]:
    """The reference configs present under ``root``, in board order."""
    return [path for path in REFERENCE_CONFIGS if (Path(root) / path).is_file()]


def missing_requirements(path: str | Path) -> list[str]:
    """What the plugins a config file names need installed first (`Plugin.missing_requirement`), one line each.

    Read from the file's plugin names alone (``--set`` overrides are not applied), so that a
    config whose extra is missing is told apart from an invalid one before validation refuses it.
    """
    import yaml

    from benchmark import ATTACKS, DATASETS, DEFENSES, SEGMENTERS

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []  # validation reports it
    if not isinstance(raw, dict):
        return []
    named = [(DATASETS, raw.get("dataset"))]
    named += [(registry, spec) for registry, key in ((SEGMENTERS, "segmenters"), (ATTACKS, "attacks"), (DEFENSES, "defenses"))
              for spec in (raw.get(key) if isinstance(raw.get(key), list) else [])]
    needs = []
    for registry, spec in named:
        name = spec.get("name") if isinstance(spec, dict) else spec
        if isinstance(name, str) and name in registry:
            missing = registry.get(name).missing_requirement()
            if missing:
                needs.append(f"{registry.kind} '{name}' {missing}")
    return needs


def _submitter(config: Path) -> dict[str, str]:
    return {"name": f"{REFERENCE_SUBMITTER} {config.stem}", "affiliation": REFERENCE_AFFILIATION, "link": ""}


def _study_key(config: benchmark.SweepConfig) -> str:
    """The key of the study ``config`` runs (what ``bench run`` records), without loading any data."""
    source = benchmark.create_dataset(config.dataset.name, **config.dataset.params)
    return benchmark.study_key(benchmark.study_config(config, source.fingerprint(), benchmark.package_version()))


def _complete_study(run_dir: Path, key: str) -> str | None:
    """Why the study ``key`` in ``run_dir`` cannot be exported without running, or None when every cell finished."""
    path = run_dir / "results.sqlite"
    if not path.is_file():
        return f"{path}: no results database; run the config (leave out --no-run) or point --runs at its run folder."
    with ResultStore(path) as store:
        studies = store.studies()
    found = studies[studies["study"] == key]
    if found.empty:
        return f"{run_dir}: the config's study {key} was not run here (a changed config or package version is a new study)."
    row = found.iloc[0]
    if int(row["finished"]) < int(row["cells"]):
        return f"{run_dir}: study {key} has {int(row['finished'])} of {int(row['cells'])} cells finished; run the config to complete it."
    return None


def _entry_of(entry: Entry, config: Path) -> bool:
    """Whether ``entry`` is the reference entry of ``config``: its submitter name, and the id `Board.add` gives it.

    Exact, not a prefix: ``poisonbench-reference-paper-`` also begins the ids of ``paper-regime``.
    """
    name = _submitter(config)["name"]
    pattern = re.escape(safe_name(name)) + r"-[0-9a-f]{12}"
    return entry.submitter.get("name") == name and re.fullmatch(pattern, entry.entry_id) is not None


def _publish(board: Board, config: Path, bundle: dict, tmp: Path) -> tuple[str, str]:
    """Put ``bundle`` on the board in place of the config's earlier entries; returns (status, entry id)."""
    earlier = [e for e in board.entries() if _entry_of(e, config)]
    fingerprint = results_fingerprint(bundle)
    same = next((e for e in earlier if results_fingerprint(e.submission) == fingerprint), None)
    if same is not None:
        return "unchanged", same.entry_id
    path = write_bundle(bundle, tmp / f"{config.stem}.json")
    entry = board.add(path)
    for old in earlier:
        board.remove(old.entry_id)
    return ("replaced" if earlier else "added"), entry.entry_id


def rebuild_reference(
    configs: Sequence[str | Path] | None = None,
    runs: str | Path | None = None,
    board: str | Path = DEFAULT_BOARD,
    site: str | Path | None = DEFAULT_SITE,
    overrides: Sequence[str] = (),
    run: bool = True,
    verify: bool = False,
    device: str = "cpu",
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> RebuildResult:
    """Run, export and add the reference configs, then build the site.

    Args:
        configs: config files. Defaults to `reference_configs` (those present).
        runs: folder of the run folders (``RUNS/<config stem>``). Defaults to each config's ``out``.
        board: the board folder. Defaults to `DEFAULT_BOARD`.
        site: where to build the site, or None for no build. Defaults to `DEFAULT_SITE`.
        overrides: ``KEY=VALUE`` overrides applied to every config (``bench run --set``). Defaults to none.
        run: run what is not finished yet; False exports only studies already complete. Defaults to True.
        verify: re-run one sampled cell of every entry not yet verified (``bench leaderboard verify``).
            Defaults to False.
        device: device of the verification re-runs. Defaults to ``cpu``.
        quiet: no progress bars or tables from the runs. Defaults to False.
        log: where one line per step goes. Defaults to `print`.

    Returns:
        Every config's outcome (a failed one carries its reason in ``message``) and the build result.

    Raises:
        BenchError: a config file is missing or invalid (exit 2); nothing has run then.
    """
    paths = [Path(c) for c in configs] if configs else reference_configs()
    if not paths:
        raise BenchError("no reference config found (expected " + ", ".join(map(str, REFERENCE_CONFIGS)) + "); run from the repository root.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BenchError(f"config file(s) not found: {', '.join(missing)}")
    result = RebuildResult()
    if not configs:  # the default set: a config whose optional extra is missing is skipped (its entry kept), not an error
        for path in list(paths):
            needs = missing_requirements(path)
            if needs:
                paths.remove(path)
                result.outcomes.append(ReferenceOutcome(path, Path(runs) / path.stem if runs is not None else path, "skipped",
                                                        message="; ".join(needs)))
                log(f"{path}: skipped, its entry kept: {'; '.join(needs)}")
    # every config is validated before the first one runs: a typo must not wait hours
    loaded = [(path, benchmark.load_config(path, list(overrides))) for path in paths]
    board_ = Board(board)
    with tempfile.TemporaryDirectory(prefix="poisonbench-reference-") as tmp:
        for path, config in loaded:
            run_dir = Path(runs) / path.stem if runs is not None else Path(config.out)
            outcome = ReferenceOutcome(path, run_dir, "failed")
            result.outcomes.append(outcome)
            key = _study_key(config)
            if run:
                log(f"{path}: running into {run_dir} (finished cells are reused)")
                swept = benchmark.run_sweep(config, out=run_dir, quiet=quiet)
                if swept.exit_code != ExitCode.OK:
                    outcome.message = f"{len(swept.failed) + len(swept.lost)} cell(s) failed or did not finish; see 'bench report --out {run_dir}'"
                    continue
            problem = _complete_study(run_dir, key)
            if problem:
                outcome.message = problem
                continue
            bundle = export_bundle(run_dir, _submitter(path), study=key)
            outcome.status, outcome.entry_id = _publish(board_, path, bundle, Path(tmp))
            log(f"{path}: {outcome.status} {outcome.entry_id} ({len(bundle['cells'])} cell(s), study {key})")
            if verify:
                outcome.verification = _verify(board_, outcome.entry_id, device, log)
    if site is not None:
        board_.root.mkdir(parents=True, exist_ok=True)
        result.site = build_site(board_, site)
        for line in result.site.left_out:
            log(f"warning: {line}")
        log(f"{Path(site) / 'leaderboard.md'}: {len(result.site.analysis.entries)} entr{'y' if len(result.site.analysis.entries) == 1 else 'ies'}")
    return result


def _verify(board: Board, entry_id: str, device: str, log: Callable[[str], None]) -> str:
    """The entry's verification status, re-running one sampled cell unless it is verified already."""
    from .verify import verify_entry

    entry = board.get(entry_id)
    if entry.verified:
        return "verified"
    record = verify_entry(board, entry_id, "sample", device=device)
    log(f"{entry_id}: {record['status']}: {record['summary']}")
    return str(record["status"])
