"""Base classes of the four plugin kinds and the context the harness hands them.

Each plugin declares its parameters once, as a pydantic model named ``Params`` with a
default and a one-line description per field; `create_attack` & co. validate keyword
arguments against it, so ``bench.yaml`` is checked before any work starts.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ConfigError
from .normalisation import CaseNormalisation
from .sliceset import SliceSet
from .spill import take_rows

__all__ = [
    "PluginParams",
    "Plugin",
    "RunContext",
    "DatasetSource",
    "Attack",
    "CaseAttack",
    "IntensityAttack",
    "Defense",
    "DefenseParams",
    "DEFAULT_MAD_K",
    "outlier_threshold",
    "Segmenter",
    "select_cases",
    "poison_order",
    "case_generators",
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
        seed: the seed of the plugin's own stream of the cell (`benchmark.seeding`: an
            attack gets the ``generator`` stream, a segmenter the ``batches`` stream, a
            defense a seed unrelated to the cell seed, so it cannot redraw the attack's choice).
        cache_dir: folder for expensive artifacts, shared across cells and runs; a defense
            gets a private scratch folder instead (it must not read attack artifacts).
        dataset_fingerprint: identifies the data the cell uses (part of cache keys); empty
            for a defense.
        inputs: input channel names of the task.
        target: target region of the task (``ET``, ``TC`` or ``WT``).
        quiet: no progress output wanted.
        progress: wraps an iterable to show progress; identity when quiet.
        deterministic: prefer reproducibility to speed.
        artifacts_dir: folder for the cell's own files kept beside its results
            (``<out>/artifacts/<cell key>``, e.g. a failed training's logs); create it when
            writing there. None when the cell has none.
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
    artifacts_dir: Path | None = None

    def track(self, iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        if self.progress is None or self.quiet:
            yield from iterable
        else:
            yield from self.progress(iterable, description=description, total=total)


class Plugin:
    """Common behaviour of all plugins: a name, a summary and validated parameters."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[PluginParams]] = PluginParams
    #: Parameters whose values name channels of the data set (a name, a list of names, or
    #: None for the plugin's default); `bench validate` checks them against the data set's
    #: channels before anything runs. Override `named_channels` for anything subtler.
    channel_parameters: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any):
        self.params = self.Params(**params)
        self.context = RunContext()

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def missing_requirement(cls) -> str | None:
        """What to install before this plugin can run (an optional extra), or None when it can.

        ``bench leaderboard rebuild-reference`` skips a default reference config naming such a
        plugin; the plugin's own parameters model refuses it at validation (exit 2).
        """
        return None

    def bind(self, context: RunContext) -> None:
        """Receive the cell's context before any other call."""
        self.context = context

    def named_channels(self) -> dict[str, tuple[str, ...]]:
        """Channels of the data set this plugin's parameters name, by parameter.

        Returns:
            parameter name -> channel names it gives (empty parameters left out); by
            default the values of `channel_parameters`.
        """
        named: dict[str, tuple[str, ...]] = {}
        for parameter in self.channel_parameters:
            value = getattr(self.params, parameter)
            names = (value,) if isinstance(value, str) else tuple(value or ())
            if names:
                named[parameter] = names
        return named

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

    def channels(self) -> tuple[str, ...] | None:
        """Names of the channels ``load()`` yields, known without loading the data.

        The config is checked against them (``task.inputs``, the channels attacks and
        defenses name) before anything runs. None, the default, when only reading the
        data tells; the checks then wait for the data.
        """
        return None

    def protected_folders(self) -> tuple[Path, ...]:
        """Folders the source reads its data from: nothing is ever written inside them
        (an export refuses an output folder there). None by default (generated data)."""
        return ()

    #: Processes reading cases at once when ``load()`` builds the cached data set (the
    #: config's ``dataset.workers``; None: the cores this process may use). How the data
    #: is read, not what it is: never part of the fingerprint.
    workers: int | None = None

    def fingerprint(self) -> str:
        """Stable identity of the data this source yields (hash of what determines it)."""
        raise NotImplementedError

    def load(self) -> SliceSet:
        raise NotImplementedError


def poison_order(train: SliceSet, rng: np.random.Generator) -> list[str]:
    """Every case of ``train`` in the order an attack poisons them: a permutation drawn by ``rng``.

    The permutation is of the sorted case ids, so it depends on the seed and the set of
    cases only (not on their slice order), and it draws the same numbers whatever the rate.
    """
    cases = sorted(train.cases)
    return [cases[i] for i in rng.permutation(len(cases))]


def select_cases(train: SliceSet, rate: float, rng: np.random.Generator) -> list[str]:
    """The ``round(rate × cases)`` whole cases an attack poisons (sorted ids), chosen by ``rng``.

    The first cases of `poison_order`: for one seed, the cases poisoned at a rate are a
    subset of those poisoned at every higher rate, so a dose-response curve adds poison
    rather than redrawing it. Rounding is half-up so that rates given as multiples of 1/6
    hit the expected count.
    """
    order = poison_order(train, rng)
    count = min(len(order), int(math.floor(rate * len(order) + 0.5 + 1e-9)))
    return sorted(order[:count])


def case_generators(cases: list[str], rng: np.random.Generator) -> dict[str, np.random.Generator]:
    """One generator per case for an attack's per-case draws, keyed by the case id.

    One number is drawn from ``rng`` (after `select_cases`, so the same at every rate);
    each case's generator depends on it and the case id only, so a case poisoned at two
    rates is poisoned identically.
    """
    entropy = int(rng.integers(0, 2**63))
    return {case: np.random.default_rng([entropy, zlib.crc32(case.encode())]) for case in cases}


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

    def source_channels(self) -> tuple[str, ...]:
        """Channels the attack reads to write its poison (a translator's inputs); shown
        beside the poison in the examples figure. None by default."""
        return ()

    def named_channels(self) -> dict[str, tuple[str, ...]]:
        """`Plugin.named_channels`, with the `source_channels` no declared parameter gives
        listed under ``source``."""
        named = super().named_channels()
        given = {name for names in named.values() for name in names}
        sources = tuple(name for name in self.source_channels() if name not in given)
        if sources:
            named["source"] = (*named.get("source", ()), *sources)
        return named


class CaseAttack(Attack):
    """An attack that rewrites whole selected cases, one at a time.

    Subclasses implement `corrupt_case` (or `poison_case`, to use how the data set
    normalised the case); selection, flags and bookkeeping live here so that every such
    attack picks cases the same way (`select_cases`), and each case gets its own
    generator (`case_generators`), so a case is poisoned identically at every rate.
    """

    def poison(self, train: SliceSet, rate: float, rng: np.random.Generator) -> SliceSet:
        chosen = select_cases(train, rate, rng)
        if not chosen:
            return train
        generators = case_generators(chosen, rng)
        everything = np.arange(len(train))
        images = take_rows(train.images, everything, np.float32)
        labels = take_rows(train.labels, everything)
        poisoned = np.array(train.poisoned, copy=True)
        for case in chosen:
            index = np.flatnonzero(train.case_ids == case)
            normalisation = CaseNormalisation(train.norm_mask_rows(index), train.normalisation)
            new_images, new_labels = self.poison_case(images[index], labels[index], train.channels, generators[case], normalisation)
            images[index] = new_images
            labels[index] = new_labels
            poisoned[index] = True
        return train.with_arrays(images=images, labels=labels, poisoned=poisoned)

    def poison_case(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        channels: tuple[str, ...],
        rng: np.random.Generator,
        normalisation: CaseNormalisation,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Poison one case knowing how the data set normalised it; by default `corrupt_case`.

        Args:
            images: float32 ``[S, C, H, W]``, every slice of the case.
            labels: uint8 ``[S, H, W]``.
            channels: channel names of ``images``.
            rng: the case's generator.
            normalisation: the data set's normalisation mask ``[S, H, W]`` and rule.
        """
        return self.corrupt_case(images, labels, channels, rng)

    def corrupt_case(
        self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Poison one case.

        Args:
            images: float32 ``[S, C, H, W]``, the case's slices.
            labels: uint8 ``[S, H, W]``.
            channels: channel names of ``images``.
            rng: the case's generator.

        Returns:
            new ``(images, labels)`` of the same shapes.
        """
        raise NotImplementedError


class IntensityAttack(CaseAttack):
    """A case attack that writes new intensities into one channel (its ``target`` parameter).

    Subclasses implement `alter_case`, the change the attack means (a generator's output,
    noise, a blur ...). Every case is then finished by `finish_case`: the new intensities
    are normalised as the data set normalised the real ones (its mask and rule, carried by
    the `SliceSet`) and the real case's background stays 0, so poison differs from real
    data only where the attack means it to. No subclass needs to know the data set.
    """

    channel_parameters: ClassVar[tuple[str, ...]] = ("target",)

    #: Parameter values at which `alter_case` returns the real channel (the attack's strength
    #: at zero), e.g. ``{"severity": 0.0}``; None for a family without such a setting (the
    #: contract test then gives it a perfect generator: `alter_case` returning the real channel).
    neutral_params: ClassVar[dict[str, Any] | None] = None

    def alter_case(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        channels: tuple[str, ...],
        rng: np.random.Generator,
        normalisation: CaseNormalisation,
    ) -> np.ndarray:
        """The attack's new intensities of the target channel, before finishing.

        Args:
            images: float32 ``[S, C, H, W]``, every (real) slice of the case.
            labels: uint8 ``[S, H, W]``.
            channels: channel names of ``images``.
            rng: the case's generator.
            normalisation: the data set's mask and rule (e.g. to scale noise in its units).

        Returns:
            float ``[S, H, W]``.
        """
        raise NotImplementedError

    def finish_case(self, values: np.ndarray, reference: np.ndarray, normalisation: CaseNormalisation) -> np.ndarray:
        """Normalise new intensities ``[S, H, W]`` as the data set normalised ``reference``, the real channel."""
        return normalisation.renormalise(values, reference)

    def poison_case(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        channels: tuple[str, ...],
        rng: np.random.Generator,
        normalisation: CaseNormalisation,
    ) -> tuple[np.ndarray, np.ndarray]:
        target = self.channel_of("target", channels)
        out = np.array(images, dtype=np.float32, copy=True)
        new = self.alter_case(images, labels, channels, rng, normalisation)
        out[:, target] = self.finish_case(new, images[:, target], normalisation)
        return out, labels

    def corrupt_case(
        self, images: np.ndarray, labels: np.ndarray, channels: tuple[str, ...], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """`poison_case` for a case whose normalisation is unknown (see `benchmark.normalisation`)."""
        return self.poison_case(images, labels, channels, rng, CaseNormalisation(None, None))


#: Default ``mad_k`` of the outlier rule that decides when a defense has neither a rule nor trusted cases.
DEFAULT_MAD_K = 3.0


class DefenseParams(PluginParams):
    """Decision rule shared by defenses: at most one of ``budget`` and ``quantile``.

    With neither set, a defense still acts: with trusted cases it removes what scores above
    every trusted case (``quantile`` 1.0 of their out-of-sample scores); without, what scores
    above ``median + mad_k × 1.4826 × MAD`` of the training scores (a robust outlier rule,
    Leys et al., J. Exp. Soc. Psychol. 2013; 1.4826 × MAD estimates σ for normal scores).
    """

    budget: float | None = Field(
        None, ge=0.0, le=1.0, description="fraction of removable training cases to remove (highest scores first); not with quantile"
    )
    quantile: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="remove cases scoring above this quantile of the trusted cases' scores; not with budget "
        "(default with trusted cases and no budget: 1.0, above every trusted case)",
    )
    mad_k: float = Field(
        DEFAULT_MAD_K,
        gt=0.0,
        le=100.0,
        description="with no budget, no quantile and no trusted cases: remove cases scoring above "
        "median + mad_k x 1.4826 x MAD of the training scores",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> DefenseParams:
        if self.budget is not None and self.quantile is not None:
            raise ValueError("set either budget or quantile, not both")
        return self


def outlier_threshold(values: Iterable[float], k: float) -> float:
    """``median + k × σ̂`` of ``values``, with ``σ̂ = 1.4826 × MAD``.

    When more than half the values are equal (MAD 0), ``σ̂`` falls back to ``1.2533 ×`` the
    mean absolute deviation from the median (also σ for normal data), so a few distinct
    high scores are not all outliers by default; when all are equal the median is returned.
    """
    array = np.fromiter(values, float)
    if array.size == 0:
        return math.inf
    centre = float(np.median(array))
    deviation = np.abs(array - centre)
    scale = 1.4826 * float(np.median(deviation)) or 1.2533 * float(deviation.mean())
    return centre + k * scale


class Defense(Plugin):
    """Scores training cases for suspicion and decides which to keep.

    A defense sees images and masks under opaque, shuffled case ids (``case-<n>``), never
    the ``poisoned`` flags, the data set's ``meta``, its fingerprint or the shared cache.
    ``score`` gets every training case, trusted ones included (under the same ids as in
    ``fit``); only the others are candidates for removal.
    """

    requires_trusted: ClassVar[bool] = False

    def fit(self, trusted: SliceSet | None) -> None:
        """Learn what clean data looks like from the trusted cases (may be None)."""

    def score(self, train: SliceSet) -> dict[str, float]:
        """Per-case suspicion; higher is more suspicious.

        Called once per cell, with every training case, the trusted ones included: their
        scores calibrate the decision rule (`decide`), so a trusted case is scored out of
        sample (leave-one-out against the trusted reference, say).
        """
        raise NotImplementedError

    def decide(self, scores: dict[str, float], trusted_scores: dict[str, float] | None = None) -> list[str]:
        """Cases to remove, highest score first.

        ``budget``: the ``round(budget × cases)`` highest scores. ``quantile``: those
        scoring strictly above that quantile of ``trusted_scores``. Neither: quantile 1.0
        when ``trusted_scores`` are given, else those above `outlier_threshold` with
        ``mad_k``.

        Args:
            scores: the removable cases' scores.
            trusted_scores: out-of-sample scores of the trusted cases, or None.

        Raises:
            ConfigError: both rules set, or ``quantile`` without trusted scores.
        """
        budget = getattr(self.params, "budget", None)
        quantile = getattr(self.params, "quantile", None)
        if budget is not None and quantile is not None:
            raise ConfigError(f"defense {self.name}: set either budget or quantile, not both.")
        ranked = sorted(scores, key=lambda case: (-scores[case], case))
        if budget is not None:
            return ranked[: int(math.floor(budget * len(ranked) + 0.5))]
        if quantile is None and trusted_scores:
            quantile = 1.0
        if quantile is not None:
            if not trusted_scores:
                raise ConfigError(f"defense {self.name}: the 'quantile' rule needs a trusted set (split.trusted > 0).")
            threshold = float(np.quantile(np.fromiter(trusted_scores.values(), float), quantile))
        else:
            threshold = outlier_threshold(scores.values(), getattr(self.params, "mad_k", DEFAULT_MAD_K))
        return [case for case in ranked if scores[case] > threshold]


class Segmenter(Plugin):
    """A segmentation model trained on slices, or on volumes, of the task's input channels.

    ``task.dims`` 2 hands it slices ``[N, C, H, W]``; ``task.dims`` 3 hands it one volume
    per case, ``[V, C, S, H, W]``: the case's slices in their true order (by their grid
    index), stacked along ``S`` and padded with zero slices at the end to the deepest
    case (padding is 0 in images and masks; predictions there are ignored). The harness
    maps a volume's predictions back to its slices, so metrics count the same voxels
    whatever the dims.
    """

    #: The task dims (``task.dims``) the segmenter works in; a config pairing it with
    #: another fails validation.
    dims: ClassVar[tuple[int, ...]] = (2,)
    #: Whether the segmenter trains and predicts on whole cases with their ids and geometry
    #: (`fit_cases`, `predict_cases`, e.g. to write them as volumes): the harness then hands
    #: it `SliceSet`s instead of arrays.
    needs_cases: ClassVar[bool] = False

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Train.

        Args:
            images: float32 ``[N, C, H, W]`` (``task.dims`` 2) or ``[V, C, S, H, W]`` (3).
            masks: uint8 ``[N, H, W]`` or ``[V, S, H, W]``, 1 inside the target region.
        """
        raise NotImplementedError

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Segment ``images`` (float32 ``[N, C, H, W]`` or ``[V, C, S, H, W]``) into uint8
        masks ``[N, H, W]`` or ``[V, S, H, W]``."""
        raise NotImplementedError

    def fit_cases(self, train: SliceSet, masks: np.ndarray) -> None:
        """Train on whole cases; called instead of `fit` when `needs_cases`.

        Args:
            train: the kept training cases: images float32 ``[N, C, H, W]`` of the task's
                input channels, case ids and geometry; labels all 0 and no poison flags
                (the target is ``masks``).
            masks: uint8 ``[N, H, W]``, 1 inside the target region.
        """
        raise NotImplementedError

    def predict_cases(self, data: SliceSet) -> np.ndarray:
        """Segment whole cases (``data`` as in `fit_cases`, labels all 0) into uint8 masks
        ``[N, H, W]`` in its row order; called instead of `predict` when `needs_cases`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the segmenter holds beyond the cell (temporary folders, worker processes).

        The harness calls it once the cell has predicted, and also when the cell fails
        between creating the segmenter and predicting. Does nothing by default.
        """
