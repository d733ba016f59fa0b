"""What a defense may see of a cell's training set: its slices under opaque, shuffled case ids.

An attack may reveal which cases it poisoned without changing what they look like: by
their ids (``gan-synthetic``'s ``add`` mode names its copies ``<case>~syn``), by their
place (appended after the real cases) or by ``meta``. A `DefenseView` hides all three:
cases are put in a random order drawn from a secret the defense does not know, renamed
``case-<n>`` in that order, stripped of ``meta`` and of the ground-truth flags; the harness
maps the defense's scores back to the real ids. The view also drops the data set's
normalisation masks and rule (an attack could set them differently for its cases), and the
defense gets a seed drawn from the same secret, not the cell seed from which the attack's
case choice follows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .sliceset import SliceSet

__all__ = ["DefenseView", "view_rng"]


def view_rng(*secret: str) -> np.random.Generator:
    """A generator seeded from strings the defense never sees (e.g. the cell key and data fingerprint).

    Seeding from the cell seed alone would let a defense, which knows that seed, redraw
    the permutation and recover the attack's order.
    """
    digest = hashlib.sha256("\x1f".join(("defense-view", *secret)).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


@dataclass(frozen=True)
class DefenseView:
    """The training and trusted slices as a defense receives them, and the way back.

    Attributes:
        train: every training case (trusted ones included), cases in a random order,
            their slices in their own order, ids ``case-<n>``, ``poisoned`` all False,
            empty ``meta``, no normalisation masks or rule.
        trusted: the trusted cases of ``train`` under the same opaque ids (same order), or None.
        real_ids: opaque id → real case id.
    """

    train: SliceSet
    trusted: SliceSet | None
    real_ids: dict[str, str]

    @classmethod
    def build(cls, train: SliceSet, trusted_cases: Sequence[str], rng: np.random.Generator) -> DefenseView:
        """Shuffle and rename ``train``'s cases; ``trusted_cases`` (a subset of them) form ``trusted``.

        Args:
            train: the cell's training set ``[N, C, H, W]`` (trusted cases included).
            trusted_cases: real ids of the trusted cases.
            rng: draws the case order.
        """
        cases = train.cases
        order = [cases[i] for i in rng.permutation(len(cases))]
        width = len(str(max(len(cases) - 1, 0)))
        opaque = {case: f"case-{n:0{width}d}" for n, case in enumerate(order)}
        # subset + concatenate carry every per-slice array of the SliceSet, whatever it holds
        shuffled = SliceSet.concatenate([train.subset([case]) for case in order])
        hidden = shuffled.with_arrays(
            case_ids=np.array([opaque[str(case)] for case in shuffled.case_ids], dtype=str),
            poisoned=np.zeros(len(shuffled), dtype=bool),
            meta={},
            norm_masks=None,
            normalisation=None,
            geometry=None,  # a synthetic copy shares its original's slice positions: they would pair them
        )
        trusted_set = {str(case) for case in trusted_cases}
        trusted = [opaque[case] for case in order if case in trusted_set]
        return cls(hidden, hidden.subset(trusted) if trusted else None, {v: k for k, v in opaque.items()})

    def to_real(self, scores: Mapping[str, float]) -> dict[str, float]:
        """Scores keyed by opaque id → keyed by real case id (ids the view never gave are dropped)."""
        return {self.real_ids[str(case)]: float(value) for case, value in scores.items() if str(case) in self.real_ids}
