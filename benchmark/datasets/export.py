"""Export a poisoned training split and the real validation split as NIfTI folders.

Two layouts:

- ``nnunet``: nnU-Net v2 raw — ``imagesTr/{case}_{XXXX}.nii.gz``, ``labelsTr/{case}.nii.gz``
  (the possibly poisoned training split), ``imagesTs/`` + ``labelsTs/`` (the real
  validation split) and a ``dataset.json`` with nnU-Net's BraTS label regions (1 edema,
  2 necrotic core, 3 enhancing; WT (1, 2, 3), TC (2, 3), ET (3)).
- ``folder``: BraTS-2021 style — ``train/{case}/{case}_{t1,t1ce,t2,flair,seg}.nii.gz`` and
  ``val/{case}/...``, labels 1 NCR, 2 ED, 4 ET.

Each volume stacks a case's slices along the third axis (affine: identity, 1 mm). Images
are written as loaded (already z-scored), so read them back with ``normalize: false``.
``manifest.json`` records the poisoned cases, the attack and the SHA-256 of every file.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np

from ..cache import sha256_file
from ..errors import BenchError, ConfigError
from ..executors import cell_threads
from ..regions import BRATS_2021_TO_COMMON, ED, ET, NCR
from ..sliceset import SliceSet

__all__ = ["FORMATS", "NNUNET_BRATS_LABELS", "cell_threads", "export_poisoned", "write_sliceset", "write_nifti"]

FORMATS = ("nnunet", "folder")
# common value -> value written; nnU-Net's BraTS conversion: 1 edema, 2 necrotic core, 3 enhancing
NNUNET_BRATS_LABELS: dict[int, int] = {0: 0, NCR: 2, ED: 1, ET: 3}
FOLDER_LABELS: dict[int, int] = {common: source for source, common in BRATS_2021_TO_COMMON.items()}
_BRATS_SUFFIX = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}


def write_nifti(path: Path, volume: np.ndarray) -> None:
    """Write a 3-D array as NIfTI with an identity affine (1 mm voxels)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(volume), np.eye(4))
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).lstrip(".") or "case"


def _lookup(mapping: dict[int, int]) -> np.ndarray:
    table = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for common, value in mapping.items():
        table[common] = value
    return table


def write_sliceset(
    data: SliceSet,
    out: Path,
    fmt: str,
    part: Literal["train", "val"],
    track: Callable[..., Iterable[Any]] | None = None,
) -> list[str]:
    """Write every case of ``data`` as NIfTI volumes under ``out``.

    Args:
        data: the cases; images float32 ``[N, C, H, W]``, labels common ``[N, H, W]``.
        out: export folder.
        fmt: ``nnunet`` or ``folder``.
        part: ``train`` (imagesTr / train/) or ``val`` (imagesTs / val/).
        track: progress wrapper ``track(iterable, description, total)``.

    Returns:
        the written case names, in order.
    """
    table = _lookup(NNUNET_BRATS_LABELS if fmt == "nnunet" else FOLDER_LABELS)
    cases = data.cases
    iterator = track(cases, f"writing {part}", len(cases)) if track else cases
    names = []
    for case in iterator:
        index = np.flatnonzero(data.case_ids == case)
        images = np.asarray(data.images[index], dtype=np.float32)  # [S, C, H, W]
        labels = table[np.asarray(data.labels[index])]  # [S, H, W]
        name = _safe(str(case))
        names.append(name)
        if fmt == "nnunet":
            suffix = "Tr" if part == "train" else "Ts"
            for c in range(images.shape[1]):
                write_nifti(out / f"images{suffix}" / f"{name}_{c:04d}.nii.gz", np.moveaxis(images[:, c], 0, -1))
            write_nifti(out / f"labels{suffix}" / f"{name}.nii.gz", np.moveaxis(labels, 0, -1))
        else:
            folder = out / part / name
            for c, channel in enumerate(data.channels):
                write_nifti(folder / f"{name}_{_BRATS_SUFFIX.get(channel, channel)}.nii.gz", np.moveaxis(images[:, c], 0, -1))
            write_nifti(folder / f"{name}_seg.nii.gz", np.moveaxis(labels, 0, -1))
    return names


def _nnunet_dataset_json(channels: tuple[str, ...], n_train: int) -> dict[str, Any]:
    return {
        "channel_names": {str(i): name for i, name in enumerate(channels)},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        "regions_class_order": [1, 2, 3],
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "name": "poisonbench-export",
        "description": "poisonbench export: imagesTr/labelsTr is the (poisoned) training split, "
        "imagesTs/labelsTs the real validation split; see manifest.json.",
    }


def export_poisoned(
    config: Any,
    attack_name: str,
    rate: float,
    seed: int,
    fmt: str,
    out: Path,
    quiet: bool = True,
    progress: Callable[..., Iterable[Any]] | None = None,
) -> dict[str, Any]:
    """Load the config's data set, poison its training split and write both splits.

    The split, the seed streams, the device (``config.device``, resolved as a sweep does)
    and the torch thread count (``executor.threads`` and the executor's rule, see
    `cell_threads`) are those of a sweep cell with the same seed, and the attack runs
    through the runner's own step (`benchmark.runner.apply_attack`), so the exported
    training split is the one that cell trains on, and a generator the cell trained is
    reused from the cache rather than trained again. The thread count is restored
    afterwards.

    Args:
        config: a validated `SweepConfig`.
        attack_name: registered attack; its parameters come from the config's ``attacks``
            entry of that name when there is one, else its defaults.
        rate: poison rate in [0, 1].
        seed: the cell seed.
        fmt: ``nnunet`` or ``folder``.
        out: export folder; must be empty or absent, and outside the data folder.
        quiet, progress: progress reporting.

    Returns:
        the manifest written to ``out/manifest.json``.
    """
    from ..cache import cache_root
    from ..catalog import ATTACKS, DATASETS, create_plugin
    from ..environment import package_version, resolve_device
    from ..plugins import RunContext
    from ..runner import apply_attack
    from ..seeding import SeedStreams
    from ..splitting import split_cases

    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}; got {fmt!r}.")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"--rate: expected a poison rate in [0, 1]; got {rate}.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{out}: the export folder must be empty or not exist yet.")
    params = next((spec.params for spec, _ in config.attacks if spec.name == attack_name), {})
    create_plugin(ATTACKS, attack_name, params, "--attack")  # a bad name or parameter fails before loading
    source = create_plugin(DATASETS, config.dataset.name, config.dataset.params, "dataset")
    root = config.dataset.params.get("root")
    if root and _inside(out, Path(root)):
        raise BenchError(f"{out}: inside the data set folder {root}; nothing is ever written there. Choose another --out.")
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
    pool = data.subset(split.attackable)
    # the cell's device, thread count and attack path: a cached generator is reused, not retrained
    with _torch_threads(cell_threads(config.executor)):
        attack, poisoned = apply_attack(attack_name, params, context, pool, rate, SeedStreams(seed), "--attack")
    train = SliceSet.concatenate([data.subset(split.trusted), poisoned]) if split.trusted else poisoned
    val = data.subset(split.val)

    out.mkdir(parents=True, exist_ok=True)
    track = context.track if not quiet else None
    train_names = write_sliceset(train, out, fmt, "train", track)
    val_names = write_sliceset(val, out, fmt, "val", track)
    if fmt == "nnunet":
        (out / "dataset.json").write_text(json.dumps(_nnunet_dataset_json(train.channels, len(train_names)), indent=2))
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
