"""``cross-modal``: predict the target modality from the case's other modalities; score the disagreement.

A real T1-Ce agrees with its own T1, T2 and FLAIR (and with its mask: enhancing tumour
is bright on T1-Ce); a synthetic one made from another modality need not. A small
per-voxel model — gradient-boosted trees (scikit-learn's ``HistGradientBoostingRegressor``)
on each voxel's source intensities at three Gaussian scales plus, with ``use_labels``,
its smoothed one-hot tumour labels — is fit on trusted cases to predict the target
channel. Per case, the mean squared residual over the head, over the whole tumour and
over the target region form a residual vector (log scale); its robust Mahalanobis
distance from the trusted cases' residual vectors is the score.

Trusted cases are split into ``folds``: each model is fit on all folds but one, a trusted
case is scored by the model that never saw it, other cases by the mean of all models — so
trusted and untrusted scores are comparable for the quantile rule.

None of the published poisoning toolkits has this check; it suits multi-contrast MRI.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import ndimage

from benchmark import Defense, DefenseParams, SliceSet, region_mask, register_defense

from ._stats import ReferenceDistance, case_order, head_mask

__all__ = ["CrossModalDefense", "voxel_features"]

_LABEL_VALUES = (1, 2, 3)  # common convention: NCR, ED, ET
_SCALES = (0.0, 1.0, 3.0)


def voxel_features(sources: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Per-voxel features ``[N, F, H, W]``: each source channel at Gaussian scales 0, 1, 3 px and,
    with ``labels`` (``[N, H, W]`` common values), each tumour label's indicator at scales 0 and 2 px.

    Args:
        sources: float ``[N, C, H, W]``.
        labels: uint8 ``[N, H, W]`` or None.
    """
    parts = []
    for c in range(sources.shape[1]):
        for sigma in _SCALES:
            image = sources[:, c]
            parts.append(ndimage.gaussian_filter(image, (0, sigma, sigma)) if sigma else image)
    if labels is not None:
        for value in _LABEL_VALUES:
            indicator = (labels == value).astype(np.float32)
            parts.append(indicator)
            parts.append(ndimage.gaussian_filter(indicator, (0, 2.0, 2.0)))
    return np.stack(parts, axis=1).astype(np.float32)


@register_defense("cross-modal")
class CrossModalDefense(Defense):
    """Predict the target modality from the case's other modalities (fit on trusted cases); score the disagreement."""

    requires_trusted = True
    channel_parameters = ("target_channel", "sources")

    class Params(DefenseParams):
        target_channel: str | None = Field(
            None, description="modality checked for consistency; default: the task's first input channel"
        )
        sources: list[str] | None = Field(
            None, description="modalities it is predicted from; default: every other channel except ct"
        )
        use_labels: bool = Field(True, description="also give the model each voxel's (smoothed) tumour labels")
        voxels: int = Field(30_000, ge=100, le=10_000_000, description="head voxels sampled to fit each model")
        iterations: int = Field(100, ge=1, le=10_000, description="boosting iterations per model")
        folds: int = Field(2, ge=2, le=20, description="trusted folds (each model leaves one out)")

    def __init__(self, **params):
        super().__init__(**params)
        self.models: list = []
        self.fold_of: dict[str, int] = {}
        self.reference: ReferenceDistance | None = None

    # ---------------------------------------------------------------- data
    def _channels(self, data: SliceSet) -> tuple[str, list[str]]:
        target = self.params.target_channel or self.context.inputs[0]
        data.channel_index(target)
        if self.params.sources:
            sources = list(self.params.sources)
            for name in sources:
                data.channel_index(name)
        else:
            sources = [c for c in data.channels if c not in (target, "ct")] or [c for c in data.channels if c != target]
        if not sources:
            raise ValueError(f"cross-modal: no source channel besides the target '{target}' in {list(data.channels)}")
        return target, sources

    def _arrays(self, data: SliceSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel features ``[N, F, H, W]``, target ``[N, H, W]`` and head mask ``[N, H, W]``."""
        target, sources = self._channels(data)
        features = voxel_features(data.select_channels(sources), data.labels if self.params.use_labels else None)
        return features, data.images[:, data.channel_index(target)].astype(np.float32), head_mask(data.images)

    def _fit_one(self, x: np.ndarray, y: np.ndarray, head: np.ndarray, seed: int):
        """One fold's regressor; ``seed`` < 2**32, as scikit-learn requires."""
        from sklearn.ensemble import HistGradientBoostingRegressor

        rng = np.random.default_rng(seed)
        n, h, w = np.nonzero(head)
        pick = rng.choice(len(n), size=min(self.params.voxels, len(n)), replace=False)
        n, h, w = n[pick], h[pick], w[pick]
        model = HistGradientBoostingRegressor(max_iter=self.params.iterations, learning_rate=0.1, random_state=seed)
        return model.fit(x[n, :, h, w], y[n, h, w])

    def residuals(self, data: SliceSet) -> tuple[list[str], np.ndarray]:
        """Per-case log mean squared residual over head, tumour and target region, ``[n_cases, 3]``."""
        x, y, head = self._arrays(data)
        cases, rows = case_order(data.case_ids)
        fold = np.array([self.fold_of.get(case, -1) for case in cases])[rows]  # -1: not a trusted case
        n, h, w = np.nonzero(head)
        voxel_fold = fold[n]
        features = x[n, :, h, w]
        squared_sum = np.zeros(len(n))
        users = np.zeros(len(n))
        for k, model in enumerate(self.models):
            # model k was fit on every trusted fold but k: it scores fold k and the untrusted cases
            use = (voxel_fold == k) | (voxel_fold < 0)
            squared_sum[use] += (model.predict(features[use]) - y[n[use], h[use], w[use]]) ** 2
            users[use] += 1
        squared = np.zeros(y.shape)
        squared[n, h, w] = squared_sum / np.maximum(users, 1)
        regions = [head, region_mask(data.labels, "WT") & head, region_mask(data.labels, self.context.target) & head]
        out = np.zeros((len(cases), len(regions)))
        for i in range(len(cases)):
            sel = rows == i
            fallback = squared[sel][head[sel]].mean() if head[sel].any() else 0.0
            for j, region in enumerate(regions):
                mask = region[sel]
                out[i, j] = np.log((squared[sel][mask].mean() if mask.any() else fallback) + 1e-4)
        return cases, out

    # ---------------------------------------------------------------- plugin
    def fit(self, trusted: SliceSet | None) -> None:
        if trusted is None or len(trusted.cases) < 2:
            raise ValueError("cross-modal needs at least 2 trusted cases (split.trusted >= 2)")
        cases = trusted.cases
        folds = min(self.params.folds, len(cases))
        order = np.random.default_rng(self.context.seed).permutation(len(cases))
        self.fold_of = {cases[i]: k % folds for k, i in enumerate(order)}
        x, y, head = self._arrays(trusted)
        slice_fold = np.array([self.fold_of[str(c)] for c in trusted.case_ids])
        self.models = [
            self._fit_one(x[slice_fold != k], y[slice_fold != k], head[slice_fold != k], _fold_seed(self.context.seed, k))
            for k in range(folds)
        ]
        ref_cases, feats = self.residuals(trusted)
        self.reference = ReferenceDistance("mahalanobis").fit(feats, ref_cases)

    def score(self, train: SliceSet) -> dict[str, float]:
        if self.reference is None:
            raise RuntimeError("cross-modal: call fit() first")
        cases, feats = self.residuals(train)
        return dict(zip(cases, map(float, self.reference.score(feats, cases))))


def _fold_seed(seed: int, fold: int) -> int:
    """A seed in ``[0, 2**32)`` for fold ``fold`` (scikit-learn refuses larger ones; cell seeds may be up to 2**63)."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])
