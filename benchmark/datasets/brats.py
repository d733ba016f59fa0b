"""``brats``: BraTS challenge folders, ≤ 2021 and 2023+ GLI naming.

- BraTS ≤ 2021: ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``;
  labels 1 NCR, 2 ED, 4 ET.
- BraTS 2023+ GLI: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``;
  labels 1 NCR, 2 ED, 3 ET.

The naming is detected from the file names (``.nii`` and ``.nii.gz`` alike); the label
convention follows it unless ``convention`` forces one year's values. Channels are
named ``t1``, ``t1ce``, ``t2``, ``flair``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..catalog import register_dataset
from ..errors import DataError
from ..regions import BRATS_2021_TO_COMMON, BRATS_2023_TO_COMMON
from ._volumes import NIFTI_ENDINGS, CaseFiles, VolumeParams, VolumeSource, invert

__all__ = ["BratsSource", "SUFFIXES"]

# naming -> common channel name -> file suffix (before the NIfTI ending)
SUFFIXES: dict[str, dict[str, str]] = {
    "2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
CHANNELS = ("t1", "t1ce", "t2", "flair")
_MAPPINGS = {"2021": BRATS_2021_TO_COMMON, "2023": BRATS_2023_TO_COMMON}


def _naming_of(names: list[str]) -> set[str]:
    found = set()
    for naming, suffixes in SUFFIXES.items():
        for suffix in suffixes.values():
            if any(n.endswith(suffix + e) for n in names for e in NIFTI_ENDINGS):
                found.add(naming)
    return found


def _find(folder_files: list[Path], suffix: str) -> Path | None:
    for ending in NIFTI_ENDINGS:
        for path in folder_files:
            if path.name.endswith(suffix + ending) and not path.name.startswith("._"):
                return path
    return None


@register_dataset("brats")
class BratsSource(VolumeSource):
    """BraTS folders (≤ 2021: ET = 4; 2023+ GLI: ET = 3), one sub-folder per case."""

    layout = (
        "one folder per case, e.g. BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz (BraTS 2021) "
        "or BraTS-GLI-00000-000/BraTS-GLI-00000-000-"
        "{t1n,t1c,t2w,t2f,seg}.nii.gz (2023+)"
    )

    class Params(VolumeParams):
        convention: Literal["auto", "2021", "2023"] = Field(
            "auto", description="label values: 2021 (ET = 4), 2023 (ET = 3), or auto from the file names"
        )

    def _naming(self, case_dirs: list[Path]) -> str:
        names = [p.name for d in case_dirs for p in d.iterdir()]
        found = _naming_of(names)
        if not found:
            raise DataError(
                f"{self.root}: no BraTS files found; expected case folders holding <case>_t1ce.nii.gz ... "
                "(≤ 2021) or <case>-t1c.nii.gz ... (2023+)."
            )
        if len(found) > 1:
            raise DataError(f"{self.root}: both BraTS 2021 (_t1ce) and 2023 (-t1c) file names are present; use one naming per folder.")
        return found.pop()

    def discover(self) -> tuple[list[CaseFiles], list[str]]:
        root = self.check_root()
        case_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not case_dirs:
            raise DataError(f"{root}: empty; expected one folder per BraTS case (e.g. BraTS2021_00000/).")
        naming = self._naming(case_dirs)
        self._file_naming = naming
        suffixes = dict(SUFFIXES[naming])
        extra = [m for m in (self.params.modalities or []) if m not in suffixes]
        for name in extra:  # e.g. 'ct' in an export of the synthetic set
            suffixes[name] = ("_" if naming == "2021" else "-") + name
        wanted = list(self.params.modalities or CHANNELS)
        cases = []
        for folder in case_dirs:
            files = [p for p in folder.iterdir() if p.is_file()]
            if not _naming_of([p.name for p in files]):
                continue  # not a case folder (e.g. a notes/ folder)
            sep = "_" if naming == "2021" else "-"
            channels: dict[str, tuple[Path, int | None]] = {}
            for channel in wanted:
                path = _find(files, suffixes[channel])
                if path is None:
                    raise DataError(
                        f"{folder / (folder.name + suffixes[channel] + '.nii.gz')}: missing {channel} image of case {folder.name}; "
                        f"expected a file ending in '{suffixes[channel]}.nii.gz' or '.nii'."
                    )
                channels[channel] = (path, None)
            label = _find(files, suffixes["seg"]) or folder / f"{folder.name}{sep}seg.nii.gz"
            cases.append(CaseFiles(folder.name, channels, label))
        if not cases:
            raise DataError(f"{root}: no BraTS case folder found.")
        return cases, wanted

    @property
    def convention(self) -> str:
        forced = self.params.convention
        return forced if forced != "auto" else getattr(self, "_file_naming", "2021")

    def label_mapping(self, case: CaseFiles) -> dict[int, int]:
        return _MAPPINGS[self.convention]

    def read_case(self, case: CaseFiles, channels):  # type: ignore[no-untyped-def]
        try:
            return super().read_case(case, channels)
        except DataError as exc:
            if "unexpected label values" not in str(exc):
                raise
            other = "2023" if self.convention == "2021" else "2021"
            raise DataError(
                f"{exc} (BraTS {self.convention} convention; if this folder uses the {other} values, set convention: '{other}')."
            ) from None

    def source_meta(self) -> dict[str, Any]:
        return {"source_labels": invert(_MAPPINGS[self.convention]), "convention": f"brats{self.convention}"}

