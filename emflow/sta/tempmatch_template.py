"""The template of template matching: the user's map (or the SGD initial model) brought onto the
tomogram's grid with its contrast, hand and mask, and the Fourier weight of the search.

Conventions: arrays ``[z, y, x]``, centre voxel ``n // 2``; pixel sizes Å/px; the weight is on the
rfft grid ``(b, b, b//2+1)`` of :func:`emflow.sta.tempmatch.match_template`.

* Contrast: a template map is ``bright`` (protein positive: EMDB maps, emflow's SGD model, EMAN2
  particles) or ``dark``; the tomogram is ``dark`` (raw cryo-ET) or ``bright`` (inverted). The
  template is negated when the two differ, so protein correlates positively.
* Hand: ``mirror`` flips z about the centre voxel (``z → 2·(n//2) − z``), turning a map of one
  handedness into the other.
* Mask: a user mask multiplies the template (it rotates with it). The FLCF's local statistics
  (:func:`emflow.sta.tempmatch.match_template`) use a sphere, computed once per tile; with a user
  mask that sphere is the smallest one enclosing the mask (voxels > 0.5), unless
  ``tempmatch.mask_radius_a`` is set.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from emflow.filters import bandpass_profile
from emflow.resample import resample_map

__all__ = ["TemplateGrid", "mirror_z", "contrast_sign", "prepare_template", "mask_radius_px", "template_weight"]


def mirror_z(vol: np.ndarray) -> np.ndarray:
    """Flip the hand of a map: z mirrored about voxel ``n//2`` (which stays in place). float32."""
    vol = np.asarray(vol, np.float32)
    out = vol[::-1]
    if vol.shape[0] % 2 == 0:
        out = np.roll(out, 1, axis=0)
    return np.ascontiguousarray(out)


def contrast_sign(template_contrast: str, tomogram_contrast: str) -> float:
    """+1 when template and tomogram show protein with the same sign, −1 otherwise."""
    for name, value in (("template_contrast", template_contrast), ("tomogram_contrast", tomogram_contrast)):
        if value not in ("bright", "dark"):
            raise ValueError(f"tempmatch.{name} must be bright or dark, got {value!r}")
    return 1.0 if template_contrast == tomogram_contrast else -1.0


@dataclasses.dataclass
class TemplateGrid:
    """A template on the tomogram's grid: ``template`` (b, b, b) float32 with the tomogram's contrast,
    ``mask`` (b, b, b) in [0, 1] or None, box ``b`` and pixel size ``apix`` (Å/px)."""

    template: np.ndarray
    mask: np.ndarray | None
    box: int
    apix: float


def prepare_template(template: np.ndarray, apix_template: float, apix_tomo: float, *, box: int | None = None,
                     mask: np.ndarray | None = None, template_contrast: str = "bright",
                     tomogram_contrast: str = "dark", mirror: bool = False) -> TemplateGrid:
    """Resample a template (and its mask, same grid) to the tomogram's pixel size and box.

    Parameters
    ----------
    template : (nz, ny, nx) array
        Any box, centred on voxel ``n//2``.
    apix_template, apix_tomo : float
        Pixel sizes (Å/px) of the template map and of the (binned) tomogram.
    box : int, optional
        Even output box; default the even size nearest the template's largest extent in Å.
    mask : array like ``template``, optional
        The template's mask (1 inside); resampled the same way and clipped to [0, 1].
    template_contrast, tomogram_contrast : "bright" | "dark"
    mirror : bool
        Flip the hand (:func:`mirror_z`) before resampling.
    """
    vol = np.asarray(template, np.float32)
    if mask is not None and np.shape(mask) != vol.shape:
        raise ValueError(f"the template mask {np.shape(mask)} is not on the template's grid {vol.shape}")
    if box is None:
        box = max(8, 2 * int(round(max(vol.shape) * apix_template / apix_tomo / 2)))
    if mirror:
        vol = mirror_z(vol)
        mask = None if mask is None else mirror_z(mask)
    out = resample_map(vol, apix_template, apix_tomo, box) * contrast_sign(template_contrast, tomogram_contrast)
    m = None
    if mask is not None:
        m = np.clip(resample_map(np.asarray(mask, np.float32), apix_template, apix_tomo, box), 0.0, 1.0)
        out = out * m
    return TemplateGrid(out.astype(np.float32), m, int(box), float(apix_tomo))


def mask_radius_px(mask: np.ndarray) -> float:
    """Radius (px) of the smallest sphere about voxel ``b//2`` that encloses every voxel > 0.5,
    plus one voxel (the FLCF sphere's cosine edge starts there)."""
    idx = np.argwhere(np.asarray(mask) > 0.5)
    if idx.size == 0:
        raise ValueError("the template mask is empty at the tomogram's pixel size (no voxel > 0.5)")
    c = np.array(mask.shape) // 2
    return float(np.sqrt(((idx - c) ** 2).sum(axis=1)).max()) + 1.0


def template_weight(b: int, apix: float, tilts_deg: np.ndarray, slice_rots: np.ndarray, *, wedge: bool,
                    ctf_weighting: str, defocus_um, voltage_kv: float, cs_mm: float, ampcont: float,
                    dose_per_tilt_e_a2: float, lowpass_res_a: float | None, highpass_res_a: float | None):
    """Fourier weight of the rotated template (missing wedge × CTF × exposure × band-pass) and the
    band-pass of the tomogram (same edges).

    Parameters
    ----------
    b : int
        Template box (px); ``apix`` its pixel size (Å/px).
    tilts_deg : (k,) float
        Tilt angles; ``slice_rots`` (k, 3, 3) the rotation of each tilt's central slice
        (:func:`emflow.geometry.tilt_matrix`).
    ctf_weighting : "none" | "ctf" | "phase_flipped"
        With ``defocus_um`` (k,) µm per tilt.
    dose_per_tilt_e_a2 : float
        Exposure filter per tilt (dose-symmetric order); 0 = off.

    Returns
    -------
    weight : (b, b, b//2+1) float32
    tomo_filter : callable ``freq_cycles_per_px -> weight`` for :func:`match_template`'s ``filter_fn``.
    """
    from emflow.sta import tempmatch as tm

    exposure = tm.dose_symmetric_exposure(tilts_deg, dose_per_tilt_e_a2) if dose_per_tilt_e_a2 else None
    radial = tm.tilt_radial_weights(b, apix, len(tilts_deg), ctf_mode=ctf_weighting, defocus_um=defocus_um,
                                    voltage_kv=voltage_kv, cs_mm=cs_mm, ampcont=ampcont, exposure_e_a2=exposure)
    weight = tm.tilt_weight(b, slice_rots, radial) if wedge else np.ones((b, b, b // 2 + 1), np.float32)
    if ctf_weighting != "none" and not wedge:  # the tilt-averaged CTF, without the wedge
        shell = np.minimum(np.rint(tm.radial_frequency((b,) * 3) * b).astype(int), radial.shape[1] - 1)
        weight *= radial.mean(axis=0)[shell]
    edge = 2.0 / b
    band = bandpass_profile(tm.radial_frequency((b,) * 3), apix, lowpass_res_a, highpass_res_a, "cosine", edge)

    def tomo_filter(freq):
        """Band-pass of the tomogram (same edges as the template's)."""
        return bandpass_profile(freq, apix, lowpass_res_a, highpass_res_a, "cosine", edge)

    return (weight * band).astype(np.float32), tomo_filter
