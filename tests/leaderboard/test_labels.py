"""Board labels name a plugin with the parameters a submission chose, not every default."""

from __future__ import annotations

from benchmark import create_defense
from leaderboard.tables import plugin_label


def _resolved(name: str, **chosen) -> dict:
    return {"name": name, **create_defense(name, **chosen).params.model_dump(mode="json")}


def test_defaults_are_left_out_and_choices_kept():
    spec = _resolved("spectral", quantile=0.9)
    assert len(spec) > 3  # the resolved config carries every parameter
    assert plugin_label(spec, "defense") == "spectral (quantile=0.9)"
    assert plugin_label(_resolved("spectral"), "defense") == "spectral"


def test_without_a_kind_or_an_installed_plugin_every_parameter_shows():
    spec = _resolved("spectral", quantile=0.9)
    assert plugin_label(spec) == plugin_label(spec, None)
    assert "bins=" in plugin_label(spec)
    assert plugin_label({"name": "not-installed", "alpha": 1}, "defense") == "not-installed (alpha=1)"


def test_a_plugin_registered_after_a_lookup_is_labelled_with_its_defaults():
    from benchmark import Defense, DefenseParams, register_defense

    spec = {"name": "late-defense", "strength": 1.0}
    assert plugin_label(spec, "defense") == "late-defense (strength=1.0)"  # not installed yet

    @register_defense("late-defense")
    class LateDefense(Defense):
        class Params(DefenseParams):
            strength: float = 1.0

        def score(self, train):
            return {case: 0.0 for case in train.cases}

    assert plugin_label(spec, "defense") == "late-defense"
