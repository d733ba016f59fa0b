"""The shared training loop: what an epoch draws, with and without a fixed step count."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from benchmark import RunContext, fit_binary_segmentation


class RecordingNet(nn.Module):
    """A 1x1 convolution that records which slices (image i is filled with i) each step sees."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.batches: list[list[int]] = []

    def forward(self, x):
        self.batches.append([int(v) for v in x[:, 0, 0, 0].round()])
        return self.conv(x)


def _data(n: int):
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, 4, 4)).copy()
    masks = np.zeros((n, 4, 4), np.uint8)
    masks[:, :2] = 1
    return images, masks


def _fit(net, n, epochs, batch_size, steps_per_epoch=None, flip_augment=False):
    images, masks = _data(n)
    return fit_binary_segmentation(
        net, images, masks, RunContext(device="cpu", seed=0), epochs, batch_size, 1e-3,
        flip_augment=flip_augment, steps_per_epoch=steps_per_epoch,
    )


def test_default_epoch_is_one_pass_over_the_data():
    net = RecordingNet()
    _fit(net, n=7, epochs=2, batch_size=3)
    assert [len(b) for b in net.batches] == [3, 3, 1] * 2
    for epoch in (net.batches[:3], net.batches[3:]):
        assert sorted(i for batch in epoch for i in batch) == list(range(7))


@pytest.mark.parametrize("n", [5, 24, 40])
def test_fixed_steps_per_epoch_draw_every_slice_equally_often(n):
    net = RecordingNet()
    history = _fit(net, n=n, epochs=3, batch_size=4, steps_per_epoch=6)
    assert len(net.batches) == 18 and all(len(b) == 4 for b in net.batches)
    assert len(history.losses) == 3
    for epoch in range(3):
        counts = Counter(i for batch in net.batches[epoch * 6 : epoch * 6 + 6] for i in batch)
        seen = [counts.get(i, 0) for i in range(n)]
        # 24 draws from successive shuffles: every slice as often as any other, to within one
        assert sum(seen) == 24 and max(seen) - min(seen) <= 1


class FlipRecordingNet(nn.Module):
    """Records (slice id, flipped) per row: image i holds 10 * i + column, so a flip shows."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.rows: list[tuple[int, bool]] = []

    def forward(self, x):
        first = x[:, 0, 0, 0].round().long()
        self.rows.extend((int(v) // 10, int(v) % 10 == 3) for v in first)
        return self.conv(x)


def _plain_epoch_schedule(n, batch_size, epochs, seed):
    """The one-pass epoch as the loop drew it before steps_per_epoch existed: one shuffle,
    then one flip flag per slice id."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            rows.extend(zip(index.tolist(), flips[index].tolist()))
    return rows


@pytest.mark.parametrize("steps", [None, 4])
def test_one_pass_draws_exactly_the_plain_shuffled_epoch(steps):
    n, batch_size, epochs = 16, 4, 3
    images = (10 * np.arange(n, dtype=np.float32)[:, None, None, None] + np.arange(4, dtype=np.float32)).repeat(4, axis=2)
    masks = np.zeros((n, 4, 4), np.uint8)
    masks[:, :, :2] = 1  # left half: a flip changes the target
    net = FlipRecordingNet()
    fit_binary_segmentation(
        net, images, masks, RunContext(device="cpu", seed=5), epochs, batch_size, 1e-3, steps_per_epoch=steps
    )
    assert net.rows == _plain_epoch_schedule(n, batch_size, epochs, seed=5)
    assert any(flipped for _, flipped in net.rows) and not all(flipped for _, flipped in net.rows)


def test_an_empty_training_set_is_refused():
    with pytest.raises(ValueError, match="empty"):
        _fit(RecordingNet(), n=0, epochs=1, batch_size=4)
