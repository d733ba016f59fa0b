"""``synthetic-brats``: the embedded data set — synthetic gliomas on real MNI152 anatomy.

Each case deforms the MNI ICBM 2009 symmetric template (Fonov et al., NeuroImage 2011,
shipped in nilearn) and plants a glioma (necrotic core, enhancing rim, edema) labelled in
the BraTS ≤ 2021 convention; five co-registered contrasts (T1, T1-Ce, T2, FLAIR, CT) are
derived from tissue classes, z-scored per case and channel over the brain mask (recorded
on the `SliceSet` with the rule, for attacks that write intensities). Generated once per
parameter set and cached on disk.

CT is unenhanced by default (the enhancing rim 31 HU against white matter 29 HU);
``ct_contrast: true`` renders contrast-enhanced CT instead, where the rim rises by about
30 HU and normal brain by 2-5 HU (values and references in
`benchmark.datasets.synthetic_anatomy`), so that a translator from CT can know where the
rim enhances. Every other channel and the labels stay those of the unenhanced data set.

Each slice carries its geometry (`benchmark.geometry`): the generator's subject-mm grid
(pixel ``220 / size`` mm, rows anterior -> posterior, columns patient right -> left, the
case's own slice positions and spacing; see `synthetic_anatomy.grid_affine`). It is not
part of the fingerprint: the images are those generated before it was recorded.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import Field

from ..cache import cached_sliceset
from ..catalog import register_dataset
from ..geometry import SliceGeometry
from ..normalisation import ZSCORE
from ..plugins import DatasetSource, PluginParams
from ..regions import BRATS_2021_TO_COMMON, to_common_labels
from ..sliceset import SliceSet
from .synthetic_anatomy import CHANNELS, GENERATOR_VERSION, generate_synthetic_brats

__all__ = ["SyntheticBratsSource"]


@register_dataset("synthetic-brats")
class SyntheticBratsSource(DatasetSource):
    """Synthetic gliomas on MNI152 anatomy: T1, T1-Ce, T2, FLAIR and CT, BraTS-2021 labels."""

    class Params(PluginParams):
        cases: int = Field(40, ge=2, le=5000, description="number of cases (patients)")
        slices: int = Field(16, ge=1, le=256, description="axial slices per case, spread over the tumour")
        size: int = Field(128, ge=32, le=512, description="in-plane size of each slice (pixels)")
        seed: int = Field(0, ge=0, description="seed of the generator")
        ct_contrast: bool = Field(
            False,
            description=(
                "contrast-enhanced CT: after iodinated contrast the enhancing rim rises by 30 HU, grey matter by 5, "
                "white matter and edema by 2, dura and vessels by up to 60 and 120, necrosis and CSF by 0 "
                "(x a per-case dose factor in [0.8, 1.2]; Kalvach & Jirout, Neuroradiology 1983; Smith et al., "
                "RadioGraphics 2007); off: unenhanced CT (rim 31 HU vs white matter 29 HU)"
            ),
        )

    def fingerprint(self) -> str:
        params = self.params.model_dump()
        if not params["ct_contrast"]:  # the unenhanced data set keeps the fingerprint it had before the option
            params.pop("ct_contrast")
        payload = {"name": self.name, "params": params, "generator": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def channels(self) -> tuple[str, ...]:
        return tuple(CHANNELS)

    def load(self) -> SliceSet:
        return cached_sliceset("datasets", f"synthetic-brats-{self.fingerprint()}", self._generate)

    def _generate(self) -> SliceSet:
        p = self.params
        ticks = self.context.track(range(p.cases), "generating synthetic-brats", total=p.cases)
        advance = lambda _case: next(ticks, None)  # noqa: E731 - drive the progress bar per case
        generated = generate_synthetic_brats(p.cases, p.slices, p.size, p.seed, progress=advance, ct_contrast=p.ct_contrast)
        for _ in ticks:  # finish the bar
            pass
        labels = to_common_labels(generated.labels, BRATS_2021_TO_COMMON, "synthetic-brats")
        # each case's slices are its own evenly spaced grid (slice k at index k), in subject mm
        geometry = SliceGeometry.concatenate([SliceGeometry.for_case(affine, range(p.slices)) for affine in generated.affines])
        return SliceSet.create(
            generated.images,
            labels,
            generated.case_ids,
            CHANNELS,
            meta={"source_labels": {common: source for source, common in BRATS_2021_TO_COMMON.items()}, "convention": "brats2021"},
            norm_masks=generated.brain,
            normalisation=ZSCORE,
            geometry=geometry,
        )
