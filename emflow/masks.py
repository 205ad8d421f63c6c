"""Real-space masks: soft spheres/circles, soft edges and EMAN-style automasking.

All masks are float32 in [0, 1], centred on voxel ``n // 2`` of every axis (CONVENTIONS), radii
and widths in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage

from emflow.errors import InputError
from emflow.filters import lowpass_gauss

__all__ = [
    "radius_grid",
    "soft_sphere",
    "soft_circle",
    "soft_edge",
    "auto_mask",
    "AutomaskChoice",
    "automask_threshold",
    "postprocess_masks",
]


def radius_grid(shape: tuple[int, ...]) -> np.ndarray:
    """Distance (px, float32) of every pixel/voxel from the box centre ``n // 2``: the one real-space radius grid.

    The Fourier-space radius (cycles/px or 1/Å) is :func:`emflow.fourier.radius_grid`.
    """
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - n // 2).astype(np.float32)) ** 2 for g, n in zip(grids, shape))
    return np.sqrt(r2).astype(np.float32)


def _falloff(d: np.ndarray, width: float, kind: str) -> np.ndarray:
    """Fall-off value at distance ``d ≥ 0`` (px) beyond the hard edge."""
    if width <= 0:
        return (d <= 0).astype(np.float32)
    if kind == "gauss":
        return np.exp(-((d / width) ** 2)).astype(np.float32)
    if kind == "cosine":
        t = np.clip(d / width, 0.0, 1.0)
        return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)
    raise ValueError(f"kind must be 'gauss' or 'cosine', got {kind!r}")


def soft_sphere(n: int, radius: float, width: float, ndim: int = 3, kind: str = "gauss") -> np.ndarray:
    """EMAN ``mask.soft``: 1 inside ``radius``, smooth fall-off outside.

    Parameters
    ----------
    n : int
        Box size (cubic/square).
    radius : float
        Radius of the flat part, px from the centre ``n // 2``. A **negative** value means
        ``n/2 + radius`` (EMAN's ``outer_radius = −k`` → radius ``n/2 − k``).
    width : float
        Fall-off width, px. ``kind="gauss"`` (EMAN): value ``exp(−((r − radius)/width)²)`` for
        r > radius, 0.5 at ``r = radius + 0.83·width``, never exactly 0. ``kind="cosine"``
        (RELION-like): raised cosine from 1 at ``radius`` to 0 at ``radius + width`` (0.5 at
        ``radius + width/2``).
    ndim : {2, 3}
        2 for an image (n, n), 3 for a volume (n, n, n).

    Returns
    -------
    ndarray of float32, shape (n,)*ndim
    """
    if ndim not in (2, 3):
        raise ValueError(f"soft_sphere: ndim must be 2 or 3, got {ndim}")
    n = int(n)
    if radius < 0:
        radius = n / 2 + radius
    r = radius_grid((n,) * ndim)
    return np.where(r <= radius, np.float32(1.0), _falloff(np.maximum(r - radius, 0.0), width, kind)).astype(np.float32)


def soft_circle(n: int, radius: float, width: float, kind: str = "gauss") -> np.ndarray:
    """2D :func:`soft_sphere` (shape (n, n))."""
    return soft_sphere(n, radius, width, ndim=2, kind=kind)


def soft_edge(mask: np.ndarray, width_px: float, threshold: float = 0.5) -> np.ndarray:
    """Add a Gaussian soft edge to a binary mask.

    Voxels inside (``mask > threshold``) are 1; outside, at Euclidean distance ``d`` (px) from the
    nearest inside voxel, the value is ``exp(−d²/(2σ²))`` with ``σ = width_px/2`` (0.135 at
    ``d = width_px``) and exactly 0 beyond ``d = 2·width_px``.
    """
    inside = np.asarray(mask) > threshold
    if width_px <= 0 or not inside.any():
        return inside.astype(np.float32)
    d = scipy.ndimage.distance_transform_edt(~inside)
    sigma = width_px / 2.0
    out = np.exp(-(d * d) / (2 * sigma * sigma))
    out[d > 2 * width_px] = 0.0
    return out.astype(np.float32)


def _dilate(binary: np.ndarray, nshells: int) -> np.ndarray:
    """Grow a binary mask by ``nshells`` px (Euclidean distance, isotropic)."""
    if nshells <= 0 or not binary.any():
        return binary
    return scipy.ndimage.distance_transform_edt(~binary) <= nshells


def auto_mask(
    vol: np.ndarray,
    apix: float,
    threshold: float | None = None,
    nshells: int | None = None,
    nshellsgauss: int = 0,
    nmaxseed: int = 24,
    radius: float = 0,
    restarget: float | None = None,
) -> np.ndarray:
    """EMAN ``mask.auto3d`` (spec §5.7), with the e2refine_postprocess threshold heuristic.

    1. Seeds: the ``nmaxseed`` highest voxels above ``threshold`` (or, with ``radius > 0``, every
       voxel above threshold within ``radius`` px of the centre).
    2. Flood fill: connected components (6-connectivity) of ``vol > threshold`` that touch a seed.
    3. Dilation by ``nshells`` px (Euclidean), then a Gaussian edge of ``nshellsgauss`` px
       (:func:`soft_edge`).

    Parameters
    ----------
    vol : ndarray, shape (n, n, n)
        Map, protein positive.
    apix : float
        Å/px.
    threshold : float, optional
        Density threshold. ``None`` → the §3.10 heuristic (:func:`automask_threshold`): the map is
        Gaussian low-passed, clipped to a sphere at the radius where its radial maximum drops
        below 0.2·peak, and thresholded at 0.15·peak.
    nshells : int, optional
        Dilation in px. Default: ``int(0.05·n + 0.5 + 0.75·restarget/apix)`` (§3.10).
    nshellsgauss : int
        Width of the Gaussian edge (px).
    nmaxseed : int
        Number of highest voxels used as seeds.
    radius : float
        If > 0, seed from the central sphere of this radius (px) instead of the maxima.
    restarget : float, optional
        Target resolution in Å for the heuristic (default ``max(2·apix, 10)``).

    Returns
    -------
    ndarray of float32, shape of ``vol``, values in [0, 1].

    Raises
    ------
    InputError
        If no voxel lies above the threshold.
    """
    vol = np.asarray(vol, dtype=np.float32)
    n = vol.shape[-1]
    if restarget is None:
        restarget = max(2.0 * apix, 10.0)
    work = vol
    if threshold is None:
        choice = automask_threshold(vol, apix, restarget)
        work = choice.filtered
        threshold = 0.15 * choice.peak
    if nshells is None:
        nshells = int(0.05 * n + 0.5 + 0.75 * restarget / apix)
    above = work > threshold
    if not above.any():
        raise InputError(
            f"no voxel above the automask threshold {threshold:.4g} (map max {float(work.max()):.4g})",
            source="automask threshold",
            fix="lower the threshold or check that protein density is positive",
        )
    if radius > 0:
        seeds = above & (radius_grid(vol.shape) <= radius)
    else:
        flat = np.flatnonzero(above)
        k = min(int(nmaxseed), flat.size)
        top = flat[np.argpartition(work.ravel()[flat], flat.size - k)[flat.size - k:]]
        seeds = np.zeros(vol.shape, dtype=bool)
        seeds.ravel()[top] = True
    labels, _ = scipy.ndimage.label(above)  # default structure = 6-connectivity
    keep = np.unique(labels[seeds])
    keep = keep[keep > 0]
    binary = np.isin(labels, keep)
    binary = _dilate(binary, int(nshells))
    return soft_edge(binary, nshellsgauss) if nshellsgauss > 0 else binary.astype(np.float32)


@dataclass(frozen=True)
class AutomaskChoice:
    """Result of the §3.10 automask heuristic.

    Attributes
    ----------
    peak : float
        Highest radial-maximum value of the low-passed map inside the search radius.
    rmax : int
        Mask-limiting radius (px): first radius beyond the peak where the radial maximum < 0.2·peak.
    filtered : ndarray of float32
        The low-passed map, zeroed beyond ``rmax`` (what the thresholds apply to).
    """

    peak: float
    rmax: int
    filtered: np.ndarray


def automask_threshold(vol: np.ndarray, apix: float, restarget: float) -> AutomaskChoice:
    """The e2refine_postprocess automask heuristic (spec §3.10 step 5).

    Low-pass the map (Gaussian, cutoff ``min(0.08, 1/(1.5·restarget))`` 1/Å), take the maximum
    value per integer real-space radius, and within ``r < n/2.2`` find the first radius past the
    main peak where it drops below 0.2·peak; everything beyond that radius is zeroed.
    """
    vol = np.asarray(vol, dtype=np.float32)
    n = vol.shape[-1]
    cutoff = min(0.08, 1.0 / (1.5 * restarget))
    lp = lowpass_gauss(vol, apix, 1.0 / cutoff)
    r = radius_grid(vol.shape).astype(np.int64)
    nr = n // 2 + 1
    inside = r < nr
    prof = np.full(nr, -np.inf)
    np.maximum.at(prof, r[inside], lp[inside])
    rsearch = max(int(n / 2.2), 1)
    vmax = float(np.max(prof[:rsearch]))
    rmax = rsearch
    peak, active = -np.inf, False
    for i in range(rsearch):  # ≤ n/2 radii
        peak = max(peak, prof[i])
        if not active and prof[i] < 0.9 * vmax:
            continue
        active = True
        if prof[i] < 0.2 * vmax:
            rmax = i
            break
    filtered = np.where(radius_grid(vol.shape) <= rmax, lp, np.float32(0)).astype(np.float32)
    return AutomaskChoice(peak=float(peak), rmax=int(rmax), filtered=filtered)


def postprocess_masks(
    vol: np.ndarray,
    apix: float,
    restarget: float,
    automaskexpand: int = 0,
    tight_shells_per_restarget: float = 1.8,
    soften_res_factor: float = 1.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``mask`` and ``mask_tight`` of e2refine_postprocess (spec §3.10 step 5).

    After :func:`automask_threshold` (low-pass, radial-max profile, sphere clip at ``rmax``):

    * ``mask`` = auto_mask(threshold 0.15·peak, 24 seeds, nshells = int(0.05·n + 0.5 +
      0.75·restarget/apix) + automaskexpand);
    * ``mask_tight`` = auto_mask(threshold 0.2·peak, 24 seeds, nshells =
      int(tight_shells_per_restarget·restarget/apix));

    both softened by a Gaussian low-pass at resolution ``soften_res_factor·restarget`` Å and
    clipped to [0, 1]. The defaults (1.8 and 1.5) are those of EMAN2's current
    ``e2refine_postprocess.py``; the spec text gives 2 and 2 (older wording). The tight mask is
    "tight" through its higher threshold; its dilation is not smaller.

    Returns
    -------
    (mask, mask_tight) : float32 arrays of the shape of ``vol``.
    """
    vol = np.asarray(vol, dtype=np.float32)
    n = vol.shape[-1]
    choice = automask_threshold(vol, apix, restarget)
    loose = auto_mask(
        choice.filtered, apix, threshold=0.15 * choice.peak,
        nshells=int(0.05 * n + 0.5 + 0.75 * restarget / apix) + int(automaskexpand), nmaxseed=24, radius=0,
        restarget=restarget,
    )
    tight = auto_mask(
        choice.filtered, apix, threshold=0.2 * choice.peak,
        nshells=int(tight_shells_per_restarget * restarget / apix), nmaxseed=24, radius=0, restarget=restarget,
    )
    soften = soften_res_factor * restarget
    return (
        np.clip(lowpass_gauss(loose, apix, soften), 0.0, 1.0).astype(np.float32),
        np.clip(lowpass_gauss(tight, apix, soften), 0.0, 1.0).astype(np.float32),
    )
