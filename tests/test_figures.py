"""benchmark.figures: example cases and dose-response plots are written as PNG files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark import SliceSet
from benchmark.figures import plot_attack_examples, plot_dose_response

PNG = b"\x89PNG\r\n\x1a\n"


def _slices(cases: int = 4, slices: int = 3, size: int = 24) -> SliceSet:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(cases * slices, 2, size, size)).astype(np.float32)
    labels = np.zeros((cases * slices, size, size), dtype=np.uint8)
    labels[:, 8:14, 8:14] = 3
    ids = np.repeat([f"c{i}" for i in range(cases)], slices)
    return SliceSet.create(images, labels, ids, ("ct", "t1ce"))


def _png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


@pytest.mark.parametrize("source", ["ct", None])
def test_attack_examples_replace(tmp_path, source):
    clean = _slices()
    images = clean.images.copy()
    poisoned_rows = np.isin(clean.case_ids, ["c1", "c3"])
    images[poisoned_rows, 1] = 0.5
    poisoned = clean.with_arrays(images=images, poisoned=poisoned_rows)
    out = plot_attack_examples(clean, poisoned, tmp_path / "figs" / "ex.png", source=source)
    assert out == tmp_path / "figs" / "ex.png" and _png(out)


def test_attack_examples_added_copies_and_labels(tmp_path):
    clean = _slices()
    copy = clean.subset(["c2"])
    labels = copy.labels.copy()
    labels[:, 6:16, 6:16] = 3
    added = copy.with_arrays(case_ids=np.char.add(copy.case_ids, "~syn"), poisoned=np.ones(len(copy), bool), labels=labels)
    poisoned = SliceSet.concatenate([clean, added])
    assert _png(plot_attack_examples(clean, poisoned, tmp_path / "a.png", max_cases=1))


def test_attack_examples_without_poison(tmp_path):
    clean = _slices()
    assert _png(plot_attack_examples(clean, clean, tmp_path / "none.png", source="ct"))


def _summary() -> pd.DataFrame:
    """`summary_table` of three seeds: a clean cell, three rates, a defended cell."""
    from benchmark.analysis import summary_table

    rows = []
    groups = [("none", 0.0, "none")] + [("gan-synthetic", r, "none") for r in (1 / 6, 3 / 6, 5 / 6)] + [("gan-synthetic", 0.5, "qc")]
    for seed in (0, 1, 2):
        for attack, rate, defense in groups:
            for case in range(4):
                value = 0.9 - 0.2 * rate + 0.01 * seed - 0.005 * case
                rows.append(dict(segmenter="unet", attack=attack, rate=rate, defense=defense, seed=seed, cell=f"{attack}{rate}{defense}{seed}",
                                 case=f"c{case}", dice=value, accuracy=value, sensitivity=value))
    cases = pd.DataFrame(rows)
    cells = cases.drop_duplicates("cell")[["cell", "segmenter", "attack", "rate", "defense", "seed"]].assign(attack_report=[{}] * 15, defense_report=[{}] * 15)
    return summary_table(cells, cases)


def test_dose_response(tmp_path):
    out = plot_dose_response(_summary(), "gan-synthetic", tmp_path / "d" / "dose.png")
    assert _png(out)


def test_a_style_another_library_set_globally_does_not_reach_the_figures(tmp_path):
    import matplotlib

    plain = plot_dose_response(_summary(), "gan-synthetic", tmp_path / "plain.png").read_bytes()
    # what seaborn.set(font_scale=2.5), which nnU-Net's trainer calls, does to the process
    leaked = {"font.size": 30.0, "axes.labelsize": 30.0, "xtick.labelsize": 27.5, "axes.facecolor": "#EAEAF2"}
    with matplotlib.rc_context(leaked):
        drawn = plot_dose_response(_summary(), "gan-synthetic", tmp_path / "leaked.png").read_bytes()
        assert matplotlib.rcParams["font.size"] == 30.0  # the caller's style is left as it was
    assert drawn == plain


def test_a_dollar_in_a_name_is_text(tmp_path):
    summary = _summary()
    name = "gan $\\foo$ {"  # not valid TeX: drawn as mathtext it would raise
    summary["attack"] = summary["attack"].str.replace("gan-synthetic", name, regex=False)
    assert _png(plot_dose_response(summary, name, tmp_path / "dollar.png"))


def test_dose_response_unknown_attack_still_writes(tmp_path):
    assert _png(plot_dose_response(_summary(), "blur", tmp_path / "blur.png"))


class _CountingNumpy:
    """numpy, with the sizes of the arrays `array_equal` compares recorded."""

    def __init__(self):
        self.sizes: list[int] = []

    def __getattr__(self, name):
        return getattr(np, name)

    def array_equal(self, a, b):
        self.sizes.append(np.asarray(a).size)
        return np.array_equal(a, b)


def test_added_copy_is_found_comparing_whole_cases_only_with_candidates(monkeypatch):
    from benchmark import figures

    rng = np.random.default_rng(3)
    cases, slices, size = 40, 6, 8
    clean = SliceSet.create(
        rng.normal(size=(cases * slices, 2, size, size)).astype(np.float32),
        rng.integers(0, 4, size=(cases * slices, size, size)).astype(np.uint8),
        [f"c{i:02d}" for i in range(cases) for _ in range(slices)], ("ct", "t1ce"),
    )
    copy = clean.subset(["c27"])
    images = copy.images.copy()
    images[:, 1] += 1.0  # a new target channel; the source channel and the masks stay
    added = copy.with_arrays(images=images, case_ids=np.array(["copy-3"] * slices), poisoned=np.ones(slices, bool))
    poisoned = SliceSet.concatenate([clean, added])
    counting = _CountingNumpy()
    monkeypatch.setattr(figures, "np", counting)
    assert figures.original_case("copy-3", clean, poisoned) == "c27"
    whole_case = slices * size * size
    assert sum(s >= whole_case for s in counting.sizes) == 2  # the masks and the source channel of c27 alone


def test_a_settings_dose_response_file_is_named_like_its_examples(tmp_path):
    from benchmark.paths import safe_file_name
    from benchmark.sweep import draw_dose_response

    summary = _summary()
    label = 'gan-synthetic (epochs=6, source=["t1", "t2", "flair"])'
    summary["attack"] = summary["attack"].str.replace("gan-synthetic", label, regex=False)
    draw_dose_response(summary, tmp_path)
    assert [p.name for p in tmp_path.glob("*.png")] == [f"{safe_file_name(label)}-dose-response.png"]
    assert not any(c in p.name for p in tmp_path.glob("*.png") for c in ' "[]()')
