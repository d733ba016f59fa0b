"""Contract of every registered intensity attack: poison is normalised exactly as real data.

On the default data set (synthetic-brats, small): with a perfect generator (the attack's
new intensities are the real target) the poisoned case equals the real one; at the
attack's strength zero (``neutral_params``) it changes nothing; and when the attack writes
intensities with real structure that differ from the real target (a stand-in generator:
the real target under a smooth bias field, as MRI intensity non-uniformity makes it),
its own finishing step leaves no first- or second-order intensity statistic (mean, std,
1st / 99th percentile, fraction of zeros; over the head and over the brain) that tells
poisoned cases from real ones (AUROC <= 0.75). The control finishes the same stand-in by
the old head z-scoring and is caught.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark import ATTACKS, ZSCORE, CaseNormalisation, IntensityAttack, SliceSet, create_attack, create_dataset

KNOWN_INTENSITY_ATTACKS = {"noise", "blur", "intensity-shift", "modality-swap", "gan-synthetic"}
MAX_AUROC = 0.75


def intensity_attacks() -> list[str]:
    ATTACKS.discover()
    return sorted(name for name in ATTACKS.names() if issubclass(ATTACKS.get(name), IntensityAttack))


@pytest.fixture(scope="module")
def brats() -> SliceSet:
    return create_dataset("synthetic-brats", cases=12, slices=4, size=32, seed=0).load()


def neutral_attack(name: str, perfect_generator: bool) -> IntensityAttack:
    """The attack at strength zero; with ``perfect_generator`` its new intensities are the real target."""
    cls = ATTACKS.get(name)
    attack = create_attack(name, **(cls.neutral_params or {}))
    if perfect_generator or cls.neutral_params is None:

        def real_target(images, labels, channels, rng, normalisation):
            return np.array(images[:, attack.channel_of("target", channels)], dtype=np.float32)

        attack.alter_case = real_target  # type: ignore[method-assign]
    return attack


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann-Whitney AUROC of ``positive`` above ``negative`` (ties count one half)."""
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


def case_statistics(data: SliceSet, channel: str) -> dict[str, np.ndarray]:
    """Per case: mean, std, 1st / 99th percentile and fraction of zeros over the head and over the brain."""
    c = data.channel_index(channel)
    rows: dict[str, list[float]] = {}
    for case in data.cases:
        index = np.flatnonzero(data.case_ids == case)
        x = np.asarray(data.images[index, c], dtype=np.float64)
        regions = {"head": x != 0, "brain": np.asarray(data.norm_masks[index])}
        for region, mask in regions.items():
            values = x[mask]
            stats = {
                "mean": values.mean(), "std": values.std(), "p01": np.percentile(values, 1), "p99": np.percentile(values, 99),
                "zeros": float((values == 0).mean()),
            }
            for stat, value in stats.items():  # differences below float32 rounding are ties, not signal
                rows.setdefault(f"{stat} over the {region}", []).append(round(float(value), 5))
    return {key: np.asarray(values) for key, values in rows.items()}


def separation(real: SliceSet, poisoned: SliceSet, channel: str) -> dict[str, float]:
    """How well each statistic separates the poisoned cases from the real ones (0.5: not at all, 1: perfectly)."""
    flags = {case: bool(poisoned.poisoned[poisoned.case_ids == case].any()) for case in poisoned.cases}
    fake = case_statistics(poisoned.subset([c for c, bad in flags.items() if bad]), channel)
    true = case_statistics(real, channel)
    return {key: max(auroc(fake[key], true[key]), auroc(true[key], fake[key])) for key in true}


def test_every_intensity_attack_is_covered():
    assert KNOWN_INTENSITY_ATTACKS <= set(intensity_attacks())


def test_the_default_data_set_records_its_normalisation(brats):
    assert brats.normalisation == ZSCORE and brats.norm_masks is not None and brats.norm_masks.shape == brats.labels.shape
    for case in brats.cases:
        index = np.flatnonzero(brats.case_ids == case)
        mask = np.asarray(brats.norm_masks[index])
        for c in range(len(brats.channels)):
            x = np.asarray(brats.images[index, c])
            assert abs(x[mask].mean()) < 1e-4 and abs(x[mask].std() - 1) < 1e-4
            # the stored image is a fixed point of the recorded rule, off its background
            np.testing.assert_allclose(np.where(x != 0, ZSCORE.normalise(x, mask), 0), x, atol=1e-5)


@pytest.mark.parametrize("name", intensity_attacks())
def test_perfect_generator_gives_back_the_real_case(brats, name):
    attack = neutral_attack(name, perfect_generator=True)
    out = attack.poison(brats, 1.0, np.random.default_rng(0))
    assert out.poisoned.all()
    np.testing.assert_array_equal(out.labels, brats.labels)
    np.testing.assert_allclose(out.images, brats.images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", intensity_attacks())
def test_finish_case_leaves_a_real_case_as_it_is(brats, name):
    attack = create_attack(name)
    target = brats.channel_index(attack.params.target)
    for case in brats.cases[:3]:
        index = np.flatnonzero(brats.case_ids == case)
        real = np.asarray(brats.images[index, target])
        normalisation = CaseNormalisation(brats.norm_mask_rows(index), brats.normalisation)
        np.testing.assert_allclose(attack.finish_case(real, real, normalisation), real, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [n for n in intensity_attacks() if ATTACKS.get(n).neutral_params is not None])
def test_strength_zero_changes_nothing(brats, name):
    attack = neutral_attack(name, perfect_generator=False)
    out = attack.poison(brats, 1.0, np.random.default_rng(0))
    assert out.poisoned.all()
    np.testing.assert_allclose(out.images, brats.images, atol=1e-5, rtol=0)


#: peak relative amplitude of the stand-in's bias field (scanner non-uniformity is of this order)
BIAS_AMPLITUDE = 0.2


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth multiplicative field ``[H, W]`` around 1 for slices ``shape`` ``[S, H, W]``, of random phase."""
    _, h, w = shape
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    phase_x, phase_y = rng.uniform(0, 2 * np.pi, 2)
    return 1 + amplitude * np.sin(2 * np.pi * x + phase_x) * np.cos(np.pi * y + phase_y)


def structured_poison(data: SliceSet, name: str, finish=None, amplitude: float = BIAS_AMPLITUDE) -> tuple[SliceSet, str]:
    """Every case poisoned by ``name`` with a stand-in generator: the real target under a bias field of ``amplitude``.

    The stand-in's output passes through the attack's own `finish_case` (or ``finish``).
    Returns the poisoned set and the attack's target channel.
    """
    attack = create_attack(name, **(ATTACKS.get(name).neutral_params or {}))

    def stand_in(images, labels, channels, rng, normalisation):
        real = np.asarray(images[:, attack.channel_of("target", channels)], dtype=np.float64)
        rng = rng if rng is not None else np.random.default_rng(0)
        return (real * bias_field(real.shape, rng, amplitude)[None]).astype(np.float32)

    attack.alter_case = stand_in  # type: ignore[method-assign]
    if finish is not None:
        attack.finish_case = finish  # type: ignore[method-assign]
    out = attack.poison(data, 1.0, np.random.default_rng(0))
    assert out.poisoned.all()
    return out, attack.params.target


def head_zscore(values: np.ndarray, reference: np.ndarray, normalisation: CaseNormalisation) -> np.ndarray:
    """The old finishing step: z-score over every non-zero voxel of the real channel (the head)."""
    head = np.asarray(reference) != 0
    out = np.zeros(np.shape(values), dtype=np.float32)
    inside = np.asarray(values, dtype=np.float64)[head]
    out[head] = (inside - inside.mean()) / inside.std()
    return out


@pytest.mark.parametrize("name", intensity_attacks())
def test_structured_change_is_not_separable_by_intensity_statistics(brats, name):
    out, target = structured_poison(brats, name)
    t = brats.channel_index(target)
    assert not np.allclose(out.images[:, t], brats.images[:, t], atol=1e-2)  # the stand-in did change the cases
    scores = separation(brats, out, target)
    assert len(scores) == 10  # five statistics, over the head and over the brain
    assert max(scores.values()) <= MAX_AUROC, {k: round(v, 3) for k, v in scores.items() if v > MAX_AUROC}


@pytest.mark.parametrize("name", intensity_attacks())
def test_head_normalisation_would_be_caught(brats, name):
    """Control: the same stand-in finished by the old head z-scoring fails the statistics test."""
    out, target = structured_poison(brats, name, finish=head_zscore)
    scores = separation(brats, out, target)
    assert scores["std over the head"] > 0.95  # exactly 1.000 in every poisoned case
    assert max(scores.values()) > MAX_AUROC


def test_a_large_smooth_change_is_seen(brats):
    """The statistics see an intensity change that is not small, even when finished correctly."""
    out, target = structured_poison(brats, "gan-synthetic", amplitude=0.5)
    assert max(separation(brats, out, target).values()) > MAX_AUROC


def test_unrecorded_normalisation_matches_the_real_moments(toy):
    """A source that records nothing (old add-on readers): new intensities take the real channel's moments."""
    assert toy.normalisation is None and toy.norm_masks is None
    attack = neutral_attack("modality-swap", perfect_generator=False)  # perfect generator: copies the real target
    out = attack.poison(toy, 1.0, np.random.default_rng(0))
    np.testing.assert_allclose(out.images, toy.images, atol=1e-5, rtol=0)
    noisy = create_attack("noise", severity=1.0).poison(toy, 1.0, np.random.default_rng(0))
    t = toy.channel_index("t1ce")
    for case in toy.cases:
        rows = toy.case_ids == case
        real, fake = toy.images[rows, t], noisy.images[rows, t]
        head = real != 0
        assert (fake[~head] == 0).all()
        assert abs(fake[head].mean() - real[head].mean()) < 1e-4 and abs(fake[head].std() - real[head].std()) < 1e-4
