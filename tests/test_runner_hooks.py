"""The runner's hooks around plugins: `Segmenter.close` after every cell, one example figure per attack setting."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import Field

from benchmark import ZSCORE, PluginParams, Segmenter, SliceSet, register_segmenter, validate_config
from benchmark.config import expand_cells
from benchmark.runner import example_figure_names, run_cell

CLOSED: list[str] = []


class ClosingSegmenter(Segmenter):
    """Predicts empty masks; ``fail`` names the step that raises; `close` is counted."""

    class Params(PluginParams):
        fail: str = Field("", description="the step that raises: fit, predict, or none when empty")

    def fit(self, images, masks):
        if self.params.fail == "fit":
            raise RuntimeError("fit broke")

    def predict(self, images):
        if self.params.fail == "predict":
            raise RuntimeError("predict broke")
        return np.zeros((len(images), *images.shape[2:]), dtype=np.uint8)

    def close(self):
        CLOSED.append(self.params.fail)


def _data(cases: int = 8, slices: int = 2) -> SliceSet:
    rng = np.random.default_rng(0)
    rows = cases * slices
    return SliceSet.create(
        rng.normal(size=(rows, 1, 8, 8)).astype(np.float32), rng.integers(0, 2, size=(rows, 8, 8)).astype(np.uint8),
        [f"c{i:02d}" for i in range(cases) for _ in range(slices)], ("t1ce",),
        norm_masks=np.ones((rows, 8, 8), bool), normalisation=ZSCORE,
    )


def _cells(attacks: list[dict], segmenter: dict | None = None) -> list:
    config = validate_config(
        {"dataset": {"name": "synthetic-brats", "cases": 8}, "task": {"inputs": ["t1ce"]},
         "split": {"val_fraction": 0.25, "seed": 0}, "segmenters": [segmenter or {"name": "test-closing"}],
         "attacks": attacks, "device": "cpu"}
    )
    return expand_cells(config, "toy", "test")


@pytest.fixture
def closing_segmenter():
    register_segmenter("test-closing")(ClosingSegmenter)
    CLOSED.clear()


@pytest.mark.parametrize("fail, status", [("", "finished"), ("fit", "failed"), ("predict", "failed")])
def test_segmenter_is_closed_whether_the_cell_finishes_or_fails(fail, status, closing_segmenter, tmp_path):
    (cell,) = _cells([{"name": "none", "rates": [0]}], {"name": "test-closing", "fail": fail})
    record = run_cell(cell, _data(), fingerprint="toy", cache_dir=tmp_path)
    assert record.status == status, record.error
    assert CLOSED == [fail]  # once, after the step that broke
    if fail:
        assert f"{fail} broke" in record.error


def test_default_close_does_nothing():
    class Plain(Segmenter):
        pass

    assert Plain().close() is None


def test_one_setting_of_an_attack_keeps_the_plain_figure_name(closing_segmenter):
    cells = _cells([{"name": "noise", "rates": [0.25, 0.5], "severity": 1.0}])
    assert list(example_figure_names(cells).values()) == ["noise-examples.png"]


def test_two_settings_of_an_attack_draw_two_figures(closing_segmenter, tmp_path):
    cells = _cells([{"name": "noise", "rates": [0.5], "severity": 1.0}, {"name": "noise", "rates": [0.5], "severity": 3.0},
                    {"name": "none", "rates": [0]}])
    names = example_figure_names(cells)
    assert len(set(names.values())) == 3
    figures = tmp_path / "figures"
    for cell in cells:
        record = run_cell(cell, _data(), fingerprint="toy", cache_dir=tmp_path, figures_dir=figures, example_figures=names)
        assert record.status == "finished", record.error
    drawn = sorted(path.name for path in figures.iterdir())
    assert len(drawn) == 2 and all(name.startswith("noise") and "severity" in name for name in drawn)
    assert drawn[0] != drawn[1]  # neither overwrote the other
