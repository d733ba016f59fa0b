"""nnU-Net v2 as a segmenter: nnU-Net's own planning, preprocessing, training and inference per cell.

Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 2021. Needs the optional extra ``poisonbench[nnunet]``
(nnunetv2); this module imports it only inside `NnUNetSegmenter.fit_cases` and
`NnUNetSegmenter.predict_cases`, so listing plugins and validating configs cost neither
nnunetv2 nor torch.

One cell, in temporary folders that are removed afterwards:

1. the kept training cases are written as an nnU-Net raw data set
   (``DatasetNNN_Name/imagesTr``, ``labelsTr``, ``dataset.json``) with the exporter's
   functions (`benchmark.case_volume`, `benchmark.write_nifti`,
   `benchmark.nnunet_channel_name`): each case one volume at its source's geometry, the
   cell's poison in it, the task's target region as label 1, and slices a reader left out
   between kept ones as nnU-Net's ignore label 2 (left out of its loss). The validation
   cases are never written there;
2. nnU-Net fingerprints, plans (``ExperimentPlanner``, ``nnUNetPlans``) and preprocesses
   the data set for the chosen configuration. Its ``2d`` configuration cuts the volume
   along the axis of coarsest spacing, which need not be the source's slice axis: on the
   default synthetic-brats data (3.44 mm pixels, 2.86 mm between slices) it trains on
   16 × 64 planes across the slices;
3. the trainer (``trainer``, with ``epochs`` and ``iterations_per_epoch`` overriding its
   ``num_epochs`` and ``num_iterations_per_epoch`` when set) trains fold ``all``: every training case, no internal split taken from
   the cell's data; its per-epoch pseudo-validation draws from the training cases only
   and is cut to one batch (it only logs), and the final checkpoint is used. Training is
   seeded from the cell's seed (torch, numpy's and Python's global generators before the
   network is built, and the data loader's own patch sampler, which nnU-Net leaves
   unseeded), so a cell repeats exactly with ``workers: 0`` on the CPU; with ``workers``
   > 0 nnU-Net's augmentation processes are non-deterministic by design;
4. ``nnUNetPredictor`` segments each validation case's volume in this process; the
   predicted volume's slices at the case's kept positions come back in row order.

``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` (which nnunetv2 2.8 reads
when a path is used) point into the cell's temporary folder while nnU-Net runs, and are
restored afterwards. When training or prediction fails, nnU-Net's logs (its training log
and the cell's captured output) are copied to ``<out>/artifacts/<cell key>/nnunet-logs``
when the harness gives the cell an artifacts folder, and their last lines are part of the
error either way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal

import numpy as np
from pydantic import Field, model_validator

from benchmark import PluginError, PluginParams, Segmenter, register_segmenter

if TYPE_CHECKING:
    from benchmark import SliceSet

__all__ = ["NnUNetSegmenter", "NNUNET_EXTRA", "nnunet_missing"]

#: The optional extra that installs nnunetv2.
NNUNET_EXTRA = "nnunet"
#: nnU-Net data set id and name of the temporary raw data set (its folders are private to the cell).
_DATASET_ID = 1
_DATASET_NAME = f"Dataset{_DATASET_ID:03d}_poisonbench"
_PLANS = "nnUNetPlans"
#: labels of the written data set: the task's target region, and the slices a reader left out
_TARGET, _IGNORE = 1, 2
_LOG_TAIL_LINES = 40


def nnunet_missing() -> str | None:
    """Why the ``nnunet`` segmenter cannot run here, or None when nnunetv2 is importable."""
    try:
        found = importlib.util.find_spec("nnunetv2") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return f"needs nnunetv2; install it with: pip install 'poisonbench[{NNUNET_EXTRA}]'"


class NnUNetParams(PluginParams):
    """Parameters of `NnUNetSegmenter`; loading them needs neither nnunetv2 nor torch."""

    configuration: Literal["2d", "3d_fullres"] = Field(
        "2d", description="nnU-Net configuration trained and used for prediction (its plans decide patch, batch and network)"
    )
    trainer: str = Field(
        "nnUNetTrainer", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="nnU-Net trainer class, found by name as nnUNetv2_train -tr finds it (e.g. nnUNetTrainer_5epochs)",
    )
    epochs: int | None = Field(
        None, ge=1, le=10_000,
        description="training epochs (the trainer's num_epochs); default the trainer's own budget: 1000 for "
        "nnUNetTrainer, N for nnUNetTrainer_Nepochs",
    )
    iterations_per_epoch: int | None = Field(
        None, ge=1, le=100_000,
        description="optimisation steps per epoch (the trainer's num_iterations_per_epoch); default the trainer's own (250)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="device nnU-Net trains and predicts on; auto: the cell's")
    mirroring: bool = Field(
        True, description="test-time mirroring, nnU-Net's default: each prediction averaged over the flips of every "
        "axis the trainer mirrored (4 passes in 2d, 8 in 3d_fullres)",
    )
    workers: int = Field(
        0, ge=0, le=64,
        description="processes for nnU-Net's data augmentation (nnUNet_n_proc_DA) and preprocessing; 0 augments in "
        "the cell's process and preprocesses with one",
    )

    @model_validator(mode="after")
    def _installed(self) -> NnUNetParams:
        # a config naming nnunet fails validation (exit 2) with the install command, before anything runs
        missing = nnunet_missing()
        if missing:
            raise ValueError(f"segmenter 'nnunet' {missing}")
        return self


@register_segmenter("nnunet")
class NnUNetSegmenter(Segmenter):
    """nnU-Net v2 (self-configuring U-Net) trained per cell on fold 'all'; needs poisonbench[nnunet]."""

    Params = NnUNetParams
    #: the harness hands it whole cases (`Segmenter.fit_cases`): nnU-Net trains on volumes with their spacing
    needs_cases: ClassVar[bool] = True

    @classmethod
    def missing_requirement(cls) -> str | None:
        return nnunet_missing()

    @classmethod
    def summary(cls) -> str:
        """The docstring's first line, or what to install when nnunetv2 is missing."""
        if nnunet_missing() is not None:
            return f"needs poisonbench[{NNUNET_EXTRA}] (pip install 'poisonbench[{NNUNET_EXTRA}]')"
        return super().summary()

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._model: Path | None = None

    # -- the harness's calls ----------------------------------------------------------
    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        raise PluginError(
            "segmenter 'nnunet' trains on whole cases with their geometry: call fit_cases(train, masks) with the SliceSet."
        )

    def predict(self, images: np.ndarray) -> np.ndarray:
        raise PluginError("segmenter 'nnunet' predicts whole cases: call predict_cases(data) with the SliceSet.")

    def fit_cases(self, train: SliceSet, masks: np.ndarray) -> None:
        """Plan, preprocess and train nnU-Net on every case of ``train``.

        Args:
            train: the kept training cases, the task's input channels only; images float32
                ``[N, C, H, W]``, with case ids and geometry.
            masks: uint8 ``[N, H, W]``, 1 inside the target region.
        """
        self.close()
        self._workdir = tempfile.TemporaryDirectory(prefix="poisonbench-nnunet-")
        root = Path(self._workdir.name)
        raw = root / "raw" / _DATASET_NAME
        _write_training_set(train.with_arrays(labels=np.asarray(masks, dtype=np.uint8)), raw)
        try:
            with self._nnunet_session(root, "fit"):
                self._model = self._plan_and_train(root)
        except BaseException:
            self.close()
            raise

    def predict_cases(self, data: SliceSet) -> np.ndarray:
        """Segment every case of ``data`` with the trained model.

        Args:
            data: cases to segment, the task's input channels only; images float32 ``[N, C, H, W]``.

        Returns:
            uint8 ``[N, H, W]``, 1 inside the target region, in ``data``'s row order.
        """
        if self._model is None or self._workdir is None:
            raise PluginError("segmenter 'nnunet': predict_cases() called before fit_cases().")
        root = Path(self._workdir.name)
        try:
            with self._nnunet_session(root, "predict"):
                return self._predict(data, root / "predict")
        finally:
            self.close()

    def close(self) -> None:
        """Remove the cell's temporary nnU-Net folders (raw, preprocessed, results)."""
        if self._workdir is not None:
            self._workdir.cleanup()
        self._workdir, self._model = None, None

    # -- nnU-Net -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _nnunet_session(self, root: Path, stage: str) -> Iterator[None]:
        """nnU-Net's folders and settings for this cell; its output captured, and kept when ``stage`` fails."""
        settings = {
            "nnUNet_raw": str(root / "raw"),
            "nnUNet_preprocessed": str(root / "preprocessed"),
            "nnUNet_results": str(root / "results"),
            "nnUNet_n_proc_DA": str(self.params.workers),
            "nnUNet_compile": "false",  # a compile per cell costs more than the short budgets it would speed up
        }
        before = {name: os.environ.get(name) for name in settings}
        log = root / f"nnunet-{stage}.log"
        os.environ.update(settings)
        try:
            with log.open("a") as sink, contextlib.redirect_stdout(sink):
                yield
        except Exception as exc:
            kept = self._keep_logs(root)
            where = f"; nnU-Net's logs are kept in {kept}" if kept else ""
            raise PluginError(
                f"segmenter 'nnunet': nnU-Net failed to {stage} ({type(exc).__name__}: {exc}){where}. "
                f"Last lines of its output:\n{_tail(root)}"
            ) from exc
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def _device(self) -> Any:
        import torch

        name = self.context.device if self.params.device == "auto" else self.params.device
        return torch.device(name)

    def _plan_and_train(self, root: Path) -> Path:
        """Fingerprint, plan, preprocess and train fold ``all``; the trained model's folder."""
        import torch
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprint_dataset,
            plan_experiment_dataset,
            preprocess_dataset,
        )
        from nnunetv2.run.run_training import get_trainer_from_args

        processes = max(1, self.params.workers)
        threads = torch.get_num_threads()
        # the planner sets torch's thread count to nnUNet_n_proc_DA while it sizes networks (0 is no count)
        os.environ["nnUNet_n_proc_DA"] = str(max(1, self.params.workers or threads))
        extract_fingerprint_dataset(_DATASET_ID, num_processes=processes, check_dataset_integrity=False, verbose=False,
                                    show_progress_bar=False)
        plan_experiment_dataset(_DATASET_ID)
        preprocess_dataset(_DATASET_ID, _PLANS, (self.params.configuration,), (processes,), show_progress_bar=False)
        os.environ["nnUNet_n_proc_DA"] = str(self.params.workers)
        torch.set_num_threads(threads)
        _seed_globally(self.context.seed)  # the network's initial weights
        try:
            trainer = get_trainer_from_args(
                _DATASET_NAME, self.params.configuration, "all", self.params.trainer, _PLANS, device=self._device()
            )
        except RuntimeError as exc:
            raise PluginError(f"The 'trainer' parameter of nnunet names no nnU-Net trainer class: {exc}") from None
        if self.params.epochs is not None:
            trainer.num_epochs = self.params.epochs
        if self.params.iterations_per_epoch is not None:
            trainer.num_iterations_per_epoch = self.params.iterations_per_epoch
        # fold 'all' validates on its own training cases: the pseudo-Dice only logs, so one batch does
        trainer.num_val_iterations_per_epoch = 1
        trainer.get_dataloaders = _seeded_dataloaders(trainer.get_dataloaders, self.context.seed)
        trainer.run_training()
        torch.set_num_threads(threads)
        return Path(trainer.output_folder_base)

    def _predict(self, data: SliceSet, folder: Path) -> np.ndarray:
        import nibabel as nib
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from benchmark import case_volume, stack_slices, write_nifti

        device = self._device()
        predictor = nnUNetPredictor(
            use_mirroring=self.params.mirroring, perform_everything_on_device=device.type == "cuda", device=device,
            verbose=False, allow_tqdm=False,
        )
        predictor.initialize_from_trained_model_folder(str(self._model), use_folds=("all",), checkpoint_name="checkpoint_final.pth")
        io_class = predictor.plans_manager.image_reader_writer_class()
        out = np.zeros((len(data), *data.shape), dtype=np.uint8)
        cases = data.cases
        for number, case in enumerate(self.context.track(cases, "nnU-Net predicting", len(cases))):
            rows = np.flatnonzero(data.case_ids == case)
            images, _, affine, _ = case_volume(data, rows, case)  # [C, H, W, Z]
            files = []
            for c in range(len(images)):
                files.append(str(folder / f"case{number:05d}_{c:04d}.nii.gz"))
                write_nifti(Path(files[-1]), images[c], affine)
            volume, properties = io_class.read_images(files)
            segmentation = predictor.predict_single_npy_array(volume, properties)
            written = folder / f"case{number:05d}.nii.gz"
            io_class.write_seg(np.asarray(segmentation, dtype=np.uint8), str(written), properties)
            predicted = np.asarray(nib.load(str(written)).dataobj)  # [H, W, Z], as the images were written
            grid = None if data.geometry is None else data.geometry.case_grid(rows, case)
            _, _, position = stack_slices(np.asarray(rows), grid)  # each row's slice in the volume
            out[rows] = np.moveaxis(predicted[..., position], -1, 0) == _TARGET
        return out

    def _keep_logs(self, root: Path) -> Path | None:
        """Copy nnU-Net's logs to the cell's artifacts folder, when it has one; that folder, or None."""
        if self.context.artifacts_dir is None:
            return None
        target = Path(self.context.artifacts_dir) / "nnunet-logs"
        target.mkdir(parents=True, exist_ok=True)
        for path in _logs(root):
            shutil.copy2(path, target / path.name)
        return target


def _write_training_set(train: SliceSet, raw: Path) -> None:
    """Write ``train`` (labels: the target mask) as nnU-Net raw data set ``raw`` with the exporter's functions.

    Each case is one volume on its grid (`benchmark.case_volume`): images 0 and the ignore
    label in the slices a reader left out between kept ones.
    """
    from benchmark import case_volume, nnunet_channel_name, write_nifti

    gaps = False
    names = []
    for number, case in enumerate(train.cases):
        rows = np.flatnonzero(train.case_ids == case)
        images, mask, affine, position = case_volume(train, rows, case)
        labels = (mask > 0).astype(np.uint8) * _TARGET
        missing = np.setdiff1d(np.arange(labels.shape[-1]), position)
        if missing.size:
            labels[..., missing] = _IGNORE
            gaps = True
        name = f"case{number:05d}"  # nnU-Net splits file names on '_': the ids are not used
        names.append(name)
        for c in range(len(images)):
            write_nifti(raw / "imagesTr" / f"{name}_{c:04d}.nii.gz", images[c], affine)
        write_nifti(raw / "labelsTr" / f"{name}.nii.gz", labels, affine)
    labels_json: dict[str, int] = {"background": 0, "target": _TARGET}
    if gaps:
        labels_json["ignore"] = _IGNORE
    spec = {
        "channel_names": {str(i): nnunet_channel_name(channel) for i, channel in enumerate(train.channels)},
        "labels": labels_json,
        "numTraining": len(names),
        "file_ending": ".nii.gz",
        "name": _DATASET_NAME,
        "description": "poisonbench cell: the kept (possibly poisoned) training cases; label 1 the task's target region",
    }
    (raw / "dataset.json").write_text(json.dumps(spec, indent=2))


def _logs(root: Path) -> list[Path]:
    """nnU-Net's logs under a cell's folder: its training logs and the captured output, oldest first."""
    found = [*root.glob("nnunet-*.log"), *(root / "results").rglob("training_log_*.txt")]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime)


def _tail(root: Path) -> str:
    lines: list[str] = []
    for path in _logs(root):
        with contextlib.suppress(OSError):
            lines.extend(path.read_text(errors="replace").splitlines())
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def _seed_globally(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seeded_dataloaders(build: Any, seed: int) -> Any:
    """nnU-Net's ``get_dataloaders``, then every loader's patch sampler and the global generators seeded.

    nnU-Net builds its loaders with an unseeded ``RandomState`` (which cases a batch takes) and
    draws crops and augmentations from the global generators; both are seeded once the loaders
    exist (nnU-Net draws and discards one batch while building them).
    """

    def seeded() -> Any:
        loaders = build()
        for offset, loader in enumerate(loaders):
            sampler = getattr(loader, "data_loader", None)  # SingleThreadedAugmenter (workers: 0)
            if sampler is not None and hasattr(sampler, "rs"):
                sampler.rs = np.random.RandomState((seed + offset) % 2**32)
        _seed_globally(seed)
        return loaders

    return seeded

