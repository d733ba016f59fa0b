"""``bench new``: the plugin it writes works, its test passes as written, and the contract tests accept it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import ConfigError
from benchmark.cli import main
from benchmark.cli.scaffold import KINDS, plan_scaffold

REPO = Path(__file__).resolve().parents[1]
CLASSES = {"attack": "MyAttack", "defense": "MyDefense", "segmenter": "MySegmenter", "dataset": "MyDatasetSource"}


def _run(args: list[str], cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _write_distribution(folder: Path, kinds: list[str]) -> None:
    """Install the generated plugins as a distribution would: a ``.dist-info`` with their entry points."""
    info = folder / "my_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugins\nVersion: 0.1\n")
    groups = "\n".join(f"[poisonbench.{KINDS[kind][0]}]\nmy-{kind} = my_{kind}:{CLASSES[kind]}\n" for kind in kinds)
    (info / "entry_points.txt").write_text(groups)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_generated_test_passes_as_written(kind, tmp_path, capsys):
    assert main(["new", kind, f"my-{kind}", "--dir", str(tmp_path / "plugins")]) == 0
    printed = capsys.readouterr().out
    plugin, test = tmp_path / "plugins" / f"my_{kind}.py", tmp_path / "plugins" / f"test_my_{kind}.py"
    assert plugin.is_file() and test.is_file()
    # the entry-point snippet that installs it
    assert f'[project.entry-points."poisonbench.{KINDS[kind][0]}"]' in printed
    assert f'my-{kind} = "my_{kind}:{CLASSES[kind]}"' in printed
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout and "skipped" not in result.stdout


def test_the_contract_tests_accept_every_generated_plugin(tmp_path):
    folder = tmp_path / "plugins"
    for kind in KINDS:
        assert main(["new", kind, f"my-{kind}", "--dir", str(folder)]) == 0
    _write_distribution(folder, list(KINDS))
    result = _run(
        ["-m", "pytest", "-v", "-p", "no:cacheprovider", str(REPO / "tests" / "test_plugin_contracts.py"),
         "-k", "documented or defaults or failed_to_load or bench_list"],
        cwd=REPO, pythonpath=folder,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for kind, registry in KINDS.items():
        for test in ("test_plugin_declares_documented_parameters", "test_plugin_builds_with_defaults"):
            assert f"{test}[{registry[0]}-my-{kind}] PASSED" in result.stdout, (test, kind)


def test_generated_plugins_load_without_torch_and_run_a_sweep(tmp_path):
    """Found through their entry points, the four make a valid sweep that runs, and ``bench list`` needs no torch."""
    folder = tmp_path / "plugins"
    for kind in KINDS:
        assert main(["new", kind, f"my-{kind}", "--dir", str(folder)]) == 0
    _write_distribution(folder, list(KINDS))
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "dataset: {name: my-dataset, cases: 8, slices: 2, size: 16}\n"
        "task: {inputs: [t1ce], target: ET}\nsplit: {val_fraction: 0.25, seed: 0, trusted: 2}\n"
        "segmenters: [{name: my-segmenter}]\nattacks: [{name: my-attack, rates: [0, 0.5]}]\n"
        "defenses: [{name: none}, {name: my-defense, budget: 0.25}]\nseeds: [0]\ndevice: cpu\n"
        f"out: {tmp_path / 'results'}\n"
    )
    script = (
        "import sys\nfrom benchmark.cli import main\n"
        f"assert main(['list']) == 0\nassert main(['validate', {str(config)!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        f"sys.exit(main(['run', {str(config)!r}, '--quiet']))\n"
    )
    result = _run(["-c", script], cwd=tmp_path, pythonpath=folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for kind in KINDS:
        assert f"my-{kind}" in result.stdout
    assert "valid; 4 cell(s)" in result.stdout


@pytest.mark.parametrize("name", ["My-Attack", "my_attack", "attack-", "two--hyphens", "9lives", "", "a" * 41, "x y"])
def test_an_invalid_name_is_exit_2_and_writes_nothing(name, tmp_path, capsys):
    assert main(["new", "attack", name, "--dir", str(tmp_path)]) == 2
    assert "is not a plugin name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, problem", [("import", "Python keyword"), ("json", "would shadow"), ("noise", "already registered")])
def test_a_name_that_would_clash_is_exit_2(name, problem, tmp_path, capsys):
    assert main(["new", "attack", name, "--dir", str(tmp_path)]) == 2
    assert problem in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", ["my_check.py", "test_my_check.py"])
def test_an_existing_file_is_exit_2_and_left_as_it_was(existing, tmp_path, capsys):
    (tmp_path / existing).write_text("# mine\n")
    assert main(["new", "defense", "my-check", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert existing in err and "exists already" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_text() == "# mine\n"


def test_class_names_follow_the_kind(tmp_path):
    assert plan_scaffold("attack", "salt-pepper", tmp_path).cls == "SaltPepperAttack"
    assert plan_scaffold("defense", "qc-defense", tmp_path).cls == "QcDefense"
    assert plan_scaffold("dataset", "toy-mri", tmp_path).cls == "ToyMriSource"
    assert plan_scaffold("segmenter", "tiny", tmp_path).module == "tiny"
    with pytest.raises(ConfigError, match="is not a plugin name"):
        plan_scaffold("attack", "-attack", tmp_path)  # the command line would read it as an option
