"""``spectral-signatures``: squared projection on the top singular direction of encoder representations.

Reference: Tran, Li, Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018. A
model is trained briefly on the (possibly poisoned) training set; each case's
representation is the per-slice encoder summary (channel means and standard deviations,
plus channel means inside the target mask) averaged over its slices; representations are
standardised per feature and centred; the score is the squared projection on the top
right singular vector. Tran et al. remove the top ~1.5 × the expected poison fraction
(``budget``).

Centring: the paper centres on the mean of all cases. When half the set is poisoned,
that mean sits between the two groups and both project alike, so with ``center: auto``
(the default) the representations are centred on the mean of the trusted cases whenever
a trusted set is given — the top direction then points from clean to poisoned data.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from benchmark import Defense, DefenseParams, SliceSet, register_defense

from ._stats import case_means, task_arrays

__all__ = ["SpectralSignaturesDefense", "signature_scores"]


def signature_scores(representations: np.ndarray, centre_rows: np.ndarray | None = None) -> np.ndarray:
    """Squared projections on the top singular direction (Tran et al. 2018).

    Args:
        representations: ``[n, D]``.
        centre_rows: boolean ``[n]``: centre on the mean of these rows; None = all rows.

    Returns:
        ``[n]`` scores.
    """
    reps = np.asarray(representations, dtype=np.float64)
    scale = reps.std(axis=0)
    reps = reps / np.where(scale > 1e-12, scale, 1.0)
    if centre_rows is None or not np.any(centre_rows):
        centred = reps - reps.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return (centred @ vt[0]) ** 2
    centre_rows = np.asarray(centre_rows, dtype=bool)
    centred = reps - reps[centre_rows].mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projection = centred @ vt[0]
    # a centre row is measured from the mean of the *other* centre rows (leave-one-out), so
    # that trusted cases' scores are out-of-sample like everyone else's
    k = int(centre_rows.sum())
    if k > 1:
        projection[centre_rows] *= k / (k - 1)
    return projection**2


@register_defense("spectral-signatures")
class SpectralSignaturesDefense(Defense):
    """Tran et al. 2018: top singular direction of centred encoder representations, score = squared projection."""

    class Params(DefenseParams):
        encoder: Literal["trained", "random"] = Field(
            "trained", description="encoder weights: briefly trained on the whole training set, or fixed random"
        )
        epochs: int = Field(5, ge=1, le=1000, description="training passes of the encoder over the training slices")
        width: int = Field(8, ge=2, le=128, description="width of the encoder's first level (then 2x, 4x)")
        use_masks: bool = Field(True, description="add each channel's mean inside the target mask to the representation")
        center: Literal["auto", "all", "trusted"] = Field(
            "auto", description="centre on the mean of all cases (Tran et al.) or of the trusted cases; auto: trusted when given"
        )

    def __init__(self, **params):
        super().__init__(**params)
        self.trusted_cases: set[str] = set()

    def fit(self, trusted: SliceSet | None) -> None:
        self.trusted_cases = set(trusted.cases) if trusted is not None else set()
        if self.params.center == "trusted" and not self.trusted_cases:
            raise ValueError("spectral-signatures: center 'trusted' needs trusted cases (split.trusted > 0)")

    def score(self, train: SliceSet) -> dict[str, float]:
        import torch

        from benchmark import fit_binary_segmentation

        from ._networks import TinySegNet, encode

        images, masks = task_arrays(train, self.context)
        torch.manual_seed(self.context.seed)
        net = TinySegNet(images.shape[1], self.params.width)
        if self.params.encoder == "trained":
            fit_binary_segmentation(
                net, images, masks, self.context, self.params.epochs, batch_size=16, lr=3e-3,
                description="spectral-signatures encoder",
            )
        per_slice = encode(net, images, masks if self.params.use_masks else None, self.context.device)
        cases, reps = case_means(per_slice, train.case_ids)
        centre_rows = None
        if self.params.center in ("auto", "trusted") and self.trusted_cases:
            centre_rows = np.array([case in self.trusted_cases for case in cases])
        return dict(zip(cases, map(float, signature_scores(reps, centre_rows))))
