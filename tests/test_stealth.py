"""The stealth loss: defense statistics made differentiable, matched to a reference of real slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark import STEALTH_PARTS, StealthEncoder, StealthLoss, quality_statistics, radial_log_spectrum
from defenses.mriqc import _brain_mask, quality_measures
from defenses.spectral import radial_spectrum

SIZE = 32


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _slices(n: int, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """Head discs of smooth random anatomy plus white noise, z-scored over the head, zero outside: ``[n, SIZE, SIZE]``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    out = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        radius = rng.uniform(0.36, 0.44)
        head = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < radius**2
        phase = rng.uniform(0, 2 * np.pi, 3)
        smooth = np.sin(7 * yy + phase[0]) + np.cos(5 * xx + phase[1]) + 0.5 * np.sin(11 * (xx + yy) + phase[2])
        image = smooth + noise * rng.standard_normal((SIZE, SIZE))
        image = (image - image[head].mean()) / image[head].std()
        out[i] = np.where(head, image, 0.0)
    return out


def _batch(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images).unsqueeze(1)
    return x, (x != 0).float()


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return _slices(48, seed=0)


@pytest.fixture(scope="module")
def loss(reference) -> StealthLoss:
    return StealthLoss(reference)


def test_loss_is_zero_on_the_reference_itself(loss, reference):
    x, head = _batch(reference)
    parts = loss.parts(x, head)
    assert set(parts) == set(STEALTH_PARTS)
    assert all(float(v) < 1e-8 for v in parts.values()), parts


def test_fresh_real_slices_stay_close(loss):
    """Other slices drawn like the reference: each part stays far below the one-spread level of 1."""
    x, head = _batch(_slices(32, seed=1))
    parts = loss.parts(x, head)
    assert all(float(v) < 0.3 for v in parts.values()), parts


def _blur(x: torch.Tensor, head: torch.Tensor, passes: int) -> torch.Tensor:
    for _ in range(passes):
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return x * head


# each distortion at growing strength, and the part it must raise
DISTORTIONS = [
    ("quality", lambda x, head, s: x * (1 + s)),  # intensity scale
    ("quality", lambda x, head, s: (x + s) * head),  # intensity shift
    ("spectrum", lambda x, head, s: _blur(x, head, int(s * 2))),  # blur: high frequencies lost
    ("features", lambda x, head, s: (x + 2 * s * (torch.linspace(-1, 1, SIZE) ** 2).view(1, 1, -1, 1)) * head),  # shading
]


@pytest.mark.parametrize("part, distort", DISTORTIONS)
def test_each_part_grows_as_images_move_away(loss, part, distort):
    x, head = _batch(_slices(32, seed=2))
    values = [float(loss.parts(distort(x, head, s), head)[part]) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert values[-1] > 1.0 > 0.3 > values[0], values


def test_noise_level_shows_in_quality_and_spectrum(loss):
    smooth, head = _batch(_slices(32, seed=3, noise=0.0))
    noisy, _ = _batch(_slices(32, seed=3, noise=1.5))
    base = loss.parts(_batch(_slices(32, seed=3))[0], head)
    for name in ("quality", "spectrum"):
        assert float(loss.parts(smooth, head)[name]) > 3 * float(base[name]) + 0.5
        assert float(loss.parts(noisy, head)[name]) > 3 * float(base[name]) + 0.5


def test_gradients_reach_the_head_only(loss):
    x, head = _batch(_slices(8, seed=4))
    x = (x * 1.5).requires_grad_(True)
    loss(x, head).backward()
    grad = x.grad
    assert torch.isfinite(grad).all()
    assert grad[head.bool()].abs().sum() > 0
    assert grad[~head.bool()].abs().sum() == 0  # the attack's output is zeroed there


def test_each_part_has_a_gradient(loss):
    x, head = _batch(_slices(8, seed=5))
    x = _blur(x * 1.3, head, 1).requires_grad_(True)
    for name, value in loss.parts(x, head).items():
        (grad,) = torch.autograd.grad(value, x, retain_graph=True)
        assert grad.abs().sum() > 0, name


def test_descending_the_loss_moves_statistics_to_the_reference(loss):
    """A few gradient steps on blurred, rescaled slices lower every part."""
    x, head = _batch(_slices(8, seed=6))
    x = _blur(x * 1.8, head, 2).clone().requires_grad_(True)
    start = {k: float(v.detach()) for k, v in loss.parts(x, head).items()}
    optimiser = torch.optim.Adam([x], lr=0.05)
    for _ in range(30):
        optimiser.zero_grad()
        loss(x, head).backward()
        optimiser.step()
    end = {k: float(v.detach()) for k, v in loss.parts(x, head).items()}
    assert sum(end.values()) < 0.5 * sum(start.values()), (start, end)


def test_deterministic_and_leaves_the_global_generator_alone(reference):
    x, head = _batch(_slices(8, seed=7))
    state = torch.random.get_rng_state()
    first, second = StealthLoss(reference), StealthLoss(reference)
    assert torch.equal(state, torch.random.get_rng_state())
    assert float(first(x * 1.2, head)) == float(second(x * 1.2, head))
    for name, buffer in first.named_buffers():
        assert torch.equal(buffer, dict(second.named_buffers())[name]), name
    weights = lambda e: torch.cat([p.flatten() for p in e.parameters()])  # noqa: E731
    assert torch.equal(weights(StealthEncoder(8, seed=1)), weights(StealthEncoder(8, seed=1)))
    assert not torch.equal(weights(StealthEncoder(8, seed=1)), weights(StealthEncoder(8, seed=2)))
    assert not any(p.requires_grad for p in first.encoder.parameters())


def test_spectrum_is_the_spectral_defense_s():
    images = _slices(4, seed=8)
    ours = radial_log_spectrum(torch.from_numpy(images).unsqueeze(1), 24).double().numpy()
    np.testing.assert_allclose(ours, radial_spectrum(images, 24), atol=1e-5)


def test_quality_follows_mriqc_on_one_slice():
    """log SNR and EFC of a one-slice case agree with mriqc's own measures."""
    images = _slices(3, seed=9)
    x, head = _batch(images)
    centres = torch.linspace(-2, 2, 8)
    ours = quality_statistics(x, head, centres).double().numpy()
    for i in range(len(images)):
        theirs = quality_measures(images[i : i + 1], images[i : i + 1] != 0)
        assert ours[i, 2] == pytest.approx(theirs[0], abs=1e-3)  # log SNR
        assert ours[i, 5] == pytest.approx(theirs[3], abs=1e-4)  # EFC


def test_brain_is_mriqc_s_eroded_head():
    from benchmark.stealth import _brain

    images = _slices(4, seed=10)
    x, head = _batch(images)
    brain, _ = _brain(head, 0.12)
    np.testing.assert_array_equal(brain[:, 0].bool().numpy(), _brain_mask(images != 0, 0.12))


def test_a_batch_without_head_adds_nothing(loss):
    x = torch.randn(4, 1, SIZE, SIZE, requires_grad=True)
    value = loss(x, torch.zeros_like(x))
    assert float(value.detach()) == 0.0
    value.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) == 0.0


def test_bad_reference_is_refused():
    with pytest.raises(ValueError, match="shape"):
        StealthLoss(np.zeros((4, 2, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match="at least 2 reference slices"):
        StealthLoss(np.zeros((4, SIZE, SIZE), np.float32))


def test_a_large_reference_is_measured_on_evenly_spaced_slices(reference):
    """``max_slices`` keeps every k-th slice: the same statistics as measuring those slices alone."""
    doubled = np.concatenate([reference, reference])  # 96 slices, every other one kept of 48 picked
    sampled = StealthLoss(doubled, max_slices=48)
    x, head = _batch(_slices(8, seed=11))
    assert float(sampled(x, head)) == pytest.approx(float(StealthLoss(doubled[np.linspace(0, 95, 48).round().astype(int)])(x, head)), rel=1e-6)
