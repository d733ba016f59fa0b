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


def test_steps_covering_exactly_one_pass_train_as_the_default_epoch():
    runs = []
    for steps in (None, 4):
        torch.manual_seed(0)
        net = RecordingNet()
        history = _fit(net, n=16, epochs=3, batch_size=4, steps_per_epoch=steps, flip_augment=True)
        runs.append((net.batches, history.losses, [p.detach().clone() for p in net.parameters()]))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    for a, b in zip(runs[0][2], runs[1][2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
