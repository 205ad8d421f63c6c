"""Subtilt extraction and per-particle reconstruction from a tilt series (spec §3.2, e2spt_extract).

For every picked particle ``p`` (px from the tomogram centre) and every tilt ``t``:

1. ``R_t = geometry.tilt_matrix(tilt_t, rot_t, offtilt_t)`` (the same matrix the simulator and the
   tomogram reconstruction use); the particle's centre lands in the (shrunk) tilt image at
   ``c = (R_t p)_xy + (tx_t, ty_t)/shrink + (nx//2, ny//2)`` at depth ``z_t = (R_t p)_z``.
2. A ``pad2d × pad2d`` subtilt is cropped centred on ``round(c)`` (zero fill outside the image); the
   residual ``d = c − round(c)`` (in [−½, ½)) is kept in ``xform.projection = (R_t, d)``.
3. Contrast is inverted (protein bright), the subtilt is normalised (edge mean 0, σ 1), pixels
   beyond ±8σ are set to 0 and a soft circular mask (radius ``pad2d/2 − w``, ``w = (pad2d − box)/4``,
   Gaussian fall-off ``w/2``) is applied.
4. CTF phase flip with the particle's own defocus ``df_t − z_t·apix/10⁴`` µm (the defocus gradient
   across a tilted specimen). With :mod:`emflow.ctf`'s sign (``CTF = −sin χ``, protein dark), the
   inverted image carries ``−CTF``; it is multiplied by ``sign(−CTF)``, so the stored subtilt is
   ``|CTF|·object`` (protein bright at every frequency).
5. The subtilts of a particle are inserted (trilinear, :class:`emflow.reconstruct.Reconstructor`
   on the ``pad2d³`` grid, after undoing ``d``) and the result is clipped to ``box³`` and normalised
   (edge mean 0, σ 1). Particles with fewer than ``min_tilt_fraction · ntilt`` usable subtilts get a
   zero volume.

The 3D particle is in the tomogram frame: a particle with orientation ``R_p`` reconstructs
``ref(R_p⁻¹ r)`` (CONVENTIONS).

Picks: :func:`read_picks` reads the EMAN2 info json (``boxes_3d``, unbinned px from the centre,
filtered by class name), a RELION STAR or a text file (both unbinned px from the corner, via
:func:`emflow.sta.importer.read_picks`). :func:`check_picks` rejects coordinates outside the tomogram
(always an :class:`InputError`: a unit or convention mix-up) and boxes that do not fit inside the
untilted image (an :class:`InputError` unless ``skip_edge``, then they are excluded and reported).
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import pathlib
from collections.abc import Callable, Mapping

import numpy as np

from emflow import fourier
from emflow.ctf import CTF, ctf_2d_stack
from emflow.errors import InputError
from emflow.geometry import tilt_matrix
from emflow.io import boxes_from_info, read_info_json, tlt_params
from emflow.masks import soft_circle
from emflow.pixel_size import check_pixel_size
from emflow.reconstruct import Reconstructor

__all__ = [
    "TiltGeometry", "ExtractParams", "ExtractResult", "extraction_boxes", "read_picks", "check_picks",
    "prepare_tilt_series", "extract_particles", "subtilt_headers", "particle_headers",
    "TiltSource", "open_tilt_series", "particles_per_block", "iter_extract", "extract_to_files",
    "chunk_bounds", "gather_extraction",
]

CLAMP_SIGMA = 8.0  # EMAN: pixels beyond ±8σ after normalisation are set to 0


# ----------------------------------------------------------------------------- inputs
@dataclasses.dataclass(frozen=True)
class TiltGeometry:
    """Alignment and CTF of one tilt series (from its EMAN2 info json).

    Attributes
    ----------
    params : ndarray float64 (ntilt, 5)
        ``tlt_params`` rows ``[tx, ty, rot, tilt, offtilt]`` (tx, ty unbinned px; angles deg).
    apix_unbin : float
        Å/px of the tilt series.
    defocus_um, phase_deg : ndarray (ntilt,) or None
        Mid-plane defocus (µm, underfocus positive) and phase shift per tilt; None: no CTF known.
    voltage_kv, cs_mm, ampcont : float
        Microscope (ampcont a fraction).
    """

    params: np.ndarray
    apix_unbin: float
    defocus_um: np.ndarray | None
    phase_deg: np.ndarray | None
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    ampcont: float = 0.1
    defocus_hand: float = -1.0  # RELION rlnTomoHand: df += hand · depth (tomogram.cpp L280)

    @property
    def n_tilts(self) -> int:
        return int(self.params.shape[0])

    @property
    def rotations(self) -> np.ndarray:
        """``R_t`` float64 (ntilt, 3, 3)."""
        return tilt_matrix(self.params[:, 3], self.params[:, 2], self.params[:, 4])

    @classmethod
    def from_info(cls, info: Mapping, *, apix: float, voltage_kv: float, cs_mm: float, ampcont: float,
                  source=None) -> "TiltGeometry":
        """Geometry of an info dict; ``apix``/``voltage_kv``/``cs_mm`` fill keys the info lacks."""
        params = tlt_params(info, source=source)
        n = params.shape[0]
        df = info.get("defocus")
        if df is not None and len(df) != n:
            raise InputError(f"has {len(df)} defocus values for {n} tilts", source=source,
                             fix="re-run the CTF estimation for this tilt series")
        phase = info.get("phase") or [0.0] * n
        if len(phase) != n:
            raise InputError(f"has {len(phase)} phase values for {n} tilts", source=source,
                             fix="re-run the CTF estimation for this tilt series")
        # the info json's pixel size was established on import; the config value is a check
        apix_unbin = check_pixel_size(info.get("apix_unbin"), source=source or "info json", expected=apix,
                                      kind="json", what="info json (apix_unbin)")
        # RELION's hand -1 (IMOD, EMAN2, emflow's own geometry): deeper = closer to focus
        hand = float(info.get("tomo_hand", -1.0))
        if hand not in (-1.0, 1.0):
            raise InputError(f"tomo_hand is {hand}; RELION's rlnTomoHand is -1 or +1", source=source,
                             fix="set rlnTomoHand in tomograms.star to -1 or +1")
        return cls(params=params, apix_unbin=apix_unbin, defocus_hand=hand,
                   defocus_um=None if df is None else np.asarray(df, dtype=np.float64),
                   phase_deg=np.asarray(phase, dtype=np.float64),
                   voltage_kv=float(info.get("voltage", voltage_kv)), cs_mm=float(info.get("cs", cs_mm)),
                   ampcont=float(ampcont))


def extraction_boxes(boxsize_unbin: int, shrink: int = 1, padtwod: float = 2.0) -> tuple[int, int]:
    """``(box, pad2d)`` in shrunk px: ``box = good_size(boxsize_unbin // shrink)``,
    ``pad2d = good_size(box · padtwod)`` (spec §3.2 step 1)."""
    if boxsize_unbin < 2 or shrink < 1 or padtwod < 1:
        raise ValueError(f"extraction_boxes: bad boxsize_unbin={boxsize_unbin}, shrink={shrink}, "
                         f"padtwod={padtwod}")
    box = fourier.good_size(int(boxsize_unbin / shrink))
    return box, fourier.good_size(int(np.ceil(box * padtwod)))


def read_picks(path: str | os.PathLike, label: str | None) -> tuple[np.ndarray, int | None, int | None]:
    """Pick positions ``(n, 3)`` float64, unbinned px from the tomogram centre, the class box size and
    the thickness of the tomogram the picks refer to.

    Parameters
    ----------
    path : str or path
        EMAN2 info json (``boxes_3d`` of class ``label``): the import or picks stage's output.
    label : str or None
        Class name in the info json's ``class_list``.

    Returns
    -------
    coords : ndarray (n, 3)
    boxsize_unbin : int or None
        ``class_list[...]["boxsize"]`` of ``label`` when the file is an info json and has one.
    thickness_unbin_px : int or None
        ``tomogram_thickness_unbin_px``: the thickness the import stage found declared for the user's
        tomogram (RELION ``rlnTomoSizeZ``, IMOD ``tilt.com`` THICKNESS, a tomogram made elsewhere).
    """
    path = pathlib.Path(path)
    if path.suffix != ".json":  # foreign formats are read once, on import (emflow.sta.import_picks)
        raise InputError("extraction reads picks from an EMAN2 info json", source=path,
                         fix="give the picks file as the tomogram's `picks:` in the input table; the import "
                             "stage converts it into results/import/info/<tomo>_info.json")
    info = read_info_json(path)
    coords, _, _ = boxes_from_info(info, label=label, source=path)
    boxsize = None
    for v in (info.get("class_list") or {}).values():
        if v.get("name") == label and "boxsize" in v:
            boxsize = int(v["boxsize"])
    thickness = info.get("tomogram_thickness_unbin_px")
    return coords, boxsize, None if thickness is None else int(thickness)


def check_picks(coords_unbin: np.ndarray, shape_xyz_unbin, boxsize_unbin: int, *, source, skip_edge: bool,
                fix_key: str = "extract.skip_edge") -> tuple[np.ndarray, list[dict]]:
    """Validate pick positions against the tomogram.

    A pick outside the tomogram (``|x| > nx/2``, ``|y| > ny/2`` or ``|z| > nz/2``) always raises: it
    means binned/unbinned or corner/centre coordinates were mixed up. A pick whose box does not fit
    inside the untilted image (``|x| + box/2 > nx/2`` or likewise in y) raises unless ``skip_edge``;
    then it is excluded and reported.

    Returns
    -------
    keep : ndarray bool (n,)
    excluded : list of dict
        ``{"index": i, "xyz_unbin": [...], "reason": ...}`` for every excluded pick.
    """
    c = np.asarray(coords_unbin, dtype=np.float64).reshape(-1, 3)
    half = np.asarray(shape_xyz_unbin, dtype=np.float64) / 2.0
    outside = np.any(np.abs(c) > half, axis=1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"particle {i} at {np.round(c[i], 1).tolist()} (unbinned px from the centre) lies outside the "
            f"tomogram of {list(map(int, shape_xyz_unbin))} unbinned px ({int(outside.sum())} such picks)",
            source=source,
            fix="check that the coordinates are unbinned pixels (info json: from the tomogram centre; "
                "STAR/text: from the corner) and belong to this tomogram")
    near = np.any(np.abs(c[:, :2]) + boxsize_unbin / 2.0 > half[:2], axis=1)
    excluded = [{"index": int(i), "xyz_unbin": c[i].tolist(),
                 "reason": f"box of {boxsize_unbin} px crosses the image edge"} for i in np.flatnonzero(near)]
    if near.any() and not skip_edge:
        i = excluded[0]["index"]
        raise InputError(
            f"particle {i} at {np.round(c[i], 1).tolist()} is within half a box ({boxsize_unbin / 2:g} px) of "
            f"the image edge ({len(excluded)} such picks)", source=source,
            fix=f"set {fix_key}: true to skip such particles, or remove the picks")
    return ~near, excluded


def prepare_tilt_series(stack: np.ndarray, shrink: int = 1) -> np.ndarray:
    """Mean-shrink every tilt image by ``shrink`` and normalise it to mean 0, σ 1 (spec §3.2 step 4).

    Parameters
    ----------
    stack : ndarray (ntilt, ny, nx)

    Returns
    -------
    ndarray float32 (ntilt, ny // shrink, nx // shrink)
    """
    s = np.asarray(stack, dtype=np.float32)
    if s.ndim != 3:
        raise ValueError(f"prepare_tilt_series: stack must be (ntilt, ny, nx), got {s.shape}")
    if shrink > 1:
        s = fourier.bin_mean(s, (1, shrink, shrink))
    mean = s.mean(axis=(1, 2), dtype=np.float64)[:, None, None]
    sd = s.std(axis=(1, 2), dtype=np.float64)[:, None, None]
    return ((s - mean) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


# ----------------------------------------------------------------------------- extraction
@dataclasses.dataclass(frozen=True)
class ExtractParams:
    """Extraction settings (sizes in shrunk px).

    Attributes
    ----------
    box, pad2d : int
        3D box and subtilt size (see :func:`extraction_boxes`).
    shrink : int
        Mean-shrink factor of the tilt images.
    maxtilt_deg : float
        Tilts with ``|tilt| > maxtilt_deg`` are skipped.
    phase_flip : bool
        CTF phase flipping (needs a defocus per tilt).
    depth_defocus : bool
        Correct each particle's defocus for its depth (``df + hand·z·apix/10⁴``, hand −1 unless the
        info json's ``tomo_hand`` (RELION ``rlnTomoHand``) says +1); False uses the
        mid-plane defocus (for comparison only).
    mask_subtilts : bool
        Apply the soft circular mask.
    min_tilt_fraction : float
        Particles with fewer usable subtilts than this fraction of all tilts get a zero volume.
    """

    box: int
    pad2d: int
    shrink: int = 1
    maxtilt_deg: float = 90.0
    phase_flip: bool = True
    depth_defocus: bool = True
    mask_subtilts: bool = True
    min_tilt_fraction: float = 0.2


@dataclasses.dataclass
class ExtractResult:
    """Subtilts (particle-major, tilt order within a particle) and 3D particles of one tomogram.

    Attributes
    ----------
    subtilts : ndarray float32 (m, pad2d, pad2d)
    particle, tilt_id : ndarray int64 (m,)
        Particle index (``model_id``) and tilt index of each subtilt.
    rotations : ndarray float64 (m, 3, 3)
        ``xform.projection`` rotation ``R_t``.
    shifts : ndarray float64 (m, 2)
        Residual ``(dx, dy)`` px (``xform.projection`` translation).
    crop_xy : ndarray int64 (m, 2)
        Integer centre of the crop in the (shrunk) tilt image.
    depth : ndarray float64 (m,)
        ``z_t`` (shrunk px).
    defocus_um : ndarray float64 (m,) or None
        Defocus used for the phase flip.
    volumes : ndarray float32 (n, box, box, box)
    n_subtilts : ndarray int64 (n,)
    zero_volume : ndarray bool (n,)
    apix : float
        Pixel size of subtilts and volumes (Å/px).
    first : int
        Index of the first volume's particle (blocks of :func:`iter_extract`; 0 for a whole result).
    """

    subtilts: np.ndarray
    particle: np.ndarray
    tilt_id: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    crop_xy: np.ndarray
    depth: np.ndarray
    defocus_um: np.ndarray | None
    volumes: np.ndarray
    n_subtilts: np.ndarray
    zero_volume: np.ndarray
    apix: float
    first: int = 0


def _crop_stack(stack: np.ndarray, tilt_idx: np.ndarray, centres: np.ndarray, n: int) -> np.ndarray:
    """``n × n`` crops of ``stack[tilt_idx]`` centred on integer ``centres`` (m, 2) (x, y); zero outside."""
    _, ny, nx = stack.shape
    off = np.arange(n) - n // 2
    cols = centres[:, 0, None] + off[None]
    rows = centres[:, 1, None] + off[None]
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    crops = stack[tilt_idx[:, None, None], np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    crops *= inside
    return crops


def _normalise_subtilts(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invert, normalise to edge mean 0 / σ 1, clamp ±8σ → 0 (in place). Returns (crops, σ > 0)."""
    crops *= -1.0
    n = crops.shape[-1]
    edge_sum = (crops[:, 0, :].sum(axis=1, dtype=np.float64) + crops[:, -1, :].sum(axis=1, dtype=np.float64)
                + crops[:, 1:-1, 0].sum(axis=1, dtype=np.float64) + crops[:, 1:-1, -1].sum(axis=1, dtype=np.float64))
    edge_mean = edge_sum / (4 * n - 4)
    sd = crops.std(axis=(1, 2), dtype=np.float64)
    ok = sd > 0
    crops -= edge_mean[:, None, None].astype(np.float32)
    crops /= np.where(ok, sd, 1.0)[:, None, None].astype(np.float32)
    crops[np.abs(crops) > CLAMP_SIGMA] = 0.0
    return crops, ok


def _flip_signs(defocus_um: np.ndarray, phase_deg: np.ndarray, geom: TiltGeometry, n: int,
                apix: float) -> np.ndarray:
    """``sign(−CTF)`` (float32, (m, n, n//2+1), rfft layout of :func:`fourier.ft`) per subtilt."""
    ctfs = [CTF(defocus_um=float(d), voltage_kv=geom.voltage_kv, cs_mm=geom.cs_mm, ampcont=geom.ampcont,
                phase_shift_deg=float(p)) for d, p in zip(defocus_um, phase_deg)]
    c = ctf_2d_stack(ctfs, (n, n), apix)
    return np.where(c > 0, np.float32(-1.0), np.float32(1.0))


def _shift_ramps(shifts: np.ndarray, n: int) -> np.ndarray:
    """Phase ramps (m, n, n//2+1) that move image content by ``−shifts`` (x, y)."""
    ky, kx = fourier.freq_grid((n, n))
    # separable: exp(2πi(kx·dx + ky·dy)) = exp(2πi kx·dx) · exp(2πi ky·dy)
    ex = np.exp(2j * np.pi * kx[None] * shifts[:, 0, None, None]).astype(np.complex64)
    ey = np.exp(2j * np.pi * ky[None] * shifts[:, 1, None, None]).astype(np.complex64)
    return ex * ey


class TiltSource:
    """The tilt series as :func:`prepare_tilt_series` would make it, read lazily crop by crop.

    ``raw`` may be a read-only memmap (:func:`open_tilt_series`): only per-tilt statistics are
    computed up front (one tilt image in memory at a time) and :meth:`crops` reads, shrinks and
    normalises just the pixels of each subtilt, so memory does not grow with the tilt series.
    The crops equal those of the prepared array (same float64 arithmetic, same shrink grid).

    Parameters
    ----------
    raw : ndarray (ntilt, ny, nx), any float dtype, memmap allowed
    shrink : int
        Mean-shrink factor (``fourier.bin_mean`` blocks from the image corner).
    """

    def __init__(self, raw: np.ndarray, shrink: int = 1):
        if raw.ndim != 3:
            raise ValueError(f"TiltSource: stack must be (ntilt, ny, nx), got {raw.shape}")
        self.raw, self.shrink = raw, int(shrink)
        n, ny, nx = raw.shape
        self.shape = (n, ny // self.shrink, nx // self.shrink)
        self.mean = np.zeros(n)
        self.sd = np.ones(n)
        self._mmap = _find_mmap(raw)
        for t in range(n):
            img = self._binned(t, 0, self.shape[1], 0, self.shape[2])
            self.mean[t] = img.mean(dtype=np.float64)
            sd = img.std(dtype=np.float64)
            self.sd[t] = sd if sd > 0 else 1.0
            self.release()

    def release(self) -> None:
        """Unmap the file pages read so far (``madvise(MADV_DONTNEED)``; they stay in the page cache),
        so the job's resident memory does not grow with the part of the tilt series it has visited."""
        if self._mmap is not None:
            try:
                self._mmap.madvise(mmap.MADV_DONTNEED)
            except (AttributeError, OSError, ValueError):
                self._mmap = None

    def _binned(self, t: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Shrunk rows ``r0:r1``, columns ``c0:c1`` of tilt ``t`` (float32, not normalised)."""
        s = self.shrink
        img = np.asarray(self.raw[t, r0 * s:r1 * s, c0 * s:c1 * s], dtype=np.float32)
        return fourier.bin_mean(img, (s, s)) if s > 1 else img

    def crops(self, tilt_idx: np.ndarray, centres: np.ndarray, n: int) -> np.ndarray:
        """``n × n`` normalised crops (float32 (m, n, n)) of tilts ``tilt_idx`` centred on the integer
        shrunk-px ``centres`` (m, 2) (x, y); zero outside the image (as :func:`_crop_stack`)."""
        _, ny, nx = self.shape
        out = np.zeros((len(tilt_idx), n, n), dtype=np.float32)
        for k, (t, (cx, cy)) in enumerate(zip(tilt_idx, centres)):
            r0, c0 = int(cy) - n // 2, int(cx) - n // 2
            rr0, rr1, cc0, cc1 = max(r0, 0), min(r0 + n, ny), max(c0, 0), min(c0 + n, nx)
            if rr0 >= rr1 or cc0 >= cc1:
                continue
            img = self._binned(int(t), rr0, rr1, cc0, cc1)
            out[k, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = (img - self.mean[t]) / self.sd[t]
        self.release()
        return out


def _find_mmap(a):
    """The ``mmap.mmap`` behind a (view of a) ``numpy.memmap``, or None."""
    while a is not None:
        m = getattr(a, "_mmap", None)
        if isinstance(m, mmap.mmap):
            return m
        a = getattr(a, "base", None)
    return None


def particles_per_block(mem_mb: float, n_tilts: int, pad2d: int, box: int) -> int:
    """Particles extracted together so that one extraction job stays within ``mem_mb``.

    Fixed cost: the ``pad2d³`` insertion grid (complex64 + float32 = 12 B/voxel) and as much again
    for :meth:`Reconstructor.finish`'s temporaries, plus ~400 MB of interpreter, numba and FFT plans
    (box 128 / pad2d 256: 0.8 GB; measured 0.76 GB after a one-particle warm-up). Per particle
    (an upper bound: ``benchmarks/bench_extract.py`` measured ~65 MB at 41 tilts of 256²):
    its ``n_tilts`` subtilts live as float32 crops, their complex64 FT, the phase-flip signs and
    shift ramps (≈ 40 B per subtilt pixel in all) plus the ``box³`` float32 volume.
    """
    fixed = 24.0 * pad2d**3 + 400e6
    per = 40.0 * n_tilts * pad2d * pad2d + 4.0 * box**3
    return int(max(1, (0.8 * mem_mb * 1e6 - fixed) // per))


def iter_extract(
    source: "TiltSource | np.ndarray",
    geom: TiltGeometry,
    coords_unbin: np.ndarray,
    params: ExtractParams,
    *,
    block: int = 8,
    progress: Callable[[float], None] | None = None,
    workers: int = -1,
):
    """Extract and reconstruct particles ``block`` at a time (module docstring, steps 1–5).

    Parameters
    ----------
    source : TiltSource or ndarray (ntilt, ny, nx)
        The tilt series: a :class:`TiltSource` (lazy, e.g. over a memmap) or an array already
        prepared by :func:`prepare_tilt_series` (shrunk, normalised), protein dark.
    geom : TiltGeometry
    coords_unbin : ndarray (n, 3)
        Particle centres, unbinned px from the tomogram centre (x, y, z).
    params : ExtractParams
    block : int
        Particles per block (memory: see :func:`particles_per_block`).
    progress : callable, optional
        Called with the fraction of particles done.
    workers : int
        ``scipy.fft`` and insertion threads.

    Yields
    ------
    ExtractResult
        One per block of particles, in order: ``particle`` holds indices into ``coords_unbin``,
        ``volumes``/``n_subtilts``/``zero_volume`` the block's particles only (attribute
        ``first`` = index of its first particle).
    """
    if isinstance(source, TiltSource):
        crop, shape = source.crops, source.shape
    else:
        stack = np.asarray(source, dtype=np.float32)
        if stack.ndim != 3:
            raise ValueError(f"extract_particles: stack must be (ntilt, ny, nx), got {stack.shape}")
        crop, shape = (lambda t, c, n: _crop_stack(stack, t, c, n)), stack.shape
    ntilt, ny, nx = shape
    if ntilt != geom.n_tilts:
        raise InputError(f"tilt series has {ntilt} images but the alignment has {geom.n_tilts} tilts",
                         source="tlt_params", fix="use the info json made for this tilt series")
    if params.pad2d < params.box or params.box % 2 or params.pad2d % 2:
        raise ValueError(f"extract_particles: need even box <= pad2d, got {params.box}, {params.pad2d}")
    flip = params.phase_flip and geom.defocus_um is not None
    shrink, n2, box = int(params.shrink), int(params.pad2d), int(params.box)
    apix = geom.apix_unbin * shrink
    coords = np.asarray(coords_unbin, dtype=np.float64).reshape(-1, 3) / shrink
    npart = coords.shape[0]

    R = geom.rotations
    tshift = geom.params[:, :2] / shrink
    use_tilt = np.abs(geom.params[:, 3]) <= params.maxtilt_deg
    w = (n2 - box) / 4.0
    mask = soft_circle(n2, n2 / 2.0 - w, w / 2.0) if params.mask_subtilts and w > 0 else None
    # few slices into a large grid: per-thread z-slabs beat private accumulators (no T× zeroing)
    rec = Reconstructor(n2, pad=1, kernel="trilinear", strategy="slab", workers=workers)
    block = max(1, int(block))
    for p0 in range(0, npart, block):
        pidx = np.arange(p0, min(npart, p0 + block))
        volumes = np.zeros((len(pidx), box, box, box), dtype=np.float32)
        n_sub = np.zeros(len(pidx), dtype=np.int64)
        q = np.einsum("tij,pj->pti", R, coords[pidx])  # (p, t, 3): position in each tilt
        centre = q[..., :2] + tshift[None] + np.array([nx // 2, ny // 2])
        ic = np.floor(centre + 0.5)
        inside = (ic[..., 0] >= 0) & (ic[..., 0] < nx) & (ic[..., 1] >= 0) & (ic[..., 1] < ny) & use_tilt[None]
        pp, tt = np.nonzero(inside)  # particle-major, tilt order within a particle
        crops = crop(tt, ic[pp, tt].astype(np.int64), n2)
        crops, ok = _normalise_subtilts(crops)
        pp, tt, crops = pp[ok], tt[ok], crops[ok]
        df = None
        if pp.size:
            if mask is not None:
                crops *= mask
            dxy = centre[pp, tt] - ic[pp, tt]
            F = fourier.ft(crops, axes=(-2, -1), workers=workers).astype(np.complex64, copy=False)
            if geom.defocus_um is not None:
                df = geom.defocus_um[tt].copy()
                if params.depth_defocus:
                    df += geom.defocus_hand * q[pp, tt, 2] * apix / 1e4
            if flip:
                F *= _flip_signs(df, geom.phase_deg[tt], geom, n2, apix)
                crops = fourier.ift(F, (n2, n2), workers=workers).astype(np.float32, copy=False)
            F *= _shift_ramps(dxy, n2)
            for k in range(len(pidx)):
                sel = pp == k
                n_sub[k] = int(sel.sum())
                if n_sub[k] < params.min_tilt_fraction * ntilt or n_sub[k] == 0:
                    continue
                rec.clear()
                rec.insert_ft(F[sel], R[tt[sel]])
                volumes[k] = _normalise_edge(fourier.crop(rec.finish(), box))
            del F
        else:  # every particle of this block lies outside all images
            dxy = np.zeros((0, 2))
        if progress is not None:
            progress((pidx[-1] + 1) / npart)
        res = ExtractResult(
            subtilts=crops.reshape(-1, n2, n2).astype(np.float32, copy=False), particle=pidx[pp].astype(np.int64),
            tilt_id=tt.astype(np.int64), rotations=R[tt], shifts=dxy.reshape(-1, 2),
            crop_xy=ic[pp, tt].astype(np.int64).reshape(-1, 2), depth=q[pp, tt, 2],
            defocus_um=(df if df is not None else np.zeros(0)) if geom.defocus_um is not None else None,
            volumes=volumes, n_subtilts=n_sub, zero_volume=~np.any(volumes != 0, axis=(1, 2, 3)), apix=apix)
        res.first = int(p0)  # index of the block's first particle
        yield res


def extract_particles(
    stack: np.ndarray,
    geom: TiltGeometry,
    coords_unbin: np.ndarray,
    params: ExtractParams,
    *,
    progress: Callable[[float], None] | None = None,
    workers: int = -1,
    chunk_bytes: int = 2**28,
) -> ExtractResult:
    """Extract subtilts of every particle and reconstruct each particle, all in memory (module
    docstring; :func:`extract_to_files` streams the same results to disk).

    Parameters
    ----------
    stack : ndarray (ntilt, ny, nx) or TiltSource
        The tilt series as from :func:`prepare_tilt_series` (already shrunk and normalised),
        protein dark.
    geom : TiltGeometry
    coords_unbin : ndarray (n, 3)
        Particle centres, unbinned px from the tomogram centre (x, y, z).
    params : ExtractParams
    progress : callable, optional
        Called with the fraction of particles done.
    workers : int
        ``scipy.fft`` threads.
    chunk_bytes : int
        Approximate memory for the subtilts of one batch of particles.

    Returns
    -------
    ExtractResult
    """
    ntilt = geom.n_tilts
    n2 = int(params.pad2d)
    block = max(1, int(chunk_bytes // max(1, 12 * ntilt * n2 * n2)))
    parts = list(iter_extract(stack, geom, coords_unbin, params, block=block, progress=progress, workers=workers))
    npart = np.asarray(coords_unbin).reshape(-1, 3).shape[0]
    box = int(params.box)

    def cat(key, shape):
        arrs = [getattr(r, key) for r in parts if getattr(r, key) is not None]
        return np.concatenate(arrs) if arrs else np.zeros(shape)

    volumes = cat("volumes", (0, box, box, box)).astype(np.float32, copy=False)
    return ExtractResult(
        subtilts=cat("subtilts", (0, n2, n2)).astype(np.float32, copy=False),
        particle=cat("particle", (0,)).astype(np.int64), tilt_id=cat("tilt_id", (0,)).astype(np.int64),
        rotations=cat("rotations", (0, 3, 3)), shifts=cat("shifts", (0, 2)),
        crop_xy=cat("crop_xy", (0, 2)).astype(np.int64), depth=cat("depth", (0,)),
        defocus_um=cat("defocus_um", (0,)) if geom.defocus_um is not None else None,
        volumes=volumes.reshape(npart, box, box, box), n_subtilts=cat("n_subtilts", (0,)).astype(np.int64),
        zero_volume=cat("zero_volume", (0,)).astype(bool),
        apix=geom.apix_unbin * int(params.shrink))


def extract_to_files(
    source: "TiltSource | np.ndarray",
    geom: TiltGeometry,
    coords_unbin: np.ndarray,
    params: ExtractParams,
    *,
    particles_path: str,
    particles3d_path: str,
    file_threed: str | None = None,
    file_twod: str | None = None,
    first_model_id: int = 0,
    block: int = 8,
    bits: int = 0,
    progress: Callable[[float], None] | None = None,
    workers: int = -1,
) -> dict:
    """:func:`iter_extract`, each block written at once to two EMAN2 HDF stacks (memory: one block).

    Parameters
    ----------
    particles_path, particles3d_path : str
        Subtilt and 3D-particle files written (atomically, :class:`emflow.io.HdfStackWriter`).
    file_threed, file_twod : str, optional
        Names stored in the headers (``file_threed`` of the subtilts, ``file_twod`` /
        ``class_ptcl_src`` of the particles); default: the files written. Chunk jobs pass the
        final per-tomogram names (:func:`gather_extraction` joins the chunks).
    first_model_id : int
        ``model_id`` of the first particle (chunk offset); ``class_ptcl_idxs`` count from the first
        subtilt of this file.
    bits : int
        HDF compression bits (0: float32).

    Returns
    -------
    dict
        ``n_subtilts`` (int64 (n,)), ``zero_volume`` (bool (n,)), ``n_subtilts_total``, ``apix``.
    """
    from emflow.io import HdfStackWriter

    coords = np.asarray(coords_unbin, dtype=np.float64).reshape(-1, 3)
    file_threed = particles3d_path if file_threed is None else file_threed
    file_twod = particles_path if file_twod is None else file_twod
    apix = geom.apix_unbin * int(params.shrink)
    n_sub, zero = [], []
    with HdfStackWriter(particles_path, apix=apix, bits=bits) as sub_out, \
            HdfStackWriter(particles3d_path, apix=apix, bits=bits) as vol_out:
        for res in iter_extract(source, geom, coords, params, block=block, progress=progress, workers=workers):
            offset = len(sub_out)
            heads = subtilt_headers(res, coords, geom, file_threed=file_threed, model_id_offset=first_model_id)
            sub_out.append(res.subtilts, heads)
            vol_out.append(res.volumes, particle_headers(res, coords, file_twod=file_twod, first=res.first,
                                                         subtilt_offset=offset, model_id_offset=first_model_id))
            n_sub.append(res.n_subtilts)
            zero.append(res.zero_volume)
        total = len(sub_out)
    return {"n_subtilts": np.concatenate(n_sub) if n_sub else np.zeros(0, np.int64),
            "zero_volume": np.concatenate(zero) if zero else np.zeros(0, bool),
            "n_subtilts_total": int(total), "apix": float(apix)}


def open_tilt_series(path: str | os.PathLike, apix: float | None = None) -> np.ndarray:
    """The raw tilt series ``(ntilt, ny, nx)``: memory-mapped for float32 MRC stacks, read whole for
    EMAN2 HDF (:func:`emflow.io.tiltseries.read_tilt_series`, the one reader of tilt series).
    ``apix``: the pixel size the import stage established (info json ``apix_unbin``, which honours
    ``input.apix_override``); None checks the file's own header."""
    from emflow.io.tiltseries import read_tilt_series

    return read_tilt_series(path, mmap=True, override=apix)[0]


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` particle ranges of the extraction chunk jobs of ``n`` particles (at least one
    chunk, possibly empty, so a tomogram without picks still gets its files)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_bounds: chunk_size must be >= 1, got {chunk_size}")
    return [(a, min(n, a + chunk_size)) for a in range(0, n, chunk_size)] or [(0, 0)]


def gather_extraction(chunks: list[tuple[str, str]], particles_path: str, particles3d_path: str) -> list[int]:
    """Join the chunk files of one tomogram into its subtilt and 3D-particle files, image groups copied
    byte for byte (no decoding, no re-compression) and each particle's ``class_ptcl_idxs`` shifted by
    the subtilts of the chunks before it. Memory: one image at a time.

    Parameters
    ----------
    chunks : list of (subtilt file, particle file)
        In particle order, as written by :func:`extract_to_files` with the final names in the headers.

    Returns
    -------
    list of int
        Subtilt offset of each chunk.
    """
    from emflow.io.hdf import concat_hdf_stacks

    offsets = concat_hdf_stacks(particles_path, [c[0] for c in chunks])
    concat_hdf_stacks(particles3d_path, [c[1] for c in chunks], shift_key="class_ptcl_idxs", shifts=offsets)
    return offsets


def _normalise_edge(vol: np.ndarray) -> np.ndarray:
    """EMAN ``normalize.edgemean`` of one volume (edge-voxel mean 0, σ 1)."""
    edge = np.ones(vol.shape, dtype=bool)
    edge[1:-1, 1:-1, 1:-1] = False
    sd = float(vol.std(dtype=np.float64))
    return ((vol - vol[edge].mean(dtype=np.float64)) / (sd if sd > 0 else 1.0)).astype(np.float32)


# ----------------------------------------------------------------------------- headers
def subtilt_headers(res: ExtractResult, coords_unbin: np.ndarray, geom: TiltGeometry, *,
                    file_threed: str, model_id_offset: int = 0) -> list[dict]:
    """EMAN2 headers of the subtilts (``xform.projection``, ``ptcl_source_coord[_3d]``, ``tilt_id``,
    ``model_id``, ``ctf``, ``file_threed``, ``apix``); ``ptcl_source_coord_3d`` is in unbinned px
    from the tomogram centre, ``ptcl_source_coord`` is ``[x_int, y_int, depth]`` in shrunk px.
    ``model_id`` = ``model_id_offset`` + index into ``coords_unbin``."""
    from emflow.io import ctf_to_dict, transform_to_dict

    heads = []
    for k in range(res.subtilts.shape[0]):
        dx, dy = res.shifts[k]
        h = {
            "xform.projection": transform_to_dict(res.rotations[k], (float(dx), float(dy), 0.0)),
            "ptcl_source_coord": [float(res.crop_xy[k, 0]), float(res.crop_xy[k, 1]), float(res.depth[k])],
            "ptcl_source_coord_3d": [float(v) for v in coords_unbin[res.particle[k]]],
            "tilt_id": int(res.tilt_id[k]),
            "model_id": int(res.particle[k]) + int(model_id_offset),
            "file_threed": file_threed,
            "apix": float(res.apix),
        }
        if res.defocus_um is not None:
            h["ctf"] = ctf_to_dict({"defocus": float(res.defocus_um[k]), "voltage": geom.voltage_kv,
                                    "cs": geom.cs_mm, "ampcont": geom.ampcont, "apix": res.apix})
        heads.append(h)
    return heads


def particle_headers(res: ExtractResult, coords_unbin: np.ndarray, *, file_twod: str, first: int = 0,
                     subtilt_offset: int = 0, model_id_offset: int = 0) -> list[dict]:
    """EMAN2 headers of the 3D particles: ``class_ptcl_src``/``file_twod`` (subtilt file),
    ``class_ptcl_idxs`` (its subtilts' indices there), ``ptcl_source_coord`` (unbinned px from the
    tomogram centre), ``model_id``, ``apix_x/y/z``.

    For a block of :func:`iter_extract`, ``first`` is the index (into ``coords_unbin``) of the
    block's first volume and ``subtilt_offset`` the index in the subtilt file of its first subtilt.
    """
    heads = []
    for j in range(res.volumes.shape[0]):
        i = first + j
        idxs = np.flatnonzero(res.particle == i) + subtilt_offset
        heads.append({
            "class_ptcl_src": file_twod, "file_twod": file_twod,
            "class_ptcl_idxs": [int(v) for v in idxs],
            "ptcl_source_coord": [float(v) for v in coords_unbin[i]],
            "model_id": int(i) + int(model_id_offset),
            "apix_x": float(res.apix), "apix_y": float(res.apix), "apix_z": float(res.apix),
        })
    return heads
