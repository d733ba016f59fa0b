"""Property-based: whatever YAML arrives, ``bench validate`` exits 0 or 2 with a clean message."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.cli import main

DEFAULT = yaml.safe_load((Path(__file__).parent.parent / "bench.yaml").read_text())

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["none", "unet", "synthetic-brats", "ET", "auto", "local", "t1ce"]),
)
documents = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10) | st.integers(-3, 3), children, max_size=4), max_leaves=12
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


ALL_PATHS = [p for p in _paths(DEFAULT) if p]


@st.composite
def mutated_defaults(draw):
    config = copy.deepcopy(DEFAULT)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = config
        try:
            for part in path[:-1]:
                parent = parent[part]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(documents)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    return config


def _validate(tmp_path: Path, text: str, capsys) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    assert code in (0, 2), captured.err
    assert "Traceback" not in captured.err
    if code == 2:
        assert captured.err.startswith("error: ")


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(document=documents)
def test_random_yaml_documents(document, tmp_path, capsys):
    _validate(tmp_path, yaml.safe_dump(document), capsys)


@FUZZ
@given(config=mutated_defaults())
def test_random_mutations_of_the_default_config(config, tmp_path, capsys):
    _validate(tmp_path, yaml.safe_dump(config), capsys)


@FUZZ
@given(text=st.text(max_size=200))
def test_random_text(text, tmp_path, capsys):
    _validate(tmp_path, text, capsys)


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:os.system ['touch /tmp/poisonbench-pwned']\n",
        "dataset: !!python/name:os.system\n",
        "a: &x [*x]\n",
    ],
)
def test_yaml_that_constructs_objects_is_refused(text, tmp_path, capsys):
    _validate(tmp_path, text, capsys)
    assert not Path("/tmp/poisonbench-pwned").exists()
