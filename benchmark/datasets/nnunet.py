"""``nnunet``: nnU-Net v2 raw data sets (``DatasetXXX_Name/``).

``dataset.json`` gives ``channel_names`` (index -> name), ``labels`` (name -> value, or a
list of values for a region), ``numTraining``, ``file_ending`` and optionally
``regions_class_order``; images are ``imagesTr/{case}_{XXXX}{ending}``, labels
``labelsTr/{case}{ending}``. Channels are named from ``channel_names`` (``T1Gd`` ->
``t1ce`` ...). Labels are mapped to the common convention through the BraTS regions:
ET values -> 3, TC \\ ET -> 1 (NCR), WT \\ TC -> 2 (ED). The regions come from ``labels``
when its names are BraTS's (``edema``, ``necrotic``, ``enhancing`` or ``whole tumor``,
``tumor core``, ``enhancing tumor``), else from the ``regions`` parameter.

``labels`` is read in every form nnU-Net's ``LabelManager`` reads: values as numbers or
lists (a one-value region may be a number: ``"enhancing tumor": 3`` beside
``"whole tumor": [1, 2, 3]``), and an ``ignore`` label (nnU-Net's unannotated voxels),
which belongs to no tumour region and is read as background.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from ..catalog import register_dataset
from ..errors import DataError
from ..regions import ED, ET, NCR
from ._volumes import CaseFiles, VolumeParams, VolumeSource, invert, normalise_channel, read_json

__all__ = ["NnunetSource", "is_region_based", "label_values", "regions_from_labels", "mapping_from_regions"]

_SINGLE = {
    "ET": {"et", "enhancing", "enhancingtumor", "enhancingtumour", "gdenhancingtumor", "gdenhancingtumour", "enhancingtumorcore"},
    "NCR": {"ncr", "net", "netc", "ncrnet", "necrotic", "necrosis", "necroticcore", "necrotictumorcore", "necrotictumourcore",
            "nonenhancing", "nonenhancingtumor", "nonenhancingtumour", "necroticnonenhancingtumorcore"},
    "ED": {"ed", "edema", "oedema", "peritumoraledema", "peritumoraloedema", "snfh", "surroundingnonenhancingflairhyperintensity"},
}
_REGION_NAMES = {
    "WT": {"wt", "wholetumor", "wholetumour", "whole"},
    "TC": {"tc", "tumorcore", "tumourcore", "core"},
    "ET": {"et", "enhancingtumor", "enhancingtumour", "enhancing"},
}


#: nnU-Net's name for the label of unannotated voxels (partial annotation); it is read as background.
IGNORE = "ignore"


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def label_value(value: Any, where: str, name: str) -> int:
    """A label value as nnU-Net reads it (``int(value)``): an integer, or a float or string that is one."""
    if isinstance(value, bool):
        raise DataError(f"{where}: label '{name}' must have an integer value (or a list of them); got {value!r}.")
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
    except ValueError:
        number = None
    if number is None or not np.isfinite(number) or number != int(number) or number < 0:
        raise DataError(f"{where}: label '{name}' must have an integer value (or a list of them); got {value!r}.")
    return int(number)


def label_values(value: Any, where: str, name: str) -> list[int]:
    """The values of one ``labels`` entry: a number, or a list (or tuple) of numbers."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise DataError(f"{where}: label '{name}' lists no value.")
        return [label_value(v, where, name) for v in value]
    return [label_value(value, where, name)]


def is_region_based(labels: dict[str, Any]) -> bool:
    """nnU-Net's rule (``LabelManager``): a data set is region-based when any entry lists more than one value."""
    return any(isinstance(v, (list, tuple)) and len(v) > 1 for k, v in labels.items() if k != IGNORE)


def regions_from_labels(labels: dict[str, Any], where: str) -> dict[str, set[int]] | None:
    """ET / TC / WT value sets from an nnU-Net ``labels`` mapping, or None when its names are not BraTS's.

    Reads every form nnU-Net's ``LabelManager`` accepts: in a region-based mapping (an
    entry lists several values) every entry is a region, written as a list or, for a
    one-value region, as a number (``"enhancing tumor": 3`` beside ``"whole tumor": [1, 2, 3]``);
    otherwise every entry is one label, written as a number or a one-value list. The
    ``ignore`` entry (unannotated voxels) belongs to no region.
    """
    regional = is_region_based(labels)
    single: dict[str, set[int]] = {"ET": set(), "NCR": set(), "ED": set()}
    regions: dict[str, set[int]] = {}
    for name, value in labels.items():
        key = _key(name)
        values = set(label_values(value, where, name))
        if key in ("background", "bg") or name == IGNORE:
            continue
        table = _REGION_NAMES if regional else _SINGLE
        kind = next((kind for kind, names in table.items() if key in names), None)
        if kind is None:
            return None
        if regional:
            regions[kind] = regions.get(kind, set()) | values
        else:
            single[kind] |= values
    if regional:
        return regions if set(regions) == {"WT", "TC", "ET"} else None
    if not single["ET"] and not single["NCR"] and not single["ED"]:
        return None
    et = single["ET"]
    tc = et | single["NCR"]
    return {"ET": et, "TC": tc, "WT": tc | single["ED"]}


def mapping_from_regions(regions: dict[str, set[int]], where: str) -> dict[int, int]:
    """Source value -> common value: ET -> 3, TC \\ ET -> NCR, WT \\ TC -> ED, 0 -> 0."""
    et, tc, wt = (set(regions[r]) for r in ("ET", "TC", "WT"))
    if not et <= tc <= wt:
        raise DataError(f"{where}: regions must nest, ET ⊆ TC ⊆ WT; got ET {sorted(et)}, TC {sorted(tc)}, WT {sorted(wt)}.")
    if 0 in wt:
        raise DataError(f"{where}: label value 0 is background and cannot be part of a tumour region.")
    mapping = {0: 0}
    mapping.update({v: ED for v in wt - tc})
    mapping.update({v: NCR for v in tc - et})
    mapping.update({v: ET for v in et})
    return mapping


@register_dataset("nnunet")
class NnunetSource(VolumeSource):
    """nnU-Net raw data set folder (imagesTr/{case}_{XXXX}, labelsTr/{case}); regions from dataset.json."""

    class Params(VolumeParams):
        regions: dict[str, list[int]] | None = Field(
            None,
            description="label values making each region, e.g. {ET: [3], TC: [2, 3], WT: [1, 2, 3]}; "
            "needed when dataset.json's label names are not BraTS's",
        )

        @field_validator("regions")
        @classmethod
        def _three_regions(cls, value: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
            if value is None:
                return None
            value = {k.upper(): v for k, v in value.items()}
            if set(value) != {"ET", "TC", "WT"}:
                raise ValueError(f"regions must give exactly ET, TC and WT; got {sorted(value)}")
            return value

    def discover(self) -> tuple[list[CaseFiles], list[str]]:
        root = self.check_root()
        spec_path = root / "dataset.json"
        spec = read_json(spec_path)
        names = spec.get("channel_names", spec.get("modality"))
        if not isinstance(names, dict) or not names:
            raise DataError(f"{spec_path}: 'channel_names' must map channel indices to names (e.g. {{\"0\": \"T1\"}}); got {names!r}.")
        try:
            order = sorted((int(k), normalise_channel(v)) for k, v in names.items())
        except (TypeError, ValueError):
            raise DataError(f"{spec_path}: 'channel_names' keys must be channel indices 0, 1, ...; got {list(names)}.") from None
        channels = [n for _, n in order]
        if len(set(channels)) != len(channels):
            raise DataError(f"{spec_path}: 'channel_names' names the same channel twice: {channels}.")
        ending = spec.get("file_ending", ".nii.gz")
        if ending not in (".nii.gz", ".nii"):
            raise DataError(f"{spec_path}: file_ending {ending!r} is not supported; this reader reads NIfTI (.nii.gz or .nii).")
        self._mapping = self._mapping_of(spec, spec_path)
        images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: missing; expected the training images ({{case}}_0000{ending}) here.")
        pattern = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})" + re.escape(ending) + "$")
        found: dict[str, dict[int, Path]] = {}
        for path in sorted(images_dir.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            match = pattern.match(path.name)
            if match is None:
                raise DataError(f"{path}: not named {{case}}_XXXX{ending} as dataset.json's file_ending says.")
            index = int(match["index"])
            if index >= len(channels):
                raise DataError(f"{path}: channel {index:04d} is not in dataset.json's channel_names (0..{len(channels) - 1}).")
            found.setdefault(match["case"], {})[index] = path
        if not found:
            raise DataError(f"{images_dir}: empty; expected {{case}}_0000{ending} files.")
        declared = spec.get("numTraining")
        if declared is not None and declared != len(found):
            raise DataError(f"{spec_path}: numTraining is {declared} but {images_dir} holds {len(found)} cases.")
        cases = []
        for case_id in sorted(found):
            files = found[case_id]
            channel_files: dict[str, tuple[Path, int | None]] = {}
            for index, channel in enumerate(channels):
                if index not in files:
                    raise DataError(f"{images_dir / f'{case_id}_{index:04d}{ending}'}: missing {channel} image of case {case_id}.")
                channel_files[channel] = (files[index], None)
            cases.append(CaseFiles(case_id, channel_files, labels_dir / f"{case_id}{ending}"))
        return cases, channels

    def _mapping_of(self, spec: dict[str, Any], spec_path: Path) -> dict[int, int]:
        labels = spec.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise DataError(f"{spec_path}: 'labels' must map label names to values; got {labels!r}.")
        if self.params.regions is not None:
            regions = {k: set(v) for k, v in self.params.regions.items()}
        else:
            regions = regions_from_labels(labels, str(spec_path))
            if regions is None:
                raise DataError(
                    f"{spec_path}: label names {list(labels)} are not BraTS's; set the nnunet parameter 'regions' "
                    "to the label values of each region, e.g. regions: {ET: [3], TC: [2, 3], WT: [1, 2, 3]}."
                )
        mapping = mapping_from_regions(regions, str(spec_path))
        declared: set[int] = set()
        for name, value in labels.items():
            if name == IGNORE:  # unannotated voxels: no tumour region claims them, so they count as background
                ignore = label_value(value, str(spec_path), name)
                if ignore in mapping and mapping[ignore] != 0:
                    raise DataError(f"{spec_path}: the ignore label {ignore} is also a tumour label; nnU-Net needs it above every other label.")
                mapping[ignore] = 0
                continue
            declared.update(label_values(value, str(spec_path), name))
        outside = sorted(v for v in declared if v not in mapping)
        if outside:
            raise DataError(
                f"{spec_path}: label values {outside} belong to no region ET/TC/WT; add them to 'regions' or remove them from 'labels'."
            )
        return mapping

    def label_mapping(self, case: CaseFiles) -> dict[int, int]:
        return self._mapping

    def source_meta(self) -> dict[str, Any]:
        return {"source_labels": invert(self._mapping), "convention": "nnunet"}
