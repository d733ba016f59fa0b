"""How a data set normalised its intensities, so that whatever writes new ones can do the same.

A data set records two facts on its `SliceSet`:

- ``norm_masks``: bool ``[N, H, W]``, per slice the voxels over which the data set
  computed each case's statistics (the brain mask it used);
- ``normalisation``: the `Normalisation` rule it applied, per case and channel, to the
  voxels of those slices.

The contract: for every case (all of its slices) and every channel, the stored image is
a fixed point of the rule, ``image == rule.normalise(image, mask)``, except on the
case's *background*, the voxels the data set left at exactly 0 (air around the head,
or everything outside the brain of a skull-stripped scan). An attack that writes new
intensities into a channel therefore calls `renormalise_like` with the real channel as
``reference``: the result has the data set's statistics over the data set's mask and the
real case's zeros, so poison differs from real data only where the attack means it to.
No attack needs to know which data set it runs on.

A source that records nothing (``normalisation`` None, e.g. an add-on reader written
before this contract) gets the most neutral fallback: the new intensities take the real
channel's mean and standard deviation over its non-zero voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import DataError

__all__ = ["Normalisation", "ZSCORE", "IDENTITY", "CaseNormalisation", "normalisation_named", "renormalise_like"]


@dataclass(frozen=True)
class Normalisation:
    """A named intensity normalisation rule (names survive the on-disk cache).

    Attributes:
        name: ``zscore`` (zero mean, unit standard deviation over the mask) or
            ``identity`` (the data set keeps intensities as read).
    """

    name: str

    RULES: ClassVar[tuple[str, ...]] = ("zscore", "identity")

    def __post_init__(self) -> None:
        if self.name not in self.RULES:
            raise DataError(f"unknown intensity normalisation '{self.name}'; known rules: {list(self.RULES)}.")

    def normalise(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Apply the rule to one channel of one case.

        Args:
            values: float ``[S, H, W]``, every slice of the case.
            mask: bool ``[S, H, W]``, the voxels whose statistics define the rule.

        Returns:
            float32 ``[S, H, W]``: every voxel mapped by the same affine map (callers
            restore the background). An empty mask leaves the values as they are.
        """
        values = np.asarray(values, dtype=np.float64)
        if self.name == "identity" or not mask.any():
            return values.astype(np.float32)
        shift, scale = self.affine_map(values[mask])
        return ((values - shift) / scale).astype(np.float32)

    def affine_map(self, inside: np.ndarray) -> tuple[float, float]:
        """``(shift, scale)`` of the map ``(x - shift) / scale`` the rule applies, from the float64 values inside the mask."""
        if self.name == "identity" or inside.size == 0:
            return 0.0, 1.0
        std = inside.std()
        return inside.mean(), (std if std > 0 else 1.0)


ZSCORE = Normalisation("zscore")
IDENTITY = Normalisation("identity")


def normalisation_named(name: str | None) -> Normalisation | None:
    """The rule of a stored name (None stays None: the source recorded no rule)."""
    return None if name is None else Normalisation(str(name))


def renormalise_like(
    values: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray | None,
    rule: Normalisation | None,
) -> np.ndarray:
    """New intensities of one case's channel, normalised as the data set normalised the real ones.

    Args:
        values: float ``[S, H, W]``, the attack's new intensities for every slice of the case.
        reference: float ``[S, H, W]``, the real (stored) channel they replace; its zeros are
            the case's background and stay 0.
        mask: bool ``[S, H, W]``, the data set's normalisation mask of these slices, or None
            when the source recorded none (the reference's non-zero voxels are used).
        rule: the data set's rule, or None when the source recorded none.

    Returns:
        float32 ``[S, H, W]``. With ``values == reference`` the result equals the reference
        (up to float32 rounding): the step changes nothing the attack did not.
    """
    values = np.asarray(values, dtype=np.float64)
    reference = np.asarray(reference)
    if values.shape != reference.shape:
        raise DataError(f"renormalise_like: values {values.shape} and reference {reference.shape} differ in shape.")
    foreground = reference != 0
    if mask is None or rule is None:
        region = foreground if mask is None else np.asarray(mask, dtype=bool)
        out = _match_moments(values, np.asarray(reference, dtype=np.float64), region)
    else:
        out = rule.normalise(values, np.asarray(mask, dtype=bool))
    return np.where(foreground, out, 0.0).astype(np.float32)


def _match_moments(values: np.ndarray, reference: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``values`` mapped affinely to the reference's mean and standard deviation over ``region``."""
    if not region.any():
        return values
    inside, target = values[region], reference[region]
    std = inside.std()
    return (values - inside.mean()) / (std if std > 0 else 1.0) * target.std() + target.mean()


@dataclass(frozen=True)
class CaseNormalisation:
    """How the data set normalised one case: what an attack needs to finish new intensities.

    Attributes:
        mask: bool ``[S, H, W]``, the data set's normalisation mask of the case's slices, or None.
        rule: the data set's rule, or None.
    """

    mask: np.ndarray | None
    rule: Normalisation | None

    def region(self, reference: np.ndarray) -> np.ndarray:
        """Voxels ``[S, H, W]`` whose statistics define the rule: the mask, else the reference's non-zero voxels."""
        return np.asarray(reference) != 0 if self.mask is None else np.asarray(self.mask, dtype=bool)

    def renormalise(self, values: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """`renormalise_like` with this case's mask and rule."""
        return renormalise_like(values, reference, self.mask, self.rule)
