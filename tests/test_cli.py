"""The ``bench`` parser: add-on commands are looked up only when the command line needs them."""

from __future__ import annotations

import importlib

import pytest

cli_main = importlib.import_module("benchmark.cli.main")  # the module; the package exports its main()


@pytest.fixture
def add_on_lookups(monkeypatch):
    calls = []

    def lookup():
        calls.append(1)
        return []

    monkeypatch.setattr(cli_main, "_plugin_commands", lookup)
    return calls


@pytest.mark.parametrize("argv", [["validate", "x.yaml"], ["--debug", "report", "--out", "nowhere"], ["list", "attacks"]])
def test_core_commands_do_not_scan_installed_packages(argv, add_on_lookups):
    cli_main.build_parser(argv)
    assert add_on_lookups == []


@pytest.mark.parametrize("argv", [["leaderboard", "build"], ["--debug", "export"], ["--help"], []])
def test_other_command_lines_load_the_add_ons(argv, add_on_lookups):
    cli_main.build_parser(argv)
    assert add_on_lookups == [1]


def test_add_on_commands_still_run(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["leaderboard", "--help"])
    assert exit_info.value.code == 0
    assert "verify" in capsys.readouterr().out
