"""`benchmark.safe_file_name`: the one file-name function behind prediction files, exported
cases and attack example figures, and what ``bench export --mlflow`` looks figures up by."""

from __future__ import annotations

import pytest

import benchmark
from benchmark.config import validate_config
from benchmark.runner import example_figure_names, plan_sweep


@pytest.mark.parametrize(
    "name, expected",
    [
        ("synth-001", "synth-001"),
        ("BraTS_2021.00001", "BraTS_2021.00001"),
        ("../etc/passwd", "_etc_passwd"),  # no path, never hidden
        (".hidden", "hidden"),
        ("gan-synthetic (stealth=True)", "gan-synthetic__stealth_True_"),
        ("...", "case"),
        ("", "case"),
    ],
)
def test_safe_file_name(name, expected):
    assert benchmark.safe_file_name(name) == expected


def test_the_mlflow_export_finds_the_example_figure_the_runner_names(tmp_path):
    from leaderboard.tracking import _example_figures

    sweep = validate_config({
        "dataset": {"name": "synthetic-brats", "cases": 6, "slices": 4, "size": 32, "seed": 0},
        "task": {"inputs": ["t1ce"], "target": "ET"},
        "segmenters": [{"name": "unet", "epochs": 1}],
        "attacks": [{"name": "noise", "severity": 0.5, "rates": [0.5]}, {"name": "noise", "severity": 1.0, "rates": [0.5]}],
        "defenses": [{"name": "none"}],
        "seeds": [0],
    })
    names = sorted(example_figure_names(plan_sweep(sweep).cells).values())
    assert len(names) == 2 and all(" " not in n and "=" not in n for n in names)  # two settings, two safe names
    files = [tmp_path / n for n in names]
    for path in files:
        path.write_bytes(b"png")
    labels = benchmark.plugin_labels([{"name": "noise", "severity": 0.5}, {"name": "noise", "severity": 1.0}], "attack")
    found = [_example_figures(files, label, "noise") for label in labels]
    assert sorted(p.name for f in found for p in f) == names and all(len(f) == 1 for f in found)
    # one setting: <attack>-examples.png
    assert _example_figures([tmp_path / "noise-examples.png"], "noise", "noise") == [tmp_path / "noise-examples.png"]
