"""``loss-filter``: train briefly on the whole training set, flag the cases that stay hard to fit.

Reference: Swayamdipta et al., "Dataset Cartography: Mapping and Diagnosing Datasets
with Training Dynamics", EMNLP 2020. A small segmenter is trained on every training case;
after each epoch the per-case loss (Dice + cross-entropy) and soft Dice are recorded on
the case's slices. A case whose image does not explain its mask — a synthetic image
without the enhancing rim its mask marks, say — keeps a high loss while the clean
majority is learnt. Score: mean per-case loss over the epochs after ``warmup``
(``signal: loss``), or one minus the mean soft Dice (``signal: dice``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from benchmark import Defense, DefenseParams, SliceSet, register_defense

from ._stats import case_order, task_arrays

if TYPE_CHECKING:
    import torch

    from ._networks import TinySegNet

__all__ = ["LossFilterDefense"]


def _slice_signals(net: TinySegNet, images: np.ndarray, masks: np.ndarray, device: str, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice Dice+CE loss and soft Dice, ``([N], [N])``."""
    import torch

    net.eval()
    losses, dices = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)).to(device)
            y = torch.from_numpy(np.ascontiguousarray(masks[start : start + batch_size], dtype=np.float32)).to(device).unsqueeze(1)
            logits = net(x).float()
            prob = torch.sigmoid(logits)
            ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=(1, 2, 3))
            inter = (prob * y).sum(dim=(1, 2, 3))
            dice = (2 * inter + 1e-5) / (prob.sum(dim=(1, 2, 3)) + y.sum(dim=(1, 2, 3)) + 1e-5)
            losses.append((ce + 1 - dice).cpu().numpy())
            dices.append(dice.cpu().numpy())
    net.train()
    return np.concatenate(losses), np.concatenate(dices)


@register_defense("loss-filter")
class LossFilterDefense(Defense):
    """Data-cartography loss filter: train a small segmenter on all cases, flag cases that stay hard to fit."""

    class Params(DefenseParams):
        epochs: int = Field(8, ge=1, le=1000, description="training passes over the training slices")
        warmup: int = Field(2, ge=0, le=1000, description="first epochs left out of the per-case averages")
        width: int = Field(8, ge=2, le=128, description="width of the segmenter's first level (then 2x, 4x)")
        lr: float = Field(3e-3, gt=0, le=1, description="Adam learning rate")
        signal: Literal["loss", "dice"] = Field("loss", description="score by mean per-case loss or by 1 - mean soft Dice")

    def __init__(self, **params):
        super().__init__(**params)
        self.history: dict[str, list[float]] = {}

    def score(self, train: SliceSet) -> dict[str, float]:
        import torch

        from benchmark import fit_binary_segmentation

        from ._networks import TinySegNet

        images, masks = task_arrays(train, self.context)
        cases, rows = case_order(train.case_ids)
        counts = np.bincount(rows, minlength=len(cases)).astype(float)
        per_epoch: list[np.ndarray] = []

        def record(epoch: int, net: torch.nn.Module) -> None:
            if epoch < min(self.params.warmup, self.params.epochs - 1):
                return
            loss, dice = _slice_signals(net, images, masks, self.context.device)
            signal = loss if self.params.signal == "loss" else 1.0 - dice
            per_epoch.append(np.bincount(rows, weights=signal, minlength=len(cases)) / counts)

        torch.manual_seed(self.context.seed)
        net = TinySegNet(images.shape[1], self.params.width)
        fit_binary_segmentation(
            net, images, masks, self.context, self.params.epochs, batch_size=16, lr=self.params.lr,
            description="loss-filter epochs", on_epoch_end=record,
        )
        trajectory = np.stack(per_epoch)  # [epochs recorded, cases]
        self.history = {case: trajectory[:, i].tolist() for i, case in enumerate(cases)}
        return dict(zip(cases, map(float, trajectory.mean(axis=0))))
