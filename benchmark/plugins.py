"""Base classes of the four plugin kinds and the context the harness hands them.

Each plugin declares its parameters once, as a pydantic model named ``Params`` with a
default and a one-line description per field; `create_attack` & co. validate keyword
arguments against it, so ``bench.yaml`` is checked before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError
from .sliceset import SliceSet
from .spill import take_rows

__all__ = [
    "PluginParams",
    "Plugin",
    "RunContext",
    "DatasetSource",
    "Attack",
    "CaseAttack",
    "Defense",
    "DefenseParams",
    "Segmenter",
    "select_cases",
]

T = TypeVar("T")


class PluginParams(BaseModel):
    """Base of every plugin's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class RunContext:
    """What the harness tells a plugin about the cell it works for.

    Attributes:
        device: ``cpu`` or ``cuda`` (already resolved from ``auto``).
        seed: the cell's seed.
        cache_dir: folder for expensive artifacts, shared across cells and runs.
        dataset_fingerprint: identifies the data the cell uses (part of cache keys).
        inputs: input channel names of the task.
        target: target region of the task (``ET``, ``TC`` or ``WT``).
        quiet: no progress output wanted.
        progress: wraps an iterable to show progress; identity when quiet.
        deterministic: prefer reproducibility to speed.
    """

    device: str = "cpu"
    seed: int = 0
    cache_dir: Path = field(default_factory=lambda: Path.cwd() / ".poisonbench-cache")
    dataset_fingerprint: str = ""
    inputs: tuple[str, ...] = ("t1ce",)
    target: str = "ET"
    quiet: bool = True
    progress: Callable[..., Iterable[Any]] | None = None
    deterministic: bool = True

    def track(self, iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        if self.progress is None or self.quiet:
            yield from iterable
        else:
            yield from self.progress(iterable, description=description, total=total)


class Plugin:
    """Common behaviour of all plugins: a name, a summary and validated parameters."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[PluginParams]] = PluginParams

    def __init__(self, **params: Any):
        self.params = self.Params(**params)
        self.context = RunContext()

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def bind(self, context: RunContext) -> None:
        """Receive the cell's context before any other call."""
        self.context = context

    def channel_of(self, parameter: str, channels: tuple[str, ...]) -> int:
        """Index in ``channels`` of the channel named by one of this plugin's parameters.

        Raises:
            ConfigError: naming the parameter and the channels the data set has.
        """
        name = getattr(self.params, parameter)
        if name not in channels:
            raise ConfigError(
                f"The '{parameter}' parameter of {self.name} names channel '{name}', which this data set lacks; "
                f"available channels: {list(channels)}."
            )
        return channels.index(name)


class DatasetSource(Plugin):
    """A data set: ``load()`` returns every case as one `SliceSet`."""

    def fingerprint(self) -> str:
        """Stable identity of the data this source yields (hash of what determines it)."""
        raise NotImplementedError

    def load(self) -> SliceSet:
        raise NotImplementedError


def select_cases(train: SliceSet, rate: float, rng: np.random.Generator) -> list[str]:
    """The ``round(rate × cases)`` whole cases an attack poisons, chosen by ``rng``.

    Rounding is half-up so that rates given as multiples of 1/6 hit the expected count.
    """
    cases = train.cases
    count = min(len(cases), int(math.floor(rate * len(cases) + 0.5 + 1e-9)))
    if count == 0:
        return []
    chosen = rng.choice(len(cases), size=count, replace=False)
    return [cases[i] for i in sorted(chosen)]


class Attack(Plugin):
    """Poisons a training set at a rate.

    ``fit(pool, rng)`` runs once per cell (expensive state is cached by the plugin under
    ``context.cache_dir``); ``poison(train, rate, rng)`` returns the poisoned set with
    its ``poisoned`` flags set.
    """

    def fit(self, pool: SliceSet, rng: np.random.Generator) -> None:
        """Learn what the attack needs from the attacker's pool (never a validation case)."""

    def poison(self, train: SliceSet, rate: float, rng: np.random.Generator) -> SliceSet:
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """Figures about the attack's strength to store with the cell (e.g. MAE, PSNR)."""
        return {}


class CaseAttack(Attack):
    """An attack that rewrites whole selected cases, one at a time.

    Subclasses implement `corrupt_case`; selection, flags and bookkeeping live here so
    that every such attack picks cases the same way.
    """

    def poison(self, train: SliceSet, rate: float, rng: np.random.Generator) -> SliceSet:
        chosen = select_cases(train, rate, rng)
        if not chosen:
            return train
        everything = np.arange(len(train))
        images = take_rows(train.images, everything, np.float32)
        labels = take_rows(train.labels, everything)
        poisoned = np.array(train.poisoned, copy=True)
        for case in chosen:
            index = np.flatnonzero(train.case_ids == case)
            new_images, new_labels = self.corrupt_case(images[index], labels[index], train.channels, rng)
            images[index] = new_images
            labels[index] = new_labels
            poisoned[index] = True
        return train.with_arrays(images=images, labels=labels, poisoned=poisoned)

    def corrupt_case(
        self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Poison one case.

        Args:
            images: float32 ``[S, C, H, W]``, the case's slices.
            labels: uint8 ``[S, H, W]``.
            channels: channel names of ``images``.
            rng: the cell's generator.

        Returns:
            new ``(images, labels)`` of the same shapes.
        """
        raise NotImplementedError


class DefenseParams(PluginParams):
    """Decision rule shared by defenses: a removal budget or a trusted-score quantile."""

    budget: float | None = Field(
        None, ge=0.0, le=1.0, description="fraction of training cases to remove (highest scores first)"
    )
    quantile: float | None = Field(
        None, gt=0.0, le=1.0, description="remove cases scoring above this quantile of the trusted set's scores"
    )


class Defense(Plugin):
    """Scores training cases for suspicion and decides which to keep.

    A defense sees images and masks, never the ``poisoned`` flags.
    """

    requires_trusted: ClassVar[bool] = False

    def fit(self, trusted: SliceSet | None) -> None:
        """Learn what clean data looks like from the trusted cases (may be None)."""

    def score(self, train: SliceSet) -> dict[str, float]:
        """Per-case suspicion; higher is more suspicious."""
        raise NotImplementedError

    def decide(self, scores: dict[str, float], trusted_scores: dict[str, float] | None = None) -> list[str]:
        """Cases to remove, by the ``budget`` or ``quantile`` rule of the parameters."""
        budget = getattr(self.params, "budget", None)
        quantile = getattr(self.params, "quantile", None)
        ranked = sorted(scores, key=lambda case: (-scores[case], case))
        if budget is not None:
            return ranked[: int(math.floor(budget * len(ranked) + 0.5))]
        if quantile is not None:
            if not trusted_scores:
                raise ConfigError(f"defense {self.name}: the 'quantile' rule needs a trusted set (split.trusted > 0).")
            threshold = float(np.quantile(np.fromiter(trusted_scores.values(), float), quantile))
            return [case for case in ranked if scores[case] > threshold]
        return []


class Segmenter(Plugin):
    """A segmentation model trained on slices of the task's input channels."""

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Train.

        Args:
            images: float32 ``[N, C, H, W]``.
            masks: uint8 ``[N, H, W]``, 1 inside the target region.
        """
        raise NotImplementedError

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Segment ``images`` (float32 ``[N, C, H, W]``) into uint8 masks ``[N, H, W]``."""
        raise NotImplementedError
