"""Export a poisoned training split and the real validation split as NIfTI folders.

Two layouts:

- ``nnunet``: nnU-Net v2 raw — ``imagesTr/{case}_{XXXX}.nii.gz``, ``labelsTr/{case}.nii.gz``
  (the possibly poisoned training split), ``imagesTs/`` + ``labelsTs/`` (the real
  validation split) and a ``dataset.json`` with nnU-Net's BraTS label regions (1 edema,
  2 necrotic core, 3 enhancing; WT (1, 2, 3), TC (2, 3), ET (3)).
- ``folder``: BraTS-2021 style — ``train/{case}/{case}_{t1,t1ce,t2,flair,seg}.nii.gz`` and
  ``val/{case}/...``, labels 1 NCR, 2 ED, 4 ET.

Geometry: each volume stacks a case's slices along the third axis under the affine its
source records (`benchmark.geometry`): a NIfTI source's own affine and spacing (shifted by
the reader's in-plane crop/pad), synthetic-brats' subject-mm grid (pixel ``220 / size``
mm, orientation P, L, S, the case's slice spacing). Every kept slice sits at its true
position: the volume spans the first to the last kept slice, and the slices a reader left
out in between (``slices: tumour``) are written as gap slices: images 0, and in the labels
nnU-Net's ``ignore`` label (4, declared in ``dataset.json`` only when some case has a gap;
nnU-Net leaves those voxels out of its loss) or background 0 in the BraTS folder layout,
which has no ignore label. Reading an export back, gap slices hold no brain and are
dropped again. ``manifest.json`` lists each case's written slice positions. A source that
records no geometry is written with an identity affine (1 mm), and the manifest says so.

Channel names in ``dataset.json`` choose nnU-Net's normalisation (by name: ``CT`` gets
CT normalisation, clipping to the data set's Hounsfield percentiles; any other name
z-scoring per case). Images are written as loaded, already z-scored per case and channel
over the brain mask, so every channel must get z-scoring, which leaves them as they are
inside the brain: MRI channels keep their names (``t1``, ``t1ce``, ...), and the ct
channel is named ``ct_zscored`` (read back as ``ct``), never ``CT``. Read an export back
with ``normalize: false``.

The nnU-Net layout's folder is named as nnU-Net expects, ``DatasetNNN_Name`` (default
`default_folder_name`). ``manifest.json`` records the poisoned cases, the attack, the
geometry and the SHA-256 of every file.
"""

from __future__ import annotations

import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np

from ..cache import sha256_file
from ..errors import BenchError, ConfigError
from ..executors import cell_threads
from ..geometry import stack_slices
from ..paths import safe_file_name
from ..regions import BRATS_2021_TO_COMMON, ED, ET, NCR
from ..sliceset import SliceSet

__all__ = [
    "FORMATS", "NNUNET_BRATS_LABELS", "NNUNET_IGNORE", "case_volume", "cell_threads", "default_folder_name", "export_poisoned",
    "nnunet_channel_name", "write_sliceset", "write_nifti",
]

FORMATS = ("nnunet", "folder")
_NNUNET_FOLDER = re.compile(r"^Dataset\d{3}_\w+$")
# common value -> value written; nnU-Net's BraTS conversion: 1 edema, 2 necrotic core, 3 enhancing
NNUNET_BRATS_LABELS: dict[int, int] = {0: 0, NCR: 2, ED: 1, ET: 3}
FOLDER_LABELS: dict[int, int] = {common: source for source, common in BRATS_2021_TO_COMMON.items()}
_BRATS_SUFFIX = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
#: nnU-Net's ignore label in an export's labels: the slices a reader left out between kept ones.
NNUNET_IGNORE = 4
#: nnU-Net normalises a channel by its name; these names would give a z-scored channel the wrong scheme.
_NNUNET_SCHEME_NAMES = {"ct", "nonorm", "rescale_to_0_1", "rgb_to_0_1"}


def nnunet_channel_name(channel: str) -> str:
    """The ``dataset.json`` name of a channel: nnU-Net z-scores every channel whose name is no scheme's.

    ``ct`` becomes ``ct_zscored``: the stored values are z-scores, not Hounsfield units.
    """
    return f"{channel}_zscored" if channel.casefold() in _NNUNET_SCHEME_NAMES else channel


def default_folder_name(dataset_id: int, attack: str, rate: float, seed: int) -> str:
    """nnU-Net's ``DatasetNNN_Name`` for an export, e.g. ``Dataset501_noise_r050_s0``."""
    if not 1 <= dataset_id <= 999:
        raise ConfigError(f"--dataset-id: expected an nnU-Net data set id from 1 to 999; got {dataset_id}.")
    name = re.sub(r"[^A-Za-z0-9]+", "", attack) or "attack"
    return f"Dataset{dataset_id:03d}_{name}_r{round(rate * 100):03d}_s{seed}"


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write a 3-D array as NIfTI under ``affine`` (voxel -> world mm; identity when None), as qform and sform."""
    import nibabel as nib

    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.asarray(volume), affine)
    image.set_qform(affine, code=1)  # scanner coordinates, read alike by nibabel, SimpleITK and nnU-Net
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def _lookup(mapping: dict[int, int]) -> np.ndarray:
    table = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for common, value in mapping.items():
        table[common] = value
    return table


def case_volume(data: SliceSet, rows: np.ndarray, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One case's slices on its grid, from the first kept slice to the last (`benchmark.geometry.stack_slices`).

    Args:
        data: the slice set; its geometry places the rows (identity affine when it has none).
        rows: the case's rows.
        case: its id, for errors.

    Returns:
        (images float32 ``[C, H, W, Z]``, common labels uint8 ``[H, W, Z]``, the volume's
        affine ``[4, 4]``, the sorted grid positions of the kept slices ``[S]``). Gap slices
        are 0 in both arrays.
    """
    grid = None if data.geometry is None else data.geometry.case_grid(rows, case)
    images, affine, position = stack_slices(np.asarray(data.images[rows], dtype=np.float32), grid)  # [C, H, W, Z]
    labels, _, _ = stack_slices(np.asarray(data.labels[rows]), grid)
    return images, labels, affine, np.sort(position)


def write_sliceset(
    data: SliceSet,
    out: Path,
    fmt: str,
    part: Literal["train", "val"],
    track: Callable[..., Iterable[Any]] | None = None,
) -> dict[str, list[int]]:
    """Write every case of ``data`` as NIfTI volumes under ``out``, each at its source's geometry.

    Args:
        data: the cases; images float32 ``[N, C, H, W]``, labels common ``[N, H, W]``.
        out: export folder.
        fmt: ``nnunet`` or ``folder``.
        part: ``train`` (imagesTr / train/) or ``val`` (imagesTs / val/).
        track: progress wrapper ``track(iterable, description, total)``.

    Returns:
        written case name -> grid positions of its kept slices in the written volume, in
        case order (a gap between positions is a gap slice, see the module docstring).
    """
    table = _lookup(NNUNET_BRATS_LABELS if fmt == "nnunet" else FOLDER_LABELS)
    cases = data.cases
    iterator = track(cases, f"writing {part}", len(cases)) if track else cases
    written: dict[str, list[int]] = {}
    for case in iterator:
        images, common, affine, position = case_volume(data, np.flatnonzero(data.case_ids == case), case)
        labels = table[common]
        if fmt == "nnunet":
            gaps = np.setdiff1d(np.arange(labels.shape[-1]), position)
            labels[..., gaps] = NNUNET_IGNORE
        name = safe_file_name(str(case))
        written[name] = position.tolist()
        if fmt == "nnunet":
            suffix = "Tr" if part == "train" else "Ts"
            for c in range(len(images)):
                write_nifti(out / f"images{suffix}" / f"{name}_{c:04d}.nii.gz", images[c], affine)
            write_nifti(out / f"labels{suffix}" / f"{name}.nii.gz", labels, affine)
        else:
            folder = out / part / name
            for c, channel in enumerate(data.channels):
                write_nifti(folder / f"{name}_{_BRATS_SUFFIX.get(channel, channel)}.nii.gz", images[c], affine)
            write_nifti(folder / f"{name}_seg.nii.gz", labels, affine)
    return written


def _nnunet_dataset_json(channels: tuple[str, ...], n_train: int, name: str, gaps: bool) -> dict[str, Any]:
    labels: dict[str, Any] = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    if gaps:
        labels["ignore"] = NNUNET_IGNORE
    return {
        "channel_names": {str(i): nnunet_channel_name(channel) for i, channel in enumerate(channels)},
        "labels": labels,
        "regions_class_order": [1, 2, 3],
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "poisonbench export: imagesTr/labelsTr is the (poisoned) training split, "
        "imagesTs/labelsTs the real validation split; see manifest.json.",
    }


def export_poisoned(
    config: Any,
    attack_name: str,
    rate: float,
    seed: int,
    fmt: str,
    out: Path | None = None,
    quiet: bool = True,
    progress: Callable[..., Iterable[Any]] | None = None,
    dataset_id: int = 501,
) -> dict[str, Any]:
    """Load the config's data set, poison its training split and write both splits.

    The split, the seed streams, the device (``config.device``, resolved as a sweep does)
    and the torch thread count (``executor.threads`` and the executor's rule, see
    `cell_threads`) are those of a sweep cell with the same seed, and the attack runs
    through the runner's own function (`benchmark.runner.attack_training_split`: the
    trusted cases, then the attackable pool as the attack poisons it), so the exported
    training split is the one that cell trains on before its defense, and a generator the
    cell trained is reused from the cache rather than trained again. The thread count is
    restored afterwards.

    Args:
        config: a validated `SweepConfig`.
        attack_name: registered attack; its parameters come from the config's ``attacks``
            entry of that name when there is one, else its defaults.
        rate: poison rate in [0, 1].
        seed: the cell seed.
        fmt: ``nnunet`` or ``folder``.
        out: export folder; must be empty or absent, and outside the data folder. Defaults
            to `default_folder_name` (nnU-Net's ``DatasetNNN_Name``) in the working folder.
        quiet, progress: progress reporting.
        dataset_id: nnU-Net data set id of the default folder name. Defaults to 501.

    Returns:
        the manifest written to ``out/manifest.json``.
    """
    from ..cache import cache_root
    from ..catalog import ATTACKS, DATASETS, create_plugin
    from ..environment import package_version, resolve_device
    from ..plugins import RunContext
    from ..runner import attack_training_split
    from ..seeding import SeedStreams
    from ..splitting import split_cases

    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}; got {fmt!r}.")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"--rate: expected a poison rate in [0, 1]; got {rate}.")
    folder_name = default_folder_name(dataset_id, attack_name, rate, seed)
    out = Path(out) if out is not None else Path(folder_name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{out}: the export folder must be empty or not exist yet.")
    params = next((spec.params for spec, _ in config.attacks if spec.name == attack_name), {})
    create_plugin(ATTACKS, attack_name, params, "--attack")  # a bad name or parameter fails before loading
    source = create_plugin(DATASETS, config.dataset.name, config.dataset.params, "dataset")
    for folder in source.protected_folders():
        if _inside(out, Path(folder)):
            raise BenchError(f"{out}: inside the data set folder {folder}; nothing is ever written there. Choose another --out.")
    fingerprint = source.fingerprint()
    device = resolve_device(config.device)
    source.bind(RunContext(quiet=quiet, progress=progress))
    data = source.load()
    split = split_cases(data, config.split.val_fraction, config.split.seed, config.split.trusted)
    context = RunContext(
        device=device,
        seed=seed,
        cache_dir=cache_root(),
        dataset_fingerprint=fingerprint,
        inputs=tuple(config.task.inputs),
        target=config.task.target,
        quiet=quiet,
        progress=progress,
    )
    trusted = data.subset(split.trusted) if split.trusted else None
    # the cell's device, thread count and attack path: a cached generator is reused, not retrained
    with _torch_threads(cell_threads(config.executor)):
        attack, poisoned, train = attack_training_split(
            attack_name, params, context, trusted, data.subset(split.attackable), rate, SeedStreams(seed), "--attack"
        )
    val = data.subset(split.val)
    if train.geometry is None or val.geometry is None:
        warnings.warn(
            f"data set '{config.dataset.name}' records no slice geometry: the export is written with an identity affine (1 mm).",
            stacklevel=2,
        )

    out.mkdir(parents=True, exist_ok=True)
    track = context.track if not quiet else None
    train_slices = write_sliceset(train, out, fmt, "train", track)
    val_slices = write_sliceset(val, out, fmt, "val", track)
    train_names, val_names = list(train_slices), list(val_slices)
    gaps = any(len(p) != p[-1] + 1 for p in (*train_slices.values(), *val_slices.values()))
    if fmt == "nnunet":
        spec = _nnunet_dataset_json(train.channels, len(train_names), out.name if _NNUNET_FOLDER.match(out.name) else folder_name, gaps)
        (out / "dataset.json").write_text(json.dumps(spec, indent=2))
    files = {
        path.relative_to(out).as_posix(): sha256_file(path)
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }
    names = dict(zip(train.cases, train_names))
    manifest = {
        "format": fmt,
        "poisonbench_version": package_version(),
        "dataset": {"name": config.dataset.name, "params": config.dataset.params, "fingerprint": fingerprint},
        "split": config.split.model_dump(),
        "attack": {"name": attack_name, "params": attack.params.model_dump(mode="json"), "report": _jsonable(attack.report())},
        "rate": rate,
        "seed": seed,
        "channels": list(train.channels),
        "labels": {"nnunet": "1 edema, 2 necrotic core, 3 enhancing (nnU-Net BraTS)", "folder": "1 NCR, 2 ED, 4 ET (BraTS 2021)"}[fmt],
        "images": "z-scored per case and channel as loaded; read back with normalize: false",
        "geometry": (
            "source affine; each volume spans its case's first to last kept slice, gap slices are 0 in the images and "
            + ("the ignore label 4" if fmt == "nnunet" else "background 0") + " in the labels"
            if train.geometry is not None and val.geometry is not None
            else "unknown: identity affine (1 mm)"
        ),
        "slice_positions": {**train_slices, **val_slices},
        "train_cases": train_names,
        "val_cases": val_names,
        "trusted_cases": [names[c] for c in split.trusted],
        "poisoned_cases": [names[c] for c in poisoned.poisoned_cases()],
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run under ``count`` torch threads (None: unchanged), restoring the count afterwards."""
    import torch

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.expanduser().resolve())
        return True
    except ValueError:
        return False


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
