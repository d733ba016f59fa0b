"""Templates of `bench new` (Jinja2): a working plugin module and its test, per kind.

Each template is rendered with ``name`` (the registered name), ``module`` (its Python
module), ``cls`` (its class), ``summary`` (the one-line docstring ``bench list`` shows)
and ``summary_lower`` (the same, starting in lower case). They live in a module rather
than in data files so that every installation of the package carries them.
"""

from __future__ import annotations

__all__ = ["TEMPLATES"]

#: kind -> (plugin module template, test module template)
TEMPLATES: dict[str, tuple[str, str]] = {
    'attack': (
        r'''"""``{{ name }}``: {{ summary_lower }}

A starting point made by ``bench new attack {{ name }}``: it works as it stands (Gaussian
noise on the target channel of the chosen cases). Replace `alter_case` with the change
your attack makes, and the parameters with its own. `IntensityAttack` does the rest:
it picks ``round(rate x cases)`` whole cases (nested across rates, `select_cases`), gives
each case its own generator, sets the ``poisoned`` flags, and normalises the new
intensities as the data set normalised the real ones (its mask and rule). An attack that
changes labels rather than intensities subclasses `CaseAttack` and implements
`corrupt_case` instead.

Install it through an entry point of your package (``pyproject.toml``)::

    [project.entry-points."poisonbench.attacks"]
    {{ name }} = "{{ module }}:{{ cls }}"

Keep torch out of the module's top level (import it inside methods, or keep networks in a
module of their own), so that ``bench list`` and ``bench validate`` start without it.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from benchmark import CaseNormalisation, IntensityAttack, PluginParams, register_attack

__all__ = ["{{ cls }}"]


@register_attack("{{ name }}")
class {{ cls }}(IntensityAttack):
    """{{ summary }}"""

    #: the parameters at which `alter_case` returns the real channel (the attack at strength 0)
    neutral_params = {"strength": 0.0}

    class Params(PluginParams):
        target: str = Field("t1ce", min_length=1, description="channel the attack rewrites")
        strength: float = Field(
            0.5, ge=0.0, le=10.0, description="standard deviation of the noise, in the channel's normalised units"
        )

    def alter_case(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        channels: tuple[str, ...],
        rng: np.random.Generator,
        normalisation: CaseNormalisation,
    ) -> np.ndarray:
        """New intensities of the target channel for one case.

        Args:
            images: float32 ``[S, C, H, W]``, every (real) slice of the case.
            labels: uint8 ``[S, H, W]`` in the common convention.
            channels: channel names of ``images``.
            rng: the case's own generator (the same at every rate).
            normalisation: the data set's mask and rule.

        Returns:
            float ``[S, H, W]``.
        """
        real = np.asarray(images[:, self.channel_of("target", channels)], dtype=np.float32)
        return real + self.params.strength * rng.standard_normal(real.shape).astype(np.float32)
''',
        r'''"""Tests of the ``{{ name }}`` attack: its parameters, and what ``poison`` promises."""

from __future__ import annotations

import numpy as np
import pytest

import {{ module }}  # noqa: F401  (importing the module registers the attack)
from benchmark import ZSCORE, ConfigError, SliceSet, create_attack

CHANNELS = ("t1", "t1ce")


def toy_slices(cases: int = 6, slices: int = 3, size: int = 16, seed: int = 0) -> SliceSet:
    """``cases`` cases of ``slices`` z-scored slices ``[N, 2, size, size]`` with a bright, enhancing square."""
    rng = np.random.default_rng(seed)
    n = cases * slices
    images = rng.normal(size=(n, len(CHANNELS), size, size)).astype(np.float32)
    images[:, :, 4:8, 4:8] += 2.0
    labels = np.zeros((n, size, size), dtype=np.uint8)
    labels[:, 4:8, 4:8] = 3  # enhancing tumour in the common convention
    case_ids = [f"case{i:02d}" for i in range(cases) for _ in range(slices)]
    return SliceSet.create(images, labels, case_ids, CHANNELS, norm_masks=np.ones((n, size, size), bool), normalisation=ZSCORE)


def test_parameters_have_defaults_and_bad_values_are_refused():
    assert create_attack("{{ name }}").params.target == "t1ce"
    with pytest.raises(ConfigError, match="strength"):
        create_attack("{{ name }}", strength=-1.0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_attack("{{ name }}", no_such_parameter=1)


def test_poison_rewrites_the_target_channel_of_the_chosen_cases_only():
    train = toy_slices()
    attack = create_attack("{{ name }}")
    attack.fit(train, np.random.default_rng(0))
    poisoned = attack.poison(train, 0.5, np.random.default_rng(0))
    assert poisoned.images.shape == train.images.shape and poisoned.channels == train.channels
    chosen = poisoned.poisoned_cases()
    assert len(chosen) == 3  # round(0.5 x 6) whole cases
    target = train.channel_index("t1ce")
    for case in train.cases:
        rows = train.case_ids == case
        changed = not np.array_equal(poisoned.images[rows, target], train.images[rows, target])
        assert changed == (case in chosen), case
        assert np.array_equal(poisoned.images[rows, train.channel_index("t1")], train.images[rows, train.channel_index("t1")])
        assert np.array_equal(poisoned.labels[rows], train.labels[rows])
    assert np.isfinite(poisoned.images).all()


def test_rate_zero_poisons_nothing():
    train = toy_slices()
    attack = create_attack("{{ name }}")
    attack.fit(train, np.random.default_rng(0))
    clean = attack.poison(train, 0.0, np.random.default_rng(0))
    assert clean.poisoned_cases() == [] and np.array_equal(clean.images, train.images)
''',
    ),
    'defense': (
        r'''"""``{{ name }}``: {{ summary_lower }}

A starting point made by ``bench new defense {{ name }}``: it works as it stands. Each
case is described by the mean and spread of its intensities (over the head, per
channel); a case scores by how far its description lies from the trusted cases' (robust
z-scores: median and MAD), or from the training set's own when there are no trusted
cases. Replace `features` (or `score`) with your own test. The decision rule (``budget``,
``quantile``, ``mad_k``) comes from `DefenseParams`; the harness shows a defense images
and masks under opaque case ids only.

Install it through an entry point of your package (``pyproject.toml``)::

    [project.entry-points."poisonbench.defenses"]
    {{ name }} = "{{ module }}:{{ cls }}"

Keep torch out of the module's top level (import it inside methods, or keep networks in a
module of their own), so that ``bench list`` and ``bench validate`` start without it.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from benchmark import Defense, DefenseParams, SliceSet, register_defense

__all__ = ["{{ cls }}"]


@register_defense("{{ name }}")
class {{ cls }}(Defense):
    """{{ summary }}"""

    #: parameters that name channels of the data set (checked by ``bench validate``)
    channel_parameters = ("channels",)

    class Params(DefenseParams):
        channels: list[str] | None = Field(None, description="channels to describe; default: the task's input channels")
        floor: float = Field(1e-3, gt=0.0, description="smallest spread of a feature across the reference cases")

    def __init__(self, **params):
        super().__init__(**params)
        self.reference: dict[str, np.ndarray] = {}

    def features(self, data: SliceSet) -> dict[str, np.ndarray]:
        """Per case: mean and standard deviation of each channel over the head (non-zero voxels).

        Returns:
            case id -> float ``[2 x channels]``.
        """
        channels = list(self.params.channels or self.context.inputs)
        images = data.select_channels(channels)  # [N, C, H, W]; names a missing channel with the available ones
        head = np.any(images != 0, axis=1)  # [N, H, W]
        out = {}
        for case in data.cases:
            rows = data.case_ids == case
            voxels = images[rows].transpose(1, 0, 2, 3)[:, head[rows]]  # [C, voxels]
            out[case] = np.concatenate([voxels.mean(axis=1), voxels.std(axis=1)]) if voxels.size else np.zeros(2 * len(channels))
        return out

    def fit(self, trusted: SliceSet | None) -> None:
        """Describe the trusted cases (None: the training set will be its own reference)."""
        self.reference = self.features(trusted) if trusted is not None else {}

    def score(self, train: SliceSet) -> dict[str, float]:
        """Largest robust z-score of a case's features; a case is left out of its own reference."""
        described = self.features(train)
        reference = self.reference or described
        scores = {}
        for case, value in described.items():
            others = np.stack([v for c, v in reference.items() if c != case] or list(reference.values()))
            centre = np.median(others, axis=0)
            spread = np.maximum(1.4826 * np.median(np.abs(others - centre), axis=0), self.params.floor)
            scores[case] = float(np.max(np.abs(value - centre) / spread))
        return scores
''',
        r'''"""Tests of the ``{{ name }}`` defense: its parameters, and that it finds an obvious outlier."""

from __future__ import annotations

import numpy as np
import pytest

import {{ module }}  # noqa: F401  (importing the module registers the defense)
from benchmark import ConfigError, DataError, SliceSet, create_defense

CHANNELS = ("t1", "t1ce")


def toy_slices(cases: int = 8, slices: int = 3, size: int = 16, seed: int = 0) -> SliceSet:
    """``cases`` cases ``[N, 2, size, size]`` of noise on a square head; the last case is three times as bright."""
    rng = np.random.default_rng(seed)
    n = cases * slices
    images = np.zeros((n, len(CHANNELS), size, size), dtype=np.float32)
    images[:, :, 2:-2, 2:-2] = rng.normal(1.0, 0.2, size=(n, len(CHANNELS), size - 4, size - 4))
    images[-slices:] *= 3.0
    labels = np.zeros((n, size, size), dtype=np.uint8)
    case_ids = [f"case{i:02d}" for i in range(cases) for _ in range(slices)]
    return SliceSet.create(images, labels, case_ids, CHANNELS)


def test_parameters_have_defaults_and_bad_values_are_refused():
    assert create_defense("{{ name }}").params.channels is None
    with pytest.raises(ConfigError, match="budget"):
        create_defense("{{ name }}", budget=2.0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_defense("{{ name }}", no_such_parameter=1)


@pytest.mark.parametrize("trusted_cases", [0, 3])
def test_the_outlier_scores_highest_and_is_removed(trusted_cases):
    train = toy_slices()
    defense = create_defense("{{ name }}", budget=0.125)  # one case of eight
    defense.fit(train.subset(train.cases[:trusted_cases]) if trusted_cases else None)
    scores = defense.score(train)
    assert sorted(scores) == sorted(train.cases) and all(np.isfinite(list(scores.values())))
    assert max(scores, key=scores.get) == "case07"
    assert defense.decide(scores) == ["case07"]


def test_a_missing_channel_is_named():
    defense = create_defense("{{ name }}", channels=["flair"])
    with pytest.raises(DataError, match="flair"):
        defense.score(toy_slices())
''',
    ),
    'segmenter': (
        r'''"""``{{ name }}``: {{ summary_lower }}

A starting point made by ``bench new segmenter {{ name }}``: it works as it stands (one
intensity threshold on the first input channel, the one that fits the training masks
best). Replace `fit` and `predict` with your model. A torch network imports torch inside
them (or lives in a module of its own) and can train through the harness's loop::

    from benchmark import fit_binary_segmentation, predict_binary_segmentation

    self.net = MyNet(images.shape[1])
    fit_binary_segmentation(self.net, images, masks, self.context, epochs, batch_size, lr)
    ...
    return predict_binary_segmentation(self.net, images, self.context)

Install it through an entry point of your package (``pyproject.toml``)::

    [project.entry-points."poisonbench.segmenters"]
    {{ name }} = "{{ module }}:{{ cls }}"
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from benchmark import PluginParams, Segmenter, register_segmenter

__all__ = ["{{ cls }}"]


@register_segmenter("{{ name }}")
class {{ cls }}(Segmenter):
    """{{ summary }}"""

    class Params(PluginParams):
        candidates: int = Field(64, ge=2, le=4096, description="thresholds tried, evenly spaced between the 1st and 99th percentile")

    def __init__(self, **params):
        super().__init__(**params)
        self.threshold: float | None = None

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Choose the threshold with the best Dice over all training pixels.

        Args:
            images: float32 ``[N, C, H, W]``, the task's input channels.
            masks: uint8 ``[N, H, W]``, 1 inside the target region.
        """
        values = np.asarray(images[:, 0], dtype=np.float32).ravel()
        truth = np.asarray(masks).ravel() > 0
        low, high = np.percentile(values, [1, 99])
        best = -1.0
        for threshold in np.linspace(low, high, self.params.candidates):
            predicted = values > threshold
            dice = 2 * np.count_nonzero(predicted & truth) / max(np.count_nonzero(predicted) + np.count_nonzero(truth), 1)
            if dice > best:
                best, self.threshold = dice, float(threshold)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Masks uint8 ``[N, H, W]`` (0 or 1) of ``images`` float32 ``[N, C, H, W]``."""
        if self.threshold is None:
            raise RuntimeError("{{ name }}: call fit() before predict()")
        return (np.asarray(images[:, 0]) > self.threshold).astype(np.uint8)
''',
        r'''"""Tests of the ``{{ name }}`` segmenter: its parameters, and that it learns an easy target."""

from __future__ import annotations

import numpy as np
import pytest

import {{ module }}  # noqa: F401  (importing the module registers the segmenter)
from benchmark import ConfigError, create_segmenter


def toy_task(n: int = 12, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 ``[n, 1, size, size]`` (noise, a bright square somewhere) and its masks uint8 ``[n, size, size]``."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 1, size, size)).astype(np.float32) * 0.3
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i, (row, col) in enumerate(rng.integers(0, size - 5, size=(n, 2))):
        masks[i, row : row + 5, col : col + 5] = 1
    images[:, 0] += 3.0 * masks
    return images, masks


def test_parameters_have_defaults_and_bad_values_are_refused():
    create_segmenter("{{ name }}")
    with pytest.raises(ConfigError):
        create_segmenter("{{ name }}", candidates=0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_segmenter("{{ name }}", no_such_parameter=1)


def test_fit_then_predict_segments_held_out_images():
    segmenter = create_segmenter("{{ name }}")
    segmenter.fit(*toy_task(seed=0))
    images, masks = toy_task(seed=1)
    predicted = segmenter.predict(images)
    assert predicted.shape == masks.shape and predicted.dtype == np.uint8
    assert set(np.unique(predicted)) <= {0, 1}
    dice = 2 * np.count_nonzero(predicted & masks) / (np.count_nonzero(predicted) + np.count_nonzero(masks))
    assert dice > 0.9
''',
    ),
    'dataset': (
        r'''"""``{{ name }}``: {{ summary_lower }}

A starting point made by ``bench new dataset {{ name }}``: it works as it stands (small
generated cases: a disk of noise with a bright, labelled tumour). Replace `load` with a
reader of your data; keep `channels` (known without loading, so ``bench validate`` can
check the channel names a config uses) and `fingerprint` (a hash of everything that
determines the data: a changed data set must never reuse results).

Labels are stored in the common convention (0 background, 1 necrotic core, 2 edema, 3
enhancing tumour; `benchmark.regions`); map your source's values with
`to_common_labels`. Intensities are z-scored per case and channel over the brain mask,
recorded on the `SliceSet` (``norm_masks``, ``normalisation``) for attacks that write
intensities. A reader of files on disk returns their folder from `protected_folders`.

Install it through an entry point of your package (``pyproject.toml``)::

    [project.entry-points."poisonbench.datasets"]
    {{ name }} = "{{ module }}:{{ cls }}"
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from pydantic import Field

from benchmark import ZSCORE, DatasetSource, PluginParams, SliceSet, register_dataset

__all__ = ["{{ cls }}"]

CHANNELS = ("t1", "t1ce")
#: bump when `load` changes what it yields for the same parameters
VERSION = "1"


@register_dataset("{{ name }}")
class {{ cls }}(DatasetSource):
    """{{ summary }}"""

    class Params(PluginParams):
        cases: int = Field(12, ge=2, le=10_000, description="number of cases (patients)")
        slices: int = Field(4, ge=1, le=512, description="axial slices per case")
        size: int = Field(32, ge=16, le=512, description="in-plane size of each slice (pixels)")
        seed: int = Field(0, ge=0, description="seed of the generator")

    def channels(self) -> tuple[str, ...]:
        return CHANNELS

    def fingerprint(self) -> str:
        payload = {"name": self.name, "params": self.params.model_dump(mode="json"), "version": VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def load(self) -> SliceSet:
        """Every case: images float32 ``[cases x slices, 2, size, size]``, labels uint8 ``[N, size, size]``."""
        p = self.params
        rng = np.random.default_rng(p.seed)
        grid = np.mgrid[0 : p.size, 0 : p.size] - (p.size - 1) / 2
        brain = np.hypot(*grid) < 0.42 * p.size  # [size, size]
        images = np.zeros((p.cases * p.slices, len(CHANNELS), p.size, p.size), dtype=np.float32)
        labels = np.zeros((p.cases * p.slices, p.size, p.size), dtype=np.uint8)
        for case in self.context.track(range(p.cases), f"generating {self.name}", total=p.cases):
            centre = rng.uniform(-0.15, 0.15, size=2) * p.size
            radius = rng.uniform(0.08, 0.15) * p.size
            tumour = np.hypot(grid[0] - centre[0], grid[1] - centre[1]) < radius
            for k in range(p.slices):
                row = case * p.slices + k
                labels[row][tumour & brain] = 3  # enhancing tumour
                for c in range(len(CHANNELS)):
                    image = rng.normal(1.0, 0.1, size=brain.shape) + (1.5 if CHANNELS[c] == "t1ce" else 0.3) * tumour
                    images[row, c] = np.where(brain, image, 0.0)
            rows = slice(case * p.slices, (case + 1) * p.slices)
            inside = images[rows][:, :, brain]  # [slices, channels, voxels]
            mean = inside.mean(axis=(0, 2))[None, :, None, None]
            std = inside.std(axis=(0, 2))[None, :, None, None] + 1e-6
            images[rows] = np.where(brain, (images[rows] - mean) / std, 0.0)  # z-score over the brain
        case_ids = [f"{self.name}-{case:03d}" for case in range(p.cases) for _ in range(p.slices)]
        masks = np.broadcast_to(brain, labels.shape)
        return SliceSet.create(images, labels, case_ids, CHANNELS, norm_masks=masks, normalisation=ZSCORE)
''',
        r'''"""Tests of the ``{{ name }}`` data set: its parameters, what ``load`` yields, and its fingerprint."""

from __future__ import annotations

import numpy as np
import pytest

import {{ module }}  # noqa: F401  (importing the module registers the data set)
from benchmark import ConfigError, create_dataset, region_mask


def test_parameters_have_defaults_and_bad_values_are_refused():
    create_dataset("{{ name }}")
    with pytest.raises(ConfigError, match="cases"):
        create_dataset("{{ name }}", cases=1)
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_dataset("{{ name }}", no_such_parameter=1)


def test_load_yields_the_declared_channels_and_whole_cases():
    source = create_dataset("{{ name }}", cases=3, slices=2, size=16)
    data = source.load()
    assert data.channels == source.channels()
    assert data.images.shape == (6, len(data.channels), 16, 16) and data.images.dtype == np.float32
    assert data.labels.shape == (6, 16, 16) and data.labels.dtype == np.uint8
    assert len(data.cases) == 3 and not data.poisoned.any()
    assert set(np.unique(data.labels)) <= {0, 1, 2, 3} and region_mask(data.labels, "ET").any()
    assert np.isfinite(data.images).all()


def test_fingerprint_is_stable_and_follows_the_parameters():
    first = create_dataset("{{ name }}", seed=0).fingerprint()
    assert first == create_dataset("{{ name }}", seed=0).fingerprint()
    assert first != create_dataset("{{ name }}", seed=1).fingerprint()
    same = create_dataset("{{ name }}", seed=0, cases=3, slices=2, size=16)
    assert np.array_equal(same.load().images, create_dataset("{{ name }}", seed=0, cases=3, slices=2, size=16).load().images)
''',
    ),
}
