"""Synthetic multi-contrast glioma MRI/CT slices built on real anatomy.

The anatomy is the MNI ICBM 2009 symmetric template (Fonov et al., NeuroImage 2011)
as shipped inside nilearn's wheel: its 1 mm grey-matter and white-matter probability
maps and brain mask. Every case is the template under a random smooth deformation
(small affine composed with a smooth elastic field) plus a synthetic glioma
(necrotic core, enhancing rim, white-matter-preferring edema). Five co-registered
contrasts (T1, T1-Ce, T2, FLAIR, CT) are rendered from partial-volume tissue
fractions with per-contrast tissue intensities, a smooth bias field, tissue texture
and Rician (MRI) or Gaussian (CT) noise, then z-scored per case and channel over
brain voxels, BraTS style.

This module is a pure generator: no registry, cache or CLI (the harness wraps it).

Geometry of the output:
    * The deformation is evaluated only on the output grid points (``size x size``
      in-plane, ``slices`` axial positions) and the 1 mm templates are sampled there
      with :func:`scipy.ndimage.map_coordinates` (order 1); the full volume is never
      warped.
    * In-plane the grid covers a 220 mm square axial field of view centred on the
      head; rows run anterior -> posterior, columns patient right -> left
      (radiological display).
    * The ``slices`` axial positions are evenly spaced and cover the tumour's
      z-extent plus a random margin, so that about 70-90 % of the slices show
      tumour; one slice always passes through the largest enhancing cross-section.
    * Coordinates are subject mm (the MNI template's RAS+ space before each case's
      deformation): :func:`grid_affine` maps voxel ``(row, column, slice)`` of a case's
      stacked slices to them (:attr:`SyntheticBrats.affines`; pixel ``220 / size`` mm,
      slice spacing that of the case's positions; orientation codes P, L, S).

Labels follow the BraTS <= 2021 convention: 0 background, 1 necrotic core,
2 edema, 4 enhancing tumour.

CT is unenhanced by default: the enhancing rim (31 HU) barely differs from white matter
(29 HU), so nothing in it tells where the rim enhances on T1-Ce. With ``ct_contrast`` it
is a contrast-enhanced CT after a standard dose of iodinated contrast, each tissue rising
by :data:`CT_ENHANCEMENT_HU` times a per-case factor in [0.8, 1.2] (dose, timing and
cardiac output differ between patients):

    * enhancing tumour +30 HU, the middle of the 20-40 HU commonly reported for
      enhancing high-grade gliomas at standard iodine doses (a round value, not one
      study's measurement);
    * grey matter +5 HU, white matter and edema +2 HU: behind the blood-brain barrier
      normal parenchyma rises only by its blood volume, grey matter (about twice the
      blood volume of white matter) by about 3 HU more than white matter: the grey-white
      difference grew from 4.6 to 7.8 HU after contrast in Kalvach & Jirout,
      "Pre- and postcontrast CT density of normal brain tissue", Neuroradiology 25(1),
      29-32, 1983;
    * necrosis, CSF and bone 0 HU (no perfusion; iodine does not reach them);
    * structures without a blood-brain barrier enhance strongly (Smith, Smirniotopoulos
      et al., "Patterns of contrast enhancement in the brain and meninges",
      RadioGraphics 27(2), 525-551, 2007): the dura along the brain surface by up to
      +60 HU and the curvilinear vessels (the same ones T1-Ce shows) by up to +120 HU
      (blood of about 40 HU reaching about 160 HU in the venous phase); marrow and
      scalp, vascular soft tissue, by +10 HU. The anatomy has no choroid plexus.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

__all__ = [
    "CHANNELS", "CT_ENHANCEMENT_HU", "GENERATOR_VERSION", "SyntheticBrats", "generate_synthetic_brats", "grid_affine", "grid_axes",
]

CHANNELS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair", "ct")
"""Channel order of :attr:`SyntheticBrats.images`."""

GENERATOR_VERSION: str = "1"
"""Bump whenever the generated output changes; part of the data set fingerprint."""

# --------------------------------------------------------------------------- geometry
_FOV_MM = 220.0
#: Subject-space head centre (MNI mm); the affine part of the deformation pivots here.
_CENTRE_MM = np.array([0.0, -17.0, 5.0])
#: Fixed box (MNI mm) holding the knots of every smooth random field, so that the
#: random draws of a case never depend on ``size`` or ``slices``.
_BOX_LO = np.array([-125.0, -150.0, -100.0])
_BOX_HI = np.array([125.0, 115.0, 125.0])

# --------------------------------------------------------------------------- tissues
_TISSUES = ("csf", "gm", "wm", "nec", "et", "ed", "bone", "marrow", "scalp", "air")
#: Typical relative intensity of each tissue (columns as ``_TISSUES``) per channel.
#: MRI values are arbitrary units (~1 = brightest tissue); CT is in Hounsfield units.
_TISSUE_VALUES = np.array(
    [
        # csf   gm    wm    nec   et    ed    bone  marrow scalp  air
        [0.30, 0.58, 0.82, 0.22, 0.55, 0.45, 0.08, 0.70, 0.95, 0.0],  # t1
        [0.30, 0.58, 0.82, 0.15, 1.30, 0.47, 0.08, 0.75, 0.95, 0.0],  # t1ce
        [1.00, 0.62, 0.48, 0.95, 0.68, 0.86, 0.05, 0.45, 0.70, 0.0],  # t2
        [0.12, 0.62, 0.48, 0.55, 0.80, 0.95, 0.05, 0.50, 0.75, 0.0],  # flair
        [5.0, 38.0, 29.0, 18.0, 31.0, 22.0, 1200.0, 450.0, -40.0, -1000.0],  # ct (HU)
    ],
    dtype=np.float32,
)
_MRI = slice(0, 4)
_CT = 4
_T1CE = 1

#: Rise of each tissue (Hounsfield units) on contrast-enhanced CT, ``ct_contrast``
#: (columns as ``_TISSUES``; see the module docstring for the values and references).
CT_ENHANCEMENT_HU: dict[str, float] = {
    "csf": 0.0, "gm": 5.0, "wm": 2.0, "nec": 0.0, "et": 30.0, "ed": 2.0,
    "bone": 0.0, "marrow": 10.0, "scalp": 10.0, "air": 0.0,
}
#: Peak rise (HU) of the dura and of the vessels on contrast-enhanced CT.
_CT_DURA_HU = 60.0
_CT_VESSEL_HU = 120.0
#: Range of the per-case factor on every rise (dose, timing, cardiac output).
_CT_DOSE_FACTOR = (0.8, 1.2)


@dataclass(frozen=True)
class SyntheticBrats:
    """A generated data set: axial slices of ``cases`` cases, ``slices`` each.

    Slices of one case are contiguous and ordered inferior -> superior.

    Attributes:
        images: float32 ``[cases*slices, 5, size, size]``, channel order
            :data:`CHANNELS`; z-scored per case and channel over the case's brain
            voxels, exactly 0 outside the head (air).
        labels: uint8 ``[cases*slices, size, size]``; 0 background, 1 necrotic core,
            2 edema, 4 enhancing tumour (BraTS <= 2021).
        case_ids: str ``[cases*slices]``, e.g. ``"synth-000"`` for every slice of case 0.
        brain: bool ``[cases*slices, size, size]``; the deformed brain mask (> 0.5).
        white_matter: bool ``[cases*slices, size, size]``; voxels at least half normal
            white matter (outside the tumour), for checks of tissue contrast.
        scale: float32 ``[cases, 5, 2]``; per case and channel the mean and standard
            deviation the z-score removed: ``image * std + mean`` is the rendered
            intensity (Hounsfield units on the ct channel).
        slice_z: float64 ``[cases, slices]``; each slice's axial position (subject mm).
        affines: float64 ``[cases, 4, 4]``; per case, voxel ``(row, column, k)`` of its
            stacked slices (slice ``k``) -> subject mm (:func:`grid_affine`).
    """

    images: np.ndarray
    labels: np.ndarray
    case_ids: np.ndarray
    brain: np.ndarray
    white_matter: np.ndarray
    scale: np.ndarray
    slice_z: np.ndarray | None = None
    affines: np.ndarray | None = None


def grid_axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Subject mm of the in-plane grid: ``x`` of each column (patient right -> left) and
    ``y`` of each row (anterior -> posterior), pixel centres of the 220 mm field of view."""
    px = _FOV_MM / size
    offs = (np.arange(size) + 0.5) * px - _FOV_MM / 2
    return _CENTRE_MM[0] - offs, _CENTRE_MM[1] - offs


def grid_affine(size: int, z: np.ndarray) -> np.ndarray:
    """NIfTI affine of one case's stacked slices.

    Args:
        size: in-plane grid size.
        z: the case's axial slice positions (subject mm, evenly spaced, ascending).

    Returns:
        float64 ``[4, 4]``: voxel ``(row, column, k)`` -> subject mm ``(x, y, z)`` (RAS+);
        with one slice the slice spacing is taken equal to the pixel size.
    """
    xs, ys = grid_axes(size)
    px = _FOV_MM / size
    z = np.asarray(z, dtype=np.float64)
    dz = float(z[1] - z[0]) if len(z) > 1 else px
    affine = np.zeros((4, 4))
    affine[0, 1] = -px  # columns run towards patient left: x falls
    affine[1, 0] = -px  # rows run towards posterior: y falls
    affine[2, 2] = dz
    affine[:3, 3] = (xs[0], ys[0], z[0])
    affine[3, 3] = 1.0
    return affine


# =========================================================================== templates
@dataclass(frozen=True)
class _Templates:
    gm: np.ndarray  # float32 [197, 233, 189], 1 mm, GM probability
    wm: np.ndarray  # float32 [197, 233, 189], 1 mm, WM probability
    mask: np.ndarray  # float32 [197, 233, 189], 1 mm, brain mask {0, 1}
    sdist: np.ndarray  # float32 [99, 117, 95], 2 mm, signed distance to brain (mm, + outside)
    origin: np.ndarray  # float64 [3], MNI mm of voxel (0, 0, 0)
    cand_xyz: np.ndarray  # float64 [K, 3], MNI mm of deep-white-matter tumour centres
    cand_depth: np.ndarray  # float64 [K], their distance to the brain surface (mm)


def _load_templates() -> _Templates:
    """Load the 1 mm MNI ICBM 2009 templates from nilearn and derive helper maps."""
    from nilearn import datasets  # local import: nilearn is slow to import

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    affine = np.asarray(mask_img.affine, dtype=np.float64)
    if not np.allclose(np.diag(affine)[:3], 1.0) or not np.allclose(affine[:3, :3], np.eye(3)):
        raise RuntimeError(f"unexpected MNI template affine:\n{affine}")
    mask = mask_img.get_fdata(dtype=np.float32)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    origin = affine[:3, 3].copy()

    # Signed distance to the brain surface on a 2 mm grid (cheap, smooth enough for
    # the CSF / skull / scalp shells once linearly interpolated).
    m2 = mask[::2, ::2, ::2] > 0.5
    d_out = ndimage.distance_transform_edt(~m2)
    d_in = ndimage.distance_transform_edt(m2)
    sdist = (2.0 * (d_out - d_in)).astype(np.float32)

    # Candidate tumour centres: deep hemispheric white matter of the cerebrum.
    wm2 = wm[::2, ::2, ::2]
    idx = np.argwhere(wm2 > 0.85)
    xyz = origin + 2.0 * idx
    keep = (np.abs(xyz[:, 0]) >= 14.0) & (xyz[:, 2] >= -15.0) & (xyz[:, 2] <= 55.0)
    keep &= (xyz[:, 1] >= -85.0) & (xyz[:, 1] <= 50.0)
    idx, xyz = idx[keep], xyz[keep]
    depth = 2.0 * d_in[idx[:, 0], idx[:, 1], idx[:, 2]]
    return _Templates(gm, wm, mask, sdist, origin, xyz, depth)


# ====================================================================== random fields
def _rbf_basis(coords: np.ndarray, spacing: float, axis: int) -> np.ndarray:
    """Gaussian RBF basis ``[len(coords), n_knots]`` with unit-norm rows.

    Knots are fixed (spaced ``spacing`` mm over the fixed box on ``axis``), so a
    field's coefficients never depend on where it is evaluated; unit-norm rows make
    a field with i.i.d. N(0, 1) coefficients have unit variance at every point.
    """
    knots = np.arange(_BOX_LO[axis], _BOX_HI[axis] + spacing, spacing)
    d = (np.asarray(coords, dtype=np.float64)[:, None] - knots[None, :]) / spacing
    b = np.exp(-d * d)
    b /= np.sqrt((b * b).sum(axis=1, keepdims=True)) + 1e-12
    return b.astype(np.float32)


def _trim(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop knots whose weight is negligible (< 1e-4) at every evaluated coordinate."""
    used = np.flatnonzero(basis.max(axis=0) > 1e-4)
    return basis[:, used], used


def _n_knots(spacing: float) -> tuple[int, int, int]:
    return tuple(len(np.arange(_BOX_LO[a], _BOX_HI[a] + spacing, spacing)) for a in range(3))  # type: ignore[return-value]


class _SmoothFields:
    """``n`` smooth unit-variance random fields sharing one knot spacing (mm)."""

    def __init__(self, rng: np.random.Generator, n: int, spacing: float) -> None:
        self.spacing = spacing
        self.coef = rng.standard_normal((n, *_n_knots(spacing)), dtype=np.float32)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Evaluate on the tensor grid of 1-D mm coordinates: ``[n, len(z), len(y), len(x)]``."""
        bx, kx = _trim(_rbf_basis(x, self.spacing, 0))
        by, ky = _trim(_rbf_basis(y, self.spacing, 1))
        bz, kz = _trim(_rbf_basis(z, self.spacing, 2))
        out = []
        for c in self.coef[:, kx][:, :, ky][:, :, :, kz]:  # c: [kx, ky, kz] (used knots)
            t = np.tensordot(c, bz, axes=([2], [1]))  # [kx, ky, nz]
            t = np.tensordot(t, by, axes=([1], [1]))  # [kx, nz, ny]
            t = np.tensordot(t, bx, axes=([0], [1]))  # [nz, ny, nx]
            out.append(t)
        return np.stack(out)


def _rotation(rng: np.random.Generator, max_deg: np.ndarray) -> np.ndarray:
    """Rotation matrix from three Euler angles drawn uniformly in ``±max_deg``."""
    a, b, c = np.deg2rad(rng.uniform(-1.0, 1.0, 3) * max_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


# ========================================================================= one case
@dataclass(frozen=True)
class _Deformation:
    """Subject mm -> template mm: ``C + M (p - C) + t + D(p)``."""

    matrix: np.ndarray  # [3, 3]
    shift: np.ndarray  # [3]
    elastic: _SmoothFields  # 3 fields (x, y, z displacement, unit variance)
    amplitude: float  # mm

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Template mm of the tensor grid ``(x, y, z)``: ``[3, len(z), len(y), len(x)]``."""
        disp = self.elastic(x, y, z) * np.float32(self.amplitude)
        px = (np.asarray(x) - _CENTRE_MM[0]).astype(np.float32)[None, None, :]
        py = (np.asarray(y) - _CENTRE_MM[1]).astype(np.float32)[None, :, None]
        pz = (np.asarray(z) - _CENTRE_MM[2]).astype(np.float32)[:, None, None]
        m = self.matrix.astype(np.float32)
        for i in range(3):
            disp[i] += m[i, 0] * px + m[i, 1] * py + m[i, 2] * pz
            disp[i] += np.float32(_CENTRE_MM[i] + self.shift[i])
        return disp

    def approx_inverse(self, p: np.ndarray) -> np.ndarray:
        """Subject mm of template point ``p`` ignoring the (few mm) elastic part."""
        return _CENTRE_MM + np.linalg.solve(self.matrix, p - _CENTRE_MM - self.shift)


@dataclass(frozen=True)
class _Tumour:
    centre: np.ndarray  # [3] template mm
    axes_rot: np.ndarray  # [3, 3] maps (p - centre) to ellipsoid frame scaled by 1 / axes
    radius: float  # whole-tumour radius (mm) at white-matter probability 1
    f_tc: float  # tumour-core radius / radius
    f_nec: float  # necrosis radius / radius (< 0 -> no necrosis)
    core_noise: tuple[np.ndarray, np.ndarray, np.ndarray]  # amplitudes, wave vectors, phases
    edema_noise: tuple[np.ndarray, np.ndarray, np.ndarray]

    def soft(self, pts: np.ndarray, wm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Soft region fractions at template points.

        Args:
            pts: float32 ``[3, ...]`` template mm.
            wm: float32 ``[...]`` white-matter probability at those points.

        Returns:
            ``(s_nec, s_tc, s_ed)`` float32 ``[...]``, nested (``s_nec <= s_tc <= s_ed``):
            soft indicators of necrosis, tumour core and whole tumour (>= 0.5 inside).
        """
        shape = pts.shape[1:]
        q = pts.reshape(3, -1) - self.centre.astype(np.float32)[:, None]
        u = self.axes_rot.astype(np.float32) @ q  # ellipsoid frame, ~1 at the WT border
        rho = np.sqrt((u * u).sum(0))
        s_nec = np.zeros(rho.shape, np.float32)
        s_tc = np.zeros(rho.shape, np.float32)
        s_ed = np.zeros(rho.shape, np.float32)
        near = np.flatnonzero(rho < 1.6)  # beyond this no threshold can be reached
        if near.size:
            un, rn = u[:, near], rho[near]
            width = np.float32(0.7 / self.radius)  # ~0.7 mm soft edge

            def irregular(noise: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
                amp, waves, phase = noise
                n = np.cos(waves.astype(np.float32) @ un + phase.astype(np.float32)[:, None])
                return rn * (1.0 + amp.astype(np.float32) @ n)

            def ramp(v: np.ndarray) -> np.ndarray:
                return np.clip(v / width + 0.5, 0.0, 1.0)

            rc = irregular(self.core_noise)
            tc = ramp(self.f_tc - rc)
            nec = ramp(self.f_nec - rc) if self.f_nec > 0 else np.zeros_like(tc)
            f_ed = self.f_tc + (1.0 - self.f_tc) * (0.55 + 0.6 * wm.reshape(-1)[near])
            ed = np.maximum(ramp(f_ed - irregular(self.edema_noise)), tc)
            s_nec[near], s_tc[near], s_ed[near] = nec, tc, ed
        return s_nec.reshape(shape), s_tc.reshape(shape), s_ed.reshape(shape)


def _irregularity(rng: np.random.Generator, n: int, amp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random sum-of-cosines radius modulation with ``sum |a_k| == amp``."""
    a = rng.uniform(0.3, 1.0, n)
    a *= amp / a.sum()
    dirs = rng.standard_normal((n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = dirs * rng.uniform(1.5, 4.0, (n, 1))
    phase = rng.uniform(0.0, 2 * np.pi, n)
    return a, waves, phase


def _draw_tumour(rng: np.random.Generator, tpl: _Templates) -> _Tumour:
    radius = float(rng.uniform(12.0, 28.0))
    f_tc = float(rng.uniform(0.35, min(0.6, 1.0 - 6.0 / radius)))
    rim = float(rng.uniform(2.5, 5.0))
    necrotic = rng.random() < 0.85
    r_tc = f_tc * radius
    f_nec = (f_tc - rim / radius) if (necrotic and r_tc - rim >= 3.5) else -1.0
    elong = np.exp(rng.uniform(-0.18, 0.18, 3))
    elong /= np.exp(np.log(elong).mean())
    rot = _rotation(rng, np.array([180.0, 180.0, 180.0]))
    axes_rot = np.diag(1.0 / (radius * elong)) @ rot.T
    core_noise = _irregularity(rng, 6, 0.15)
    edema_noise = _irregularity(rng, 8, 0.25)
    # Centre in deep hemispheric white matter, deep enough for the whole core.
    need = r_tc * elong.max() / 0.85 + 3.0
    ok = np.flatnonzero(tpl.cand_depth >= need)
    if ok.size == 0:
        ok = np.argsort(tpl.cand_depth)[-20:]
    centre = tpl.cand_xyz[ok[rng.integers(ok.size)]] + rng.uniform(-1.0, 1.0, 3)
    return _Tumour(centre, axes_rot, radius, f_tc, f_nec, core_noise, edema_noise)


def _sample(
    vol: np.ndarray, pts: np.ndarray, origin: np.ndarray, step: float, mode: str, where: np.ndarray | None = None
) -> np.ndarray:
    """Linear interpolation of ``vol`` (voxel ``step`` mm) at template mm ``pts [3, ...]``.

    With a boolean ``where`` (shape ``pts.shape[1:]``) only those points are sampled
    and the others are 0.
    """
    coords = (pts.reshape(3, -1) - origin.astype(np.float32)[:, None]) / np.float32(step)
    if where is None:
        out = ndimage.map_coordinates(vol, coords, order=1, mode=mode, cval=0.0, prefilter=False)
        return out.reshape(pts.shape[1:]).astype(np.float32, copy=False)
    sel = np.flatnonzero(where)
    out = np.zeros(coords.shape[1], np.float32)
    out[sel] = ndimage.map_coordinates(vol, coords[:, sel], order=1, mode=mode, cval=0.0, prefilter=False)
    return out.reshape(pts.shape[1:])


def _labels(m: np.ndarray, s_nec: np.ndarray, s_tc: np.ndarray, s_ed: np.ndarray) -> np.ndarray:
    lab = np.zeros(m.shape, np.uint8)
    inside = m > 0.5
    lab[inside & (s_ed >= 0.5)] = 2
    lab[inside & (s_tc >= 0.5)] = 4
    lab[inside & (s_nec >= 0.5)] = 1
    return lab


def _slice_positions(
    rng: np.random.Generator, deform: _Deformation, tumour: _Tumour, tpl: _Templates, slices: int
) -> np.ndarray:
    """Axial positions (subject mm, ascending) covering the tumour plus a margin.

    A cheap pre-pass renders the labels on a 3 mm x 3 mm x 1.5 mm box around the tumour
    to find its true (deformed) z-extent and the z of the largest enhancing section.
    """
    fraction = rng.uniform(0.72, 0.88)  # target share of slices showing tumour
    c = deform.approx_inverse(tumour.centre)
    reach = tumour.radius * 1.25 * 1.15 / 0.75 + 8.0
    xs = np.arange(c[0] - reach, c[0] + reach, 3.0)
    ys = np.arange(c[1] - reach, c[1] + reach, 3.0)
    zs = np.arange(c[2] - reach, c[2] + reach, 1.5)
    pts = deform(xs, ys, zs)
    m = _sample(tpl.mask, pts, tpl.origin, 1.0, "constant")
    wm = _sample(tpl.wm, pts, tpl.origin, 1.0, "constant")
    lab = _labels(m, *tumour.soft(pts, wm))
    wt_z = zs[(lab > 0).any(axis=(1, 2))]
    et_area = (lab == 4).sum(axis=(1, 2))
    z_et = zs[int(np.argmax(et_area))] if et_area.max() > 0 else c[2]
    if wt_z.size == 0:  # cannot happen with the centre in deep white matter
        wt_z = np.array([c[2] - 5.0, c[2] + 5.0])
    if slices == 1:
        return np.array([z_et])
    lo, hi = wt_z.min() - 0.75, wt_z.max() + 0.75
    dz = (hi - lo) / (fraction * slices)
    start = 0.5 * (lo + hi) - 0.5 * (slices - 1) * dz
    k = np.clip(np.round((z_et - start) / dz), 0, slices - 1)
    start += z_et - (start + k * dz)  # one slice through the largest ET section
    return start + dz * np.arange(slices)


def _draw_anatomy(rng: np.random.Generator, tpl: _Templates) -> tuple[_Deformation, _Tumour]:
    """A case's first draws: its deformation (subject mm -> template mm) and its tumour."""
    scale = np.exp(rng.uniform(-0.05, 0.05) + rng.uniform(-0.02, 0.02, 3))
    matrix = _rotation(rng, np.array([4.0, 3.0, 4.0])) @ np.diag(1.0 / scale)
    deform = _Deformation(matrix, rng.uniform(-4.0, 4.0, 3), _SmoothFields(rng, 3, 32.0), float(rng.uniform(1.5, 3.5)))
    return deform, _draw_tumour(rng, tpl)


def _generate_case(rng: np.random.Generator, tpl: _Templates, slices: int, size: int, ct_contrast: bool = False):
    """Render one case.

    Returns:
        ``(images [S,5,H,W], labels [S,H,W], brain [S,H,W], white_matter [S,H,W],
        scale [5, 2], slice positions z [S] in subject mm)``; with ``ct_contrast`` the random draws before the contrast are
        those of the unenhanced case, so the two differ only by the enhancement.
    """
    # ---- random draws that do not depend on size/slices (fixed order) ----
    deform, tumour = _draw_anatomy(rng, tpl)
    t_csf = rng.uniform(1.0, 2.5)
    t_skull = t_csf + rng.uniform(4.0, 7.0)
    t_head = t_skull + rng.uniform(3.0, 5.0)
    values = _TISSUE_VALUES.copy()
    values[_MRI, :-1] *= np.clip(1.0 + 0.04 * rng.standard_normal((4, 9)), 0.92, 1.08).astype(np.float32)
    values[_CT, :6] += (1.5 * rng.standard_normal(6)).astype(np.float32)
    bias = _SmoothFields(rng, 4, 70.0)
    bias_amp = rng.uniform(0.06, 0.16, 4).astype(np.float32)
    texture = _SmoothFields(rng, 1, 5.0)
    vessels = _SmoothFields(rng, 2, 28.0)
    noise_mri = rng.uniform(0.012, 0.03)
    noise_ct = rng.uniform(3.0, 6.0)
    z = _slice_positions(rng, deform, tumour, tpl, slices)

    # ---- output grid: rows anterior->posterior, columns patient right->left ----
    xs, ys = grid_axes(size)
    pts = deform(xs, ys, z)  # [3, S, H, W] template mm
    sd = _sample(tpl.sdist, pts, tpl.origin, 2.0, "nearest")
    near_brain = sd < 4.0  # the brain mask / GM / WM are 0 beyond (2 mm sdist grid)
    m = _sample(tpl.mask, pts, tpl.origin, 1.0, "constant", near_brain)
    gm = _sample(tpl.gm, pts, tpl.origin, 1.0, "constant", near_brain)
    wm = _sample(tpl.wm, pts, tpl.origin, 1.0, "constant", near_brain)
    s_nec, s_tc, s_ed = tumour.soft(pts, wm)
    labels = _labels(m, s_nec, s_tc, s_ed)
    brain = m > 0.5

    # ---- partial-volume tissue fractions (sum to 1 everywhere) ----
    gw = gm + wm
    over = np.maximum(gw / np.maximum(m, 1e-6), 1.0)  # keep gm + wm <= m
    gm, wm = gm * m / over, wm * m / over
    csf_in = np.maximum(m - gm - wm, 0.0)
    normal = 1.0 - s_ed
    out = 1.0 - m

    def inside(t: float) -> np.ndarray:  # soft indicator of sd < t (1 mm ramp)
        return np.clip(t - sd + 0.5, 0.0, 1.0)

    in_csf, in_skull, in_head = inside(t_csf), inside(t_skull), inside(t_head)
    skull = (in_skull - in_csf) * out
    diploe = np.exp(-(((sd - 0.5 * (t_csf + t_skull)) / (0.22 * (t_skull - t_csf))) ** 2)).astype(np.float32)
    frac = np.stack(
        [
            csf_in * normal + in_csf * out,  # csf
            gm * normal,
            wm * normal,
            s_nec * m,
            (s_tc - s_nec) * m,
            (s_ed - s_tc) * m,
            skull * (1.0 - diploe),  # cortical bone
            skull * diploe,  # marrow
            (in_head - in_skull) * out,  # scalp / fat
            (1.0 - in_head) * out,  # air
        ]
    )
    n_vox = frac[0].size
    img = (values @ frac.reshape(len(_TISSUES), n_vox)).reshape(5, *m.shape)

    # ---- T1-Ce: dura along the brain surface and a few curvilinear vessels ----
    dura = np.exp(-(((sd - t_csf) / 0.9) ** 2)) * out
    f1, f2 = vessels(xs, ys, z)
    vessel = np.exp(-(f1 * f1 + f2 * f2) / (2 * 0.1**2)) * (frac[0] + 0.3 * gm * normal)
    img[_T1CE] += (0.45 * dura + 0.8 * vessel).astype(np.float32)

    # ---- texture, bias, noise ----
    tex = texture(xs, ys, z)[0]
    lesion = frac[3] + frac[4] + frac[5]
    img[_MRI] *= 1.0 + (0.03 + 0.07 * lesion) * tex
    img[_MRI] *= np.exp(bias_amp[:, None, None, None] * bias(xs, ys, z))
    img[_CT] += (1.5 + 4.0 * lesion) * tex
    shape = (4, *m.shape)
    re = img[_MRI] + np.float32(noise_mri) * rng.standard_normal(shape, dtype=np.float32)
    im = np.float32(noise_mri) * rng.standard_normal(shape, dtype=np.float32)
    img[_MRI] = np.sqrt(re * re + im * im)  # Rician magnitude
    img[_CT] += np.float32(noise_ct) * rng.standard_normal(m.shape, dtype=np.float32)

    # ---- contrast-enhanced CT: drawn last, so every other draw stays that of plain CT ----
    if ct_contrast:
        dose = np.float32(rng.uniform(*_CT_DOSE_FACTOR))
        rise = np.array([CT_ENHANCEMENT_HU[t] for t in _TISSUES], dtype=np.float32)
        enhancement = (rise @ frac.reshape(len(_TISSUES), n_vox)).reshape(m.shape)
        enhancement += (_CT_DURA_HU * dura + _CT_VESSEL_HU * vessel).astype(np.float32)
        img[_CT] += dose * enhancement

    # ---- z-score per channel over brain voxels; air -> 0 ----
    head = in_head * out + m > 0.5
    scale = np.empty((5, 2), np.float32)
    for c in range(5):
        v = img[c][brain]
        scale[c] = v.mean(), max(float(v.std()), 1e-6)
        img[c] = (img[c] - v.mean()) / max(float(v.std()), 1e-6)
        img[c][~head] = 0.0
    white_matter = frac[2] >= 0.5
    return img.transpose(1, 0, 2, 3), labels, brain, white_matter, scale, z


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread: its matrices here are small, and threading them
    roughly doubles the run time on a busy 2-core machine (threadpoolctl ships with
    scikit-learn; without it this is a no-op)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# ============================================================================ public
def generate_synthetic_brats(
    cases: int,
    slices: int,
    size: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
    ct_contrast: bool = False,
) -> SyntheticBrats:
    """Generate a synthetic BraTS-like glioma data set on MNI ICBM 2009 anatomy.

    Case ``i`` is drawn from ``np.random.default_rng([seed, i])``, so it is
    deterministic and does not depend on ``cases``.

    Args:
        cases: Number of cases (>= 1).
        slices: Axial slices per case (>= 1), evenly spaced over the tumour's
            z-extent plus a margin (about 70-90 % of them show tumour).
        size: In-plane grid size (>= 8); the 220 mm field of view is resampled to
            ``size x size``.
        seed: Data set seed.
        progress: Called after each case with the number of finished cases
            (1 ... ``cases``), e.g. to advance a progress bar.
        ct_contrast: Render contrast-enhanced CT (see the module docstring); every
            other channel, and the labels, are those of the unenhanced data set.
            Defaults to False.

    Returns:
        :class:`SyntheticBrats` with ``cases*slices`` slices: images float32
        ``[N, 5, size, size]`` (channels :data:`CHANNELS`), labels uint8
        ``[N, size, size]``, case_ids str ``[N]``, brain and white_matter bool
        ``[N, size, size]``, scale float32 ``[cases, 5, 2]``, slice_z float64
        ``[cases, slices]`` and affines float64 ``[cases, 4, 4]``.
    """
    if cases < 1 or slices < 1 or size < 8:
        raise ValueError(f"need cases >= 1, slices >= 1, size >= 8; got {cases}, {slices}, {size}")
    tpl = _load_templates()
    n = cases * slices
    images = np.empty((n, len(CHANNELS), size, size), np.float32)
    labels = np.empty((n, size, size), np.uint8)
    brain = np.empty((n, size, size), bool)
    white_matter = np.empty((n, size, size), bool)
    scale = np.empty((cases, len(CHANNELS), 2), np.float32)
    slice_z = np.empty((cases, slices), np.float64)
    with _single_threaded_blas():
        for i in range(cases):
            rng = np.random.default_rng([seed, i])
            sl = slice(i * slices, (i + 1) * slices)
            images[sl], labels[sl], brain[sl], white_matter[sl], scale[i], slice_z[i] = _generate_case(
                rng, tpl, slices, size, ct_contrast
            )
            if progress is not None:
                progress(i + 1)
    case_ids = np.repeat(np.array([f"synth-{i:03d}" for i in range(cases)]), slices)
    return SyntheticBrats(
        images=images, labels=labels, case_ids=case_ids, brain=brain, white_matter=white_matter, scale=scale,
        slice_z=slice_z, affines=np.stack([grid_affine(size, z) for z in slice_z]),
    )
