"""``bench list`` (one line per plugin) and ``bench show KIND NAME`` (its parameters)."""

from __future__ import annotations

import pytest

from benchmark.catalog import REGISTRIES
from benchmark.cli import main


def test_list_prints_one_line_per_plugin_with_kind_name_and_summary(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [(registry.kind, name, registry.get(name).summary()) for registry in REGISTRIES.values() for name in registry.names()]
    assert len(lines) == len(expected)
    for line, (kind, name, summary) in zip(lines, expected):
        assert line.split()[:2] == [kind, name]
        assert line.endswith(summary)


@pytest.mark.parametrize("kind", ["attack", "attacks"])
def test_list_of_one_kind_takes_singular_or_plural(kind, capsys):
    assert main(["list", kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == REGISTRIES["attacks"].names()
    assert all(line.startswith("attack ") for line in lines)


@pytest.mark.parametrize("kind, name", [("attack", "modality-swap"), ("defenses", "mriqc"), ("segmenter", "unet"), ("dataset", "brats")])
def test_show_prints_every_parameter_with_type_default_and_description(kind, name, capsys):
    assert main(["show", kind, name]) == 0
    out = capsys.readouterr().out
    registry = REGISTRIES[kind if kind.endswith("s") else kind + "s"]
    cls = registry.get(name)
    assert out.splitlines()[0] == f"{registry.kind} {name}: {cls.summary()}"
    rows = {line.split()[0]: line for line in out.splitlines()[3:]}
    assert set(rows) == set(cls.Params.model_fields)
    for field, info in cls.Params.model_fields.items():
        assert info.description in rows[field]
        if info.is_required():
            assert "(required)" in rows[field]
        else:
            assert repr(info.get_default(call_default_factory=True)) in rows[field]


def test_show_states_types():
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["show", "defense", "mriqc"]) == 0
    channels = next(line for line in buffer.getvalue().splitlines() if line.split()[:1] == ["channels"])
    assert "list[str] | None" in channels and "None" in channels


@pytest.mark.parametrize("argv, named", [(["show", "attack", "nosie"], "Unknown attack 'nosie'. Did you mean: noise"),
                                         (["show", "atack", "noise"], "'atack'"),
                                         (["show", "dataset", "nope"], "Unknown dataset 'nope'")])
def test_show_of_an_unknown_kind_or_name_is_exit_2_naming_it(argv, named, capsys):
    assert main(argv) == 2
    assert named in capsys.readouterr().err
