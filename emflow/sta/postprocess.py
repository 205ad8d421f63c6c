"""e2refine_postprocess for the subtilt refinement loop (spec §3.6 resolution schedule, §3.10).

:func:`postprocess_halves` takes the raw even/odd maps of one iteration and returns the odd map
aligned to the even one (with hand check), the unmasked / masked / tight FSCs, the masks, the
FSC-weighted (Wiener), masked and symmetrised maps, and the 0.143 resolution.
:func:`next_resolution` is the loop's resolution schedule (first FSC < 0.2 crossing).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.optimize

from emflow import filters, fourier, masks
from emflow.fsc import FSCCurve, fsc, resolution
from emflow.geometry import get_symmetry, mean_rotation, rotvec_to_matrix
from emflow.rotate import rotate_volume

__all__ = ["PostprocessResult", "align_odd_to_even", "postprocess_halves", "next_resolution",
           "evaluate_alignment", "truth_in_map_frame"]


def _ccc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / d if d > 0 else 0.0


def _ccf_shift(ref: np.ndarray, mov: np.ndarray, maxshift: float) -> np.ndarray:
    """Integer 3D shift (x, y, z) that moves ``mov`` onto ``ref`` (CCF peak within ``maxshift``)."""
    n = ref.shape[0]
    c = fourier.ift(fourier.ft(ref) * np.conj(fourier.ft(mov)), ref.shape)
    k = np.arange(n) - n // 2
    r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    c = np.where(r2 <= maxshift ** 2, c, -np.inf)
    z, y, x = np.unravel_index(int(np.argmax(c)), c.shape)
    return np.array([x - n // 2, y - n // 2, z - n // 2], dtype=np.float64)


def _local_align(ref: np.ndarray, mov: np.ndarray, mode: str, maxshift: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Rotation R, shift t maximising CCC(ref, mov transformed by (R, t)); mode "c1" (6 dof) or "z"."""
    t0 = _ccf_shift(ref, mov, maxshift)

    def unpack(x):
        if mode == "z":
            return rotvec_to_matrix([0.0, 0.0, x[0]]), t0 * np.array([0, 0, 1.0]) + np.array([0, 0, x[1]])
        return rotvec_to_matrix(x[3:]), t0 + x[:3]

    def cost(x):
        R, t = unpack(x)
        return -_ccc(ref, rotate_volume(mov, R, t))

    if mode == "z":
        # n-fold: coarse scan of the z rotation first, the local optimiser cannot cross lobes
        angles = np.arange(-180.0, 180.0, 5.0)
        best = min(angles, key=lambda a: cost(np.array([a, t0[2]]) * np.array([1, 0])))
        x0, simplex = np.array([best, 0.0]), np.array([[best, 0.0], [best + 3, 0], [best, 1.0]])
    else:
        x0 = np.zeros(6)
        simplex = np.vstack([np.zeros(6), np.diag([1.0, 1.0, 1.0, 3.0, 3.0, 3.0])])
    res = scipy.optimize.minimize(cost, x0, method="Nelder-Mead",
                                  options={"initial_simplex": simplex, "maxiter": 300, "xatol": 0.02, "fatol": 1e-6})
    R, t = unpack(res.x)
    return R, t, -float(res.fun)


def align_odd_to_even(even: np.ndarray, odd: np.ndarray, apix: float, restarget: float, sym: str = "c1"):
    """Align the odd map to the even map with a hand check (spec §3.10 step 1).

    Both are Gaussian low-passed at ``max(10, restarget)/1.15`` Å for the search. c1: local 3D
    alignment; cN (N>1): z rotation and z shift; other groups: none. The z-flipped odd map is
    aligned too and used when it correlates better.

    Returns
    -------
    odd_aligned : float32 (n, n, n); info : dict (``flipped``, ``ccc``, ``rotation``, ``shift``)
    """
    s = get_symmetry(sym)
    name = sym.lower()
    if not (name == "c1" or name.startswith("c")):
        return np.asarray(odd, np.float32), {"flipped": False, "ccc": None, "rotation": np.eye(3).tolist(),
                                             "shift": [0.0, 0.0, 0.0]}
    mode = "c1" if s.nsym == 1 else "z"
    lp = max(10.0, restarget) / 1.15
    e = filters.lowpass_gauss(np.asarray(even, np.float32), apix, lp)
    o = filters.lowpass_gauss(np.asarray(odd, np.float32), apix, lp)
    n = even.shape[0]
    best = None
    for flipped in (False, True):
        # z flip about the centre voxel n//2 (index i -> n - i)
        m = np.roll(o[::-1], 1, axis=0) if flipped else o
        R, t, c = _local_align(e, m, mode, n / 4.0)
        if best is None or c > best[3]:
            best = (flipped, R, t, c)
    flipped, R, t, c = best
    src = np.roll(np.asarray(odd, np.float32)[::-1], 1, axis=0) if flipped else np.asarray(odd, np.float32)
    return rotate_volume(src, R, t), {"flipped": bool(flipped), "ccc": c, "rotation": R.tolist(),
                                      "shift": [float(v) for v in t]}


@dataclasses.dataclass
class PostprocessResult:
    """Outputs of :func:`postprocess_halves` (maps float32 (n, n, n); FSCs over shells 1..n/2)."""

    final: np.ndarray
    even: np.ndarray
    odd: np.ndarray
    even_unmasked: np.ndarray
    odd_unmasked: np.ndarray
    odd_aligned_raw: np.ndarray
    mask: np.ndarray
    mask_tight: np.ndarray
    fsc_unmasked: FSCCurve
    fsc_masked: FSCCurve
    fsc_tight: FSCCurve
    res_0143_a: float
    align_info: dict


def postprocess_halves(even: np.ndarray, odd: np.ndarray, apix: float, restarget: float, sym: str = "c1",
                       align: bool = True, automaskexpand: int = 0) -> PostprocessResult:
    """FSCs, masks and FSC-weighted filtering of two half maps (spec §3.10 steps 1–7).

    Parameters
    ----------
    even, odd : float32 (n, n, n)
        Raw half maps, protein positive.
    apix : float
        Å/px.
    restarget : float
        Target resolution (Å): Wiener ``maxfreq = 1/restarget``, mask dilation/softening.
    sym : str
        The final map is symmetrised with these operators.
    """
    even = np.asarray(even, np.float32)
    if align:
        odd, info = align_odd_to_even(even, odd, apix, restarget, sym)
    else:
        odd, info = np.asarray(odd, np.float32), {"flipped": False, "ccc": None}
    maxfreq = 1.0 / restarget
    f_un = fsc(even, odd)
    combined = 0.5 * (even + odd)
    tmp = filters.normalize_edgemean(filters.fsc_weight_filter(combined, f_un, apix, 2.0, maxfreq))
    try:
        mask, tight = masks.postprocess_masks(tmp, apix, restarget, automaskexpand=automaskexpand)
    except Exception:  # noqa: BLE001 - automask fails on pure noise; fall back to a soft sphere
        n = even.shape[0]
        mask = masks.soft_sphere(n, n * 0.4, n * 0.05)
        tight = mask
    f_m = fsc(even * mask, odd * mask)
    f_t = fsc(even * tight, odd * tight)
    ops = get_symmetry(sym).matrices

    def filt(x, curve, snr):
        return filters.fsc_weight_filter(x, curve, apix, snr, maxfreq)

    even_un = filt(even, f_m, 1.0)
    odd_un = filt(odd, f_m, 1.0)
    final = filt(combined, f_m, 2.0)
    if len(ops) > 1:
        final = filters.apply_symmetry(final, ops)
    return PostprocessResult(
        final=filters.normalize_edgemean(final * mask), even=filters.normalize_edgemean(even_un * mask),
        odd=filters.normalize_edgemean(odd_un * mask), even_unmasked=even_un, odd_unmasked=odd_un,
        odd_aligned_raw=odd, mask=mask, mask_tight=tight, fsc_unmasked=f_un, fsc_masked=f_m, fsc_tight=f_t,
        res_0143_a=resolution(f_m, apix, 0.143), align_info=info)


def next_resolution(curve: FSCCurve, apix: float, previous_a: float, maxres_a: float = 0.0,
                    cutoff: float = 0.2, factor: float = 0.8) -> float:
    """Next iteration's alignment resolution (spec §3.6, §7.14), Å.

    ``r = factor / s₀`` with ``s₀`` (1/Å) the first shell where the masked FSC < ``cutoff``
    (the second-to-last shell if it never drops); then ``min(r, 1.1·previous)``. A positive
    ``maxres_a`` overrides everything.
    """
    if maxres_a and maxres_a > 0:
        return float(maxres_a)
    s = curve.freq_inv_a(apix)
    below = np.flatnonzero(curve.fsc < cutoff)
    s0 = s[below[0]] if below.size else s[-2]
    return float(min(factor / s0, 1.1 * previous_a))


# ----------------------------------------------------------------------------- truth evaluation
def _angles_deg(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    tr = np.einsum("...ji,...ji->...", A, B)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def evaluate_alignment(rot_est, pos_est, rot_true, pos_true, inlier_deg: float = 15.0) -> dict:
    """Orientation / translation errors after the best global frame change (the map's own frame).

    The refined map ``m`` relates to the truth ``T`` by ``m(r) = T(G⁻¹(r − g))``; then a particle
    with estimate ``(R, p)`` has true orientation ``R·G`` and position ``p + R g``. ``G`` is the
    robust mean of ``R_i⁻¹ R_true,i`` (consensus inliers within ``inlier_deg``), ``g`` the least-squares
    fit over the inliers. Symmetric particles: pass one representative truth.

    Parameters
    ----------
    rot_est, rot_true : (n, 3, 3); pos_est, pos_true : (n, 3) px (same sampling)

    Returns
    -------
    dict with ``orientation_error_deg`` (n,), ``translation_error_px`` (n,), medians, ``G``, ``g``.
    """
    Re, Rt = np.asarray(rot_est, float), np.asarray(rot_true, float)
    Gi = np.einsum("nji,njk->nik", Re, Rt)
    agree = np.array([(_angles_deg(Gi, Gi[k][None]) < inlier_deg).sum() for k in range(len(Gi))])
    seed = int(np.argmax(agree))
    inl = _angles_deg(Gi, Gi[seed][None]) < inlier_deg
    G = mean_rotation(Gi[inl])
    ang = _angles_deg(Re @ G, Rt)
    inl = ang < inlier_deg
    A = Re[inl].reshape(-1, 3)
    y = (np.asarray(pos_true, float) - np.asarray(pos_est, float))[inl].reshape(-1)
    g = np.linalg.lstsq(A, y, rcond=None)[0] if inl.any() else np.zeros(3)
    terr = np.linalg.norm(np.asarray(pos_est, float) + Re @ g - np.asarray(pos_true, float), axis=1)
    return {"orientation_error_deg": ang, "translation_error_px": terr, "median_orientation_deg": float(np.median(ang)),
            "median_translation_px": float(np.median(terr)), "G": G, "g": g, "n_inliers": int(inl.sum())}


def truth_in_map_frame(truth_map: np.ndarray, G: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The truth map transformed into the refined map's frame: ``T(G⁻¹(r − g))``."""
    return rotate_volume(np.asarray(truth_map, np.float32), G, g)
