"""``feature-outlier``: encoder features per case, k-NN (or Mahalanobis) distance from trusted cases.

Reference: the realism / k-NN distance of Kynkäänniemi et al., "Improved Precision and
Recall Metric for Assessing Generative Models", NeurIPS 2019, applied to the features of
a segmentation encoder. The encoder is a small segmenter briefly trained on the trusted
cases (``encoder: trained``) or the same network with fixed random weights
(``encoder: random``). A slice's representation is the mean and standard deviation of
every encoder channel, plus (``use_masks``) the channel means inside the target mask;
slices are averaged per case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from benchmark import Defense, DefenseParams, SliceSet, register_defense

from ._stats import ReferenceDistance, case_means, task_arrays

if TYPE_CHECKING:
    from ._networks import TinySegNet

__all__ = ["FeatureOutlierDefense"]


@register_defense("feature-outlier")
class FeatureOutlierDefense(Defense):
    """Encoder features (segmenter briefly trained on trusted cases, or random convs), distance from trusted cases."""

    requires_trusted = True

    class Params(DefenseParams):
        encoder: Literal["trained", "random"] = Field(
            "trained", description="encoder weights: briefly trained on the trusted cases, or fixed random"
        )
        epochs: int = Field(10, ge=1, le=1000, description="training passes of the encoder over the trusted slices")
        width: int = Field(8, ge=2, le=128, description="width of the encoder's first level (then 2x, 4x)")
        use_masks: bool = Field(True, description="add each channel's mean inside the target mask to the features")
        distance: Literal["knn", "mahalanobis"] = Field(
            "knn", description="mean k-NN distance or Mahalanobis (Ledoit-Wolf / MCD) distance from trusted features"
        )
        k: int = Field(3, ge=1, le=100, description="neighbours of the k-NN distance")

    def __init__(self, **params):
        super().__init__(**params)
        self.net: TinySegNet | None = None
        self.reference: ReferenceDistance | None = None

    def features(self, data: SliceSet) -> tuple[list[str], np.ndarray]:
        """Per-case encoder representation ``[n_cases, D]``."""
        from ._networks import encode

        images, masks = task_arrays(data, self.context)
        per_slice = encode(self.net, images, masks if self.params.use_masks else None, self.context.device)
        return case_means(per_slice, data.case_ids)

    def fit(self, trusted: SliceSet | None) -> None:
        if trusted is None:
            raise ValueError("feature-outlier needs trusted cases (split.trusted > 0)")
        import torch

        from benchmark import fit_binary_segmentation

        from ._networks import TinySegNet

        images, masks = task_arrays(trusted, self.context)
        torch.manual_seed(self.context.seed)
        self.net = TinySegNet(images.shape[1], self.params.width)
        if self.params.encoder == "trained":
            fit_binary_segmentation(
                self.net, images, masks, self.context, self.params.epochs, batch_size=16, lr=3e-3,
                description="feature-outlier encoder",
            )
        cases, feats = self.features(trusted)
        self.reference = ReferenceDistance(self.params.distance, self.params.k).fit(feats, cases)

    def score(self, train: SliceSet) -> dict[str, float]:
        if self.reference is None:
            raise RuntimeError("feature-outlier: call fit() first")
        cases, feats = self.features(train)
        return dict(zip(cases, map(float, self.reference.score(feats, cases))))
