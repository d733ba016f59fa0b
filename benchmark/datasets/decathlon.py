"""``decathlon``: Medical Segmentation Decathlon ``Task01_BrainTumour``.

``dataset.json`` lists the training cases; ``imagesTr/BRATS_XXX.nii.gz`` are 4-D with the
channels of ``modality`` (FLAIR, T1w, T1gd, T2w), ``labelsTr/BRATS_XXX.nii.gz`` holds
1 edema, 2 non-enhancing tumour, 3 enhancing tumour. Channels are renamed ``flair``,
``t1``, ``t1ce``, ``t2`` and labels mapped to the common convention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..catalog import register_dataset
from ..errors import DataError
from ..regions import MSD_TO_COMMON
from ._volumes import CaseFiles, VolumeParams, VolumeSource, invert, list_nifti, normalise_channel, read_json, strip_ending

__all__ = ["DecathlonSource"]


def _resolve(root: Path, entry: Any, where: str) -> Path:
    if not isinstance(entry, str) or not entry:
        raise DataError(f"{where}: expected a relative file path such as './imagesTr/BRATS_001.nii.gz'; got {entry!r}.")
    return (root / entry).resolve() if not Path(entry).is_absolute() else Path(entry)


@register_dataset("decathlon")
class DecathlonSource(VolumeSource):
    """Medical Segmentation Decathlon Task01_BrainTumour (4-D images; 1 ED, 2 NCR/NET, 3 ET)."""

    layout = "Task01_BrainTumour as the Decathlon archive unpacks: dataset.json, imagesTr/BRATS_XXX.nii.gz and labelsTr/BRATS_XXX.nii.gz"

    class Params(VolumeParams):
        pass

    def discover(self) -> tuple[list[CaseFiles], list[str]]:
        root = self.check_root()
        spec_path = root / "dataset.json"
        spec = read_json(spec_path)
        modality = spec.get("modality")
        if not isinstance(modality, dict) or not modality:
            raise DataError(f"{spec_path}: 'modality' must map channel indices to names (e.g. {{\"0\": \"FLAIR\"}}); got {modality!r}.")
        try:
            order = sorted((int(k), normalise_channel(v)) for k, v in modality.items())
        except (TypeError, ValueError):
            raise DataError(f"{spec_path}: 'modality' keys must be channel indices 0, 1, ...; got {list(modality)}.") from None
        if [i for i, _ in order] != list(range(len(order))):
            raise DataError(f"{spec_path}: 'modality' indices must be 0..{len(order) - 1}; got {[i for i, _ in order]}.")
        channels = [name for _, name in order]
        self._check_labels(spec, spec_path)
        training = spec.get("training")
        if not isinstance(training, list) or not training:
            raise DataError(f"{spec_path}: 'training' must list the training cases as {{'image': ..., 'label': ...}}.")
        declared = spec.get("numTraining")
        if declared is not None and declared != len(training):
            raise DataError(f"{spec_path}: numTraining is {declared} but 'training' lists {len(training)} cases.")
        images_dir = root / "imagesTr"
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: missing; expected the 4-D training images here.")
        on_disk = {p.resolve() for p in list_nifti(images_dir)}
        cases = []
        for i, entry in enumerate(training):
            where = f"{spec_path} training[{i}]"
            if not isinstance(entry, dict):
                raise DataError(f"{where}: expected {{'image': ..., 'label': ...}}; got {entry!r}.")
            image = _resolve(root, entry.get("image"), where + ".image")
            if image not in on_disk:
                raise DataError(f"{image}: listed in {spec_path} (training[{i}]) but not found in {images_dir}.")
            label = _resolve(root, entry.get("label"), where + ".label") if entry.get("label") else None
            case_id = strip_ending(image.name)
            cases.append(CaseFiles(case_id, {c: (image, k) for k, c in enumerate(channels)}, label))
        listed = {c.channels[channels[0]][0] for c in cases}
        unlisted = sorted(p.name for p in on_disk - listed)
        if unlisted:
            raise DataError(f"{spec_path}: disagrees with {images_dir}: {len(unlisted)} image(s) not listed in 'training', e.g. {unlisted[:3]}.")
        cases.sort(key=lambda c: c.case_id)
        return cases, channels

    def _check_labels(self, spec: dict[str, Any], spec_path: Path) -> None:
        labels = spec.get("labels")
        if labels is None:
            return
        if not isinstance(labels, dict):
            raise DataError(f"{spec_path}: 'labels' must map values to names; got {labels!r}.")
        values = set()
        for key in labels:
            try:
                values.add(int(key))
            except (TypeError, ValueError):
                raise DataError(f"{spec_path}: 'labels' keys must be label values 0, 1, 2, 3; got {key!r}.") from None
        unknown = sorted(values - set(MSD_TO_COMMON))
        if unknown:
            raise DataError(f"{spec_path}: label values {unknown} are not part of Task01 (0 background, 1 edema, 2 non-enhancing, 3 enhancing).")

    def label_mapping(self, case: CaseFiles) -> dict[int, int]:
        return MSD_TO_COMMON

    def source_meta(self) -> dict[str, Any]:
        return {"source_labels": invert(MSD_TO_COMMON), "convention": "msd-task01"}
