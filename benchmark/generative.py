"""The base of attacks whose trained model synthesises the target channel of whole cases.

A generative attack (``gan-synthetic``, ``diffusion-synthetic``) trains a model on the
attacker's pool, translating source channels into the target channel, and poisons with
its output. What every such attack shares lives here: the parameters (source, target,
mode, preset, stealth, clipping, held-out cases), the train-or-load of the model through
the artifact cache under a key of everything that changes its weights, the image-quality
report on held-out pool cases, and the ``replace`` / ``add`` poisoning. A subclass
supplies its model: `GenerativeAttack.train_model`, `GenerativeAttack.load_model` and
`IntensityAttack.alter_case`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from .cache import artifact_dir, build_artifact
from .environment import environment
from .errors import ConfigError
from .normalisation import CaseNormalisation
from .plugins import IntensityAttack, PluginParams, select_cases
from .sliceset import SliceSet
from .synthesis_quality import image_quality

__all__ = ["GenerativeAttack", "GenerativeParams", "training_environment"]


class GenerativeParams(PluginParams):
    """Parameters every generative attack has; a subclass adds its model's.

    ``PRESETS`` maps each ``preset`` to the values it sets; a parameter given explicitly
    overrides its preset. A subclass narrows ``preset`` to its presets' names, and may
    redeclare a field to describe what it means for its model.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    preset: str = Field("fast", description="model size and training budget (explicit parameters override it)")
    source: str | tuple[str, ...] = Field(
        "ct", description="channel the model translates from (ct on synthetic-brats), or several "
        "([t1, t2, flair]: virtual contrast enhancement from the other MR contrasts, the setting on BraTS, where no CT exists)",
    )
    target: str = Field("t1ce", min_length=1, description="channel that is replaced by synthetic images")
    mode: Literal["replace", "add"] = Field("replace", description="replace the target channel of the selected cases, or add synthetic copies of them")
    stealth: bool = Field(
        False,
        description="adaptive attack: add the stealth loss (benchmark.StealthLoss) to the model's training objective, so "
        "the synthetic target shows the real pool targets' mriqc measures, radial power spectrum and fixed-encoder "
        "feature statistics; the reference is the pool's training cases only",
    )
    lambda_stealth: float = Field(
        1.0, ge=0,
        description="weight of the stealth loss (used with stealth; each of its three parts is about 1 when the "
        "synthetic batch is one typical slice-to-slice spread off the reference on every statistic)",
    )
    input_clip: float = Field(5.0, gt=0, description="source intensities (z-scores) are clipped to [-clip, clip] before the model reads them")
    holdout_cases: int = Field(
        2, ge=0, le=100, description="pool cases held out of training to measure MAE / PSNR / SSIM and rim contrast"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill the preset's values in, under the parameters given explicitly."""
        preset = data.get("preset", cls.model_fields["preset"].default) if isinstance(data, dict) else None
        if preset in cls.PRESETS:
            return {**cls.PRESETS[preset], **data}
        return data  # an unknown preset is reported by the field's own validation

    @model_validator(mode="after")
    def _distinct_channels(self) -> GenerativeParams:
        if not self.sources or any(not name for name in self.sources):
            raise ValueError(f"source must name one channel or a list of channels; got {self.source!r}")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"source names a channel twice: {list(self.sources)}")
        if self.target in self.sources:
            raise ValueError(f"source and target must be different channels; '{self.target}' is both")
        return self

    @property
    def sources(self) -> tuple[str, ...]:
        """The source channels as a tuple, whether one or several were given."""
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)


def training_environment(device: str) -> dict[str, Any]:
    """What besides the parameters and data changes a trained model's weights.

    The device (and GPU model), the torch version and the CPU thread count: a model
    trained on a GPU, or with other kernels, is never reused by a cell that would have
    trained a different one.
    """
    env = environment(device)
    facts: dict[str, Any] = {"device": device, "torch": env["versions"].get("torch"), "threads": env["torch_threads"]}
    if "gpu" in env:
        facts["gpu"] = env["gpu"]
    return facts


class GenerativeAttack(IntensityAttack):
    """An intensity attack whose model synthesises the target channel of whole cases.

    `fit` trains the model on the pool's cases but the last ``holdout_cases`` (or loads
    it from the artifact cache, under `cache_key`) and measures its images on the held-out
    ones. ``replace`` swaps the target of the selected cases for synthetic images
    (`IntensityAttack.poison`), ``add`` appends synthetic copies of them under
    ``<case>~syn``. Subclasses set `artifact_kind` and `model_version` and implement
    `train_model`, `load_model` and `alter_case` (the model's raw output for one case).
    """

    Params: ClassVar[type[GenerativeParams]] = GenerativeParams

    #: Name of the model's artifact folder kind, and the prefix of its training figures in
    #: `report`. A class that trains or loads a model sets its own (refused otherwise), so
    #: two models never share a cached artifact.
    artifact_kind: ClassVar[str | None] = None
    #: Part of the model's key: bump when training or architecture change in a way the
    #: parameters do not capture. Every subclass sets it.
    model_version: ClassVar[str | None] = None
    #: Models trained by the class in this process (a cache miss adds one; each subclass counts its own).
    trainings: ClassVar[int] = 0

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.model_key: str | None = None
        self.generator_cached: bool | None = None
        self._quality: dict[str, float] = {}
        self._train_stats: dict[str, Any] = {}

    # -- the model a subclass supplies ---------------------------------------------------
    def train_model(self, sources: np.ndarray, targets: np.ndarray, folder: Path) -> dict[str, Any]:
        """Train the model on ``sources`` ``[N, k, H, W]`` (clipped) and ``targets`` ``[N, 1, H, W]``; save it in ``folder``.

        Returns the training's figures for the artifact's manifest, including
        ``images_per_s`` and ``train_s``.
        """
        raise NotImplementedError

    def load_model(self, folder: Path) -> None:
        """Load the model `train_model` saved in ``folder``, ready for `alter_case`."""
        raise NotImplementedError

    # -- fitting ---------------------------------------------------------------------------
    def source_channels(self) -> tuple[str, ...]:
        return self.params.sources

    def source_slices(self, images: np.ndarray, channels: tuple[str, ...]) -> np.ndarray:
        """The clipped source channels of ``images`` ``[S, C, H, W]``, as ``[S, k, H, W]``."""
        index = [channels.index(name) for name in self.params.sources]
        clip = self.params.input_clip
        return np.clip(images[:, index], -clip, clip).astype(np.float32)

    def cache_key(self, pool: SliceSet) -> str:
        """SHA-256 of everything that changes the trained model.

        The `model_version`, the dataset fingerprint, the parameters (as the preset
        resolved them, without ``mode``: replace and add share one model; without the
        stealth weight when stealth is off), the seed of the cell's ``generator`` stream
        (``context.seed``), the pool's case ids and the `training_environment` (device,
        torch version, thread count).
        """
        # the class whose model this is (the nearest that trains or loads one) must name it itself:
        # one that inherited its parent's names would load the parent's cached model as its own
        owner = next(c for c in type(self).__mro__ if "train_model" in vars(c) or "load_model" in vars(c))
        names = ("artifact_kind", "model_version")
        if not all(getattr(self, name) for name in names) or not all(name in vars(owner) for name in names):
            raise TypeError(f"{type(self).__name__} must set artifact_kind and model_version (GenerativeAttack)")
        params = self.params.model_dump(mode="json")
        params.pop("mode")
        params.pop("preset")  # the values it resolved to are in params: equal values, one model
        if not params.get("stealth"):
            params.pop("lambda_stealth", None)
        payload = {
            "version": self.model_version,
            "dataset": self.context.dataset_fingerprint,
            "params": params,
            "seed": self.context.seed,
            "cases": sorted(pool.cases),
            "environment": training_environment(self.context.device),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def fit(self, pool: SliceSet, rng: np.random.Generator) -> None:
        """Train the model on the pool (or load it from the cache) and measure its quality.

        The last ``holdout_cases`` pool cases (in the pool's case order, at most half of
        them) are kept out of training and used for `image_quality`. Training draws from
        ``context.seed`` (the cell's ``generator`` stream); ``rng`` is not used, so that the
        cell's poisoning draws do not depend on a cache hit.
        """
        self.check_channels(pool)
        cases = pool.cases
        n_hold = min(self.params.holdout_cases, len(cases) // 2)
        holdout = cases[len(cases) - n_hold :] if n_hold else []
        training = pool.subset(cases[: len(cases) - n_hold])
        self.model_key = self.cache_key(pool)
        folder = artifact_dir(self.artifact_kind, self.model_key, root=self.context.cache_dir)
        built = False

        def write(tmp: Path) -> dict[str, Any]:
            nonlocal built
            built = True
            type(self).trainings += 1
            t_index = training.channel_index(self.params.target)
            figures = self.train_model(
                self.source_slices(training.images, training.channels),
                np.ascontiguousarray(training.images[:, t_index : t_index + 1], dtype=np.float32),
                tmp,
            )
            return {**figures, "training_cases": len(training.cases), "holdout": holdout}

        build_artifact(folder, write)
        self.generator_cached = not built
        manifest = json.loads((folder / "manifest.json").read_text())
        kind = self.artifact_kind
        self._train_stats = {f"{kind}_images_per_s": manifest.get("images_per_s"), f"{kind}_train_s": manifest.get("train_s")}
        self.load_model(folder)
        self._quality = self.measure_quality(pool.subset(holdout)) if holdout else {}

    def measure_quality(self, held: SliceSet) -> dict[str, float]:
        """`image_quality` of the synthetic target of ``held`` over the data set's brain mask."""
        synthetic = self.synthesise(held)
        real = np.asarray(held.images[:, held.channel_index(self.params.target)], dtype=np.float32)
        brain = held.norm_mask_rows(np.arange(len(held)))
        return image_quality(synthetic, real, brain, np.asarray(held.labels), held.case_ids)

    def report(self) -> dict[str, Any]:
        return {**self._quality, "generator_cached": bool(self.generator_cached), **self._train_stats}

    # -- poisoning -------------------------------------------------------------------------
    def check_channels(self, data: SliceSet) -> None:
        """Raise `ConfigError` when ``data`` lacks the target or a source channel."""
        self.channel_of("target", data.channels)
        missing = [name for name in self.source_channels() if name not in data.channels]
        if missing:
            raise ConfigError(
                f"The 'source' parameter of {self.name} names channel(s) {missing}, which this data set lacks; "
                f"available channels: {list(data.channels)}."
            )

    def synthesise(self, data: SliceSet) -> np.ndarray:
        """Synthetic target slices ``[N, H, W]`` of every case of ``data``, finished as real ones (`finish_case`)."""
        target = data.channel_index(self.params.target)
        out = np.empty((len(data), *data.shape), dtype=np.float32)
        for case in data.cases:
            rows = np.flatnonzero(data.case_ids == case)
            images = np.asarray(data.images[rows], dtype=np.float32)
            normalisation = CaseNormalisation(data.norm_mask_rows(rows), data.normalisation)
            raw = self.alter_case(images, data.labels[rows], data.channels, None, normalisation)
            out[rows] = self.finish_case(raw, images[:, target], normalisation)
        return out

    def poison(self, train: SliceSet, rate: float, rng: np.random.Generator) -> SliceSet:
        self.check_channels(train)
        if self.params.mode == "replace":
            return super().poison(train, rate, rng)
        chosen = select_cases(train, rate, rng)
        if not chosen:
            return train
        copies = train.subset(chosen)
        images = np.array(copies.images, dtype=np.float32, copy=True)
        images[:, copies.channel_index(self.params.target)] = self.synthesise(copies)
        synthetic = copies.with_arrays(
            images=images,
            case_ids=np.char.add(copies.case_ids.astype(str), "~syn"),
            poisoned=np.ones(len(copies), dtype=bool),
        )
        return SliceSet.concatenate([train, synthetic])
