"""Iterative class averaging against reference projections (EMAN ``e2classaverage``, spec §4.4).

All classes are processed together: every step (alignment, scoring, averaging) is one batched
call over the (particle, class) membership list, not a loop over classes. With
:func:`class_average_blocks` the particles are read a block at a time, so the memory of a class-averaging
job is bounded by the block and not by the stack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.ndimage

from emflow._numba import jit
from emflow.errors import InputError
from emflow.spa import align2d, fourier_align, refine2d
from emflow.spa import cmp as cmpmod
from emflow.spa.classify import class_members

AVERAGERS = ("mean", "ctf")
NORMPROCS = (None, "", "none", "normalize.edgemean", "normalize")

#: Wiener constant of the ``ctf`` averager: ``avg = Σ|C|·x / (Σ C² + WIENER_EPS)``
#: (a per-particle SNR of 10 at every frequency).
WIENER_EPS = 0.1


@dataclass
class ClassAverageOptions:
    """e2classaverage options as e2refine passes them (config keys ``spa.class*``)."""

    iter: int = 1
    align: str = "rotate_translate_flip"
    aligncmp: str = "ccc"
    ralign: str | None = "refine"
    raligncmp: str = "ccc"
    averager: str = "ctf"
    cmp: str = "frc:snrweight=1"
    keep: float = 0.8
    keepsig: bool = False
    normproc: str | None = "normalize.edgemean"
    setsfref: bool = False
    automask: bool = False
    maxshift: int | None = None
    apix: float | None = None

    def __post_init__(self):
        if self.averager not in AVERAGERS:
            raise InputError(f"unknown averager {self.averager!r}", source="spa.classaverager", fix=f"use one of {AVERAGERS}")
        if self.normproc not in NORMPROCS:
            raise InputError(f"unknown normproc {self.normproc!r}", source="spa.classnormproc",
                             fix="use normalize.edgemean, normalize or null")
        if self.align.split(":")[0] not in ("rotate_translate_flip", "rotate_translate"):
            raise InputError(f"unknown aligner {self.align!r}", source="spa.classalign")
        if self.ralign not in (None, "", "refine"):
            raise InputError(f"unknown refine aligner {self.ralign!r}", source="spa.classralign")
        if self.keep <= 0:
            raise InputError("classkeep must be > 0", source="spa.classkeep")
        cmpmod.parse_cmp(self.cmp, "spa.classcmp")
        cmpmod.parse_cmp(self.aligncmp, "spa.classaligncmp")
        cmpmod.parse_cmp(self.raligncmp, "spa.classraligncmp")


def normalize_stack(images: np.ndarray, normproc: str | None) -> np.ndarray:
    """``normalize.edgemean`` (border mean to 0, σ to 1) or ``normalize`` (mean 0, σ 1) per image."""
    x = np.asarray(images, np.float32)
    if not normproc or normproc == "none":
        return x.copy()
    if normproc == "normalize.edgemean":
        edge = np.zeros(x.shape[-2:], bool)
        edge[[0, -1], :] = True
        edge[:, [0, -1]] = True
        mean = x[:, edge].mean(axis=1)
    else:
        mean = x.reshape(len(x), -1).mean(axis=1)
    sd = x.reshape(len(x), -1).std(axis=1)
    sd = np.where(sd > 0, sd, 1.0)
    return ((x - mean[:, None, None]) / sd[:, None, None]).astype(np.float32)


def keep_mask(sim: np.ndarray, cls: np.ndarray, keep: float, keepsig: bool) -> np.ndarray:
    """Which members survive EMAN's per-class keep rule (lower ``sim`` is better).

    ``keepsig``: keep ``sim ≤ mean + keep·σ``; else ``sim ≤ sorted(sim)[int(N·keep)]`` (keep ≥ 1
    keeps all). A class never loses all its members: the best one is reinstated.
    """
    ok = np.ones(len(sim), bool)
    for c in np.unique(cls):  # classes are few and the work per class is a sort of a short vector
        sel = np.nonzero(cls == c)[0]
        s = sim[sel]
        if keepsig:
            thr = s.mean() + keep * s.std()
        elif keep >= 1:
            thr = np.inf
        else:
            thr = np.sort(s)[min(len(s) - 1, int(len(s) * keep))]
        k = s <= thr
        if not k.any():
            k[np.argmin(s)] = True
        ok[sel] = k
    return ok


def _edge_correct(avgs: np.ndarray, automask: bool) -> np.ndarray:
    """EMAN's edge treatment of running averages: circle-mean at ``nx/2−g``, Gaussian edge
    (inner radius ``nx/2−g``, width ``g/1.3``), ``g = max(5, nx/12)``; or a 2D automask."""
    n = avgs.shape[-1]
    g = max(5.0, n / 12.0)
    yy, xx = np.indices((n, n))
    r = np.hypot(yy - n // 2, xx - n // 2)
    ring = np.abs(r - (n / 2 - g)) < 1.0
    out = avgs - avgs[:, ring].mean(axis=1)[:, None, None]
    if automask:
        smooth = scipy.ndimage.gaussian_filter(out, sigma=(0, 1.5, 1.5))
        thr = smooth.reshape(len(out), -1).max(axis=1) * 0.15
        mask = scipy.ndimage.binary_dilation(smooth > thr[:, None, None], iterations=2, structure=np.ones((1, 3, 3)))
        mask = scipy.ndimage.gaussian_filter(mask.astype(np.float32), sigma=(0, 1.0, 1.0))
        return (out * mask).astype(np.float32)
    inner = n / 2 - g
    edge = np.where(r <= inner, 1.0, np.exp(-((r - inner) ** 2) / (2 * (g / 1.3) ** 2)))
    return (out * edge).astype(np.float32)


@jit
def _accumulate(images, weights, widx, cls, num, den):  # pragma: no cover - numba
    """``num[cls[j]] += images[j]·weights[widx[j]]`` and ``den[cls[j]] += weights[widx[j]]²`` in member
    order (the order and sums of ``np.add.at``, without its per-element dispatch); ``weights`` empty:
    ``num[cls[j]] += images[j]`` and ``den`` untouched."""
    use_w = weights.shape[0] > 0
    for j in range(len(cls)):
        c = cls[j]
        img = images[j]
        if use_w:
            w = weights[widx[j]]
            for y in range(img.shape[0]):
                for x in range(img.shape[1]):
                    num[c, y, x] += img[y, x] * w[y, x]
                    den[c, y, x] += w[y, x] * w[y, x]
        else:
            for y in range(img.shape[0]):
                for x in range(img.shape[1]):
                    num[c, y, x] += img[y, x]


class _ClassSums:
    """Running per-class sums of aligned members, block by block (same member order and sums as one call):
    ``ctf`` averager (with |CTF|): ``Σ|C|·FT(x)`` and ``Σ C²`` per Fourier pixel; else ``Σ x``."""

    def __init__(self, n_class: int, shape: tuple[int, int], ctf: bool):
        self.shape, self.ctf = shape, ctf
        if ctf:
            self.num = np.zeros((n_class, shape[0], shape[1] // 2 + 1), np.complex128)
            self.den = np.zeros(self.num.shape, np.float64)
        else:
            self.num = np.zeros((n_class,) + shape, np.float64)

    def add(self, aligned: np.ndarray, cls: np.ndarray, use: np.ndarray, ctf_abs: np.ndarray | None,
            member_ptcl: np.ndarray) -> None:
        """Add the ``use``d members: ``aligned`` (m, ny, nx) of classes ``cls`` (m,); ``member_ptcl`` (m,) their
        rows of ``ctf_abs``."""
        members = np.nonzero(use)[0]
        cls = np.asarray(cls, np.int64)[members]
        if self.ctf:
            ft = scipy.fft.rfft2(aligned[members], axes=(-2, -1))
            _accumulate(ft, np.ascontiguousarray(ctf_abs), np.asarray(member_ptcl, np.int64)[members], cls,
                        self.num, self.den)
        else:
            _accumulate(np.ascontiguousarray(aligned[members]), np.zeros((0,) + self.shape, np.float64),
                        np.zeros(len(members), np.int64), cls, self.num, self.num[:0])

    def averages(self, counts: np.ndarray) -> np.ndarray:
        """``(n_class, ny, nx)`` float32; 0 for empty classes."""
        if self.ctf:
            avg = scipy.fft.irfft2(self.num / (self.den + WIENER_EPS), s=self.shape, axes=(-2, -1))
            avg[counts == 0] = 0
            return avg.astype(np.float32)
        return (self.num / np.maximum(counts, 1)[:, None, None]).astype(np.float32)


def _align(moving, refs, mi, ri, opts: ClassAverageOptions, flip: bool, prepared_moving=None, snr=None):
    if prepared_moving is not None:
        # ccc alignment: the Fourier-space aligner (sub-pixel shifts; same transform convention)
        tgt = fourier_align.PreparedTargets(refs, flip=flip)
        r = fourier_align.align_pairs(prepared_moving, tgt, mi, ri, flip=flip, maxshift=opts.maxshift)
        r.pop("ring_sums")
    else:
        r = align2d.rotate_translate_flip(moving, refs, mi, ri, aligncmp=opts.aligncmp, maxshift=opts.maxshift,
                                          flip=flip, apix=opts.apix)
    if opts.ralign:
        r = refine2d.refine(moving, refs, mi, ri, r, cmp=opts.raligncmp, maxshift=opts.maxshift, snr=snr,
                            apix=opts.apix)
    return r


def class_average(particles: np.ndarray, classmx: np.ndarray, projections: np.ndarray,
                  opts: ClassAverageOptions | None = None, *, usefilt: np.ndarray | None = None,
                  ctf_abs: np.ndarray | None = None, particle_snr: np.ndarray | None = None,
                  progress: Callable[[float], None] | None = None):
    """Class averages of all classes of ``classmx`` (spec §4.4), every particle in memory.

    Parameters
    ----------
    particles : (n_ptcl, ny, nx) float32
        Raw (phase-flipped) particles; the final average is built from these.
    classmx : (7, n_ptcl, sep)
        From :func:`emflow.spa.classify.classify`.
    projections : (n_class, ny, nx) float32
        Reference projection of each class.
    usefilt : optional (n_ptcl, ny, nx)
        Filtered copies used for alignment and scoring (EMAN ``--usefilt``).
    ctf_abs : optional (n_ptcl, ny, nx//2+1)
        |CTF| of each particle in rfft layout, for ``averager="ctf"``.
    particle_snr : optional (n_ptcl, ny//2)
        Ring SNR of each particle for ``cmp`` with ``snrweight``.

    Returns
    -------
    averages : (n_class, ny, nx) float32
        Zero images for empty classes (EMAN ``--storebad``).
    info : dict
        ``ptcl_repr`` (n_class,), ``members``/``excluded`` (lists of particle-index arrays),
        ``quality`` (n_class,) mean final score of kept members, and ``result`` — the
        ``cls_result`` matrix (7, n_ptcl, sep): classmx with plane 1 = used flag and planes 2–5
        the final particle→average transform (dx, dy, dalpha, mirror).
    """
    def load(rows):
        return (particles[rows], None if usefilt is None else usefilt[rows],
                None if ctf_abs is None else ctf_abs[rows], None if particle_snr is None else particle_snr[rows])

    return class_average_blocks(len(particles), load, classmx, projections, opts, progress=progress)


def class_average_blocks(n_ptcl: int, load: Callable, classmx: np.ndarray, projections: np.ndarray,
                         opts: ClassAverageOptions | None = None, *, block: int | None = None,
                         progress: Callable[[float], None] | None = None):
    """:func:`class_average` on particles read ``block`` at a time (memory bounded by the block, not by the
    stack; ``None``: all at once, loaded and prepared once for every pass).

    ``load(rows)`` (rows: a contiguous ``np.arange``) returns ``(particles, usefilt or None, ctf_abs or None,
    particle_snr or None)`` of those rows, shaped as :func:`class_average`'s arguments. Every pass
    (``opts.iter`` alignment passes and the final average) re-reads the blocks; members are processed in the
    membership order of one call, so the sums are the same as in memory. Returns as :func:`class_average`.
    """
    opts = opts or ClassAverageOptions()
    n_class = len(projections)
    flip = opts.align.split(":")[0] == "rotate_translate_flip"
    mp, mc = class_members(classmx, n_class)
    block = n_ptcl if not block or block >= n_ptcl else int(block)
    starts = np.arange(0, max(n_ptcl, 1), block)
    member_block = np.searchsorted(starts, mp, side="right") - 1
    blocks = [(int(a), int(min(n_ptcl, a + block)), np.nonzero(member_block == k)[0]) for k, a in enumerate(starts)]
    ccc = cmpmod.parse_cmp(opts.aligncmp)[0] == "ccc"
    kept: dict[int, tuple] = {}

    def prepared(k: int):
        """``(raw, ali, ctf_abs, snr, prepared moving)`` of block ``k`` (kept when it is the only block)."""
        if k in kept:
            return kept[k]
        a, b, _ = blocks[k]
        raw, uf, ca, snr = load(np.arange(a, b))
        raw = normalize_stack(raw, opts.normproc)
        ali = raw if uf is None else normalize_stack(uf, opts.normproc)
        prep = fourier_align.PreparedMoving(ali, align2d.n_angles(ali.shape[-2])) if ccc else None
        out = (raw, ali, ca, snr, prep)
        if len(blocks) == 1:
            kept[k] = out
        return out

    def member_blocks():
        """``(members, their rows in the block, prepared(block))`` of every block that has members."""
        for k, (a, _, sel) in enumerate(blocks):
            if len(sel) or len(blocks) == 1:
                yield sel, mp[sel] - a, prepared(k)

    shape = tuple(projections.shape[-2:])
    refs = np.ascontiguousarray(projections, np.float32)
    use = np.ones(len(mp), bool)
    sim = np.zeros(len(mp))
    par = {k: np.zeros(len(mp)) for k in ("alpha", "tx", "ty", "mirror")}
    steps = opts.iter + 2
    for it in range(opts.iter + 1):
        if it > 0:
            use = keep_mask(sim, mc, opts.keep, opts.keepsig)
        sums = None
        for sel, mi, (_, ali, ca, snr_rows, prep) in member_blocks():
            snr = None if snr_rows is None else snr_rows[mi]
            r = _align(ali, refs, mi, mc[sel], opts, flip, prep, snr)
            aligned = align2d.transform_images(ali, r["alpha"], r["tx"], r["ty"], r["mirror"], index=mi)
            sim[sel] = cmpmod.compare(aligned, refs[mc[sel]], opts.cmp, snr=snr, apix=opts.apix)
            for key in par:
                par[key][sel] = r[key]
            sums = sums or _ClassSums(n_class, shape, opts.averager == "ctf" and ca is not None)
            sums.add(aligned, mc[sel], use[sel], ca, mi)
        counts = np.bincount(mc[use], minlength=n_class)
        avgs = sums.averages(counts) if sums else np.zeros((n_class,) + shape, np.float32)
        refs = _edge_correct(avgs, opts.automask)
        refs[counts == 0] = projections[counts == 0]  # an empty class keeps its projection as reference
        if progress:
            progress((it + 1) / steps)
    use = keep_mask(sim, mc, opts.keep, opts.keepsig)
    # Final: align each average to its projection (no flip), compose, re-average the raw particles.
    full = np.nonzero(np.bincount(mc[use], minlength=n_class) > 0)[0]
    fin = {"alpha": np.zeros(n_class), "tx": np.zeros(n_class), "ty": np.zeros(n_class), "mirror": np.zeros(n_class)}
    if len(full):
        f = align2d.rotate_translate_flip(refs, projections, full, full, aligncmp="ccc", flip=False)
        f = refine2d.refine(refs, align2d.PreparedTargets(projections, flip=False), full, full, f, cmp="ccc")
        for k in fin:
            fin[k][full] = f[k]
    tot = align2d.compose_params(tuple(fin[k][mc] for k in ("alpha", "tx", "ty", "mirror")),
                                 tuple(par[k] for k in ("alpha", "tx", "ty", "mirror")))
    counts = np.bincount(mc[use], minlength=n_class)
    final_sim = np.zeros(len(mp))
    sums = None
    for sel, mi, (raw, _, ca, snr_rows, _) in member_blocks():
        aligned_raw = align2d.transform_images(raw, *(t[sel] for t in tot), index=mi)
        sums = sums or _ClassSums(n_class, shape, opts.averager == "ctf" and ca is not None)
        sums.add(aligned_raw, mc[sel], use[sel], ca, mi)
        final_sim[sel] = cmpmod.compare(aligned_raw, projections[mc[sel]], opts.cmp,
                                        snr=None if snr_rows is None else snr_rows[mi], apix=opts.apix)
    avgs = sums.averages(counts) if sums else np.zeros((n_class,) + shape, np.float32)
    avgs = _finish(avgs, projections, counts, opts)
    result = np.array(classmx, np.float32, copy=True)
    sep_idx = _sep_positions(classmx, mp, mc)
    result[1][:] = 0
    result[1][mp, sep_idx] = use
    result[2][mp, sep_idx], result[3][mp, sep_idx] = tot[1], tot[2]
    result[4][mp, sep_idx], result[5][mp, sep_idx] = tot[0], tot[3]
    quality = np.full(n_class, np.nan)
    ok = counts > 0
    quality[ok] = np.bincount(mc[use], weights=final_sim[use], minlength=n_class)[ok] / counts[ok]
    members = np.split(mp[use], np.cumsum(np.bincount(mc[use], minlength=n_class))[:-1])
    excluded = np.split(mp[~use], np.cumsum(np.bincount(mc[~use], minlength=n_class))[:-1])
    if progress:
        progress(1.0)
    return avgs, {"ptcl_repr": counts, "members": members, "excluded": excluded, "quality": quality, "result": result}


def _sep_positions(classmx, mp, mc):
    """Column (sep index) of each membership entry in classmx."""
    cls = np.asarray(classmx[0]).astype(np.int64)
    return np.argmax(cls[mp] == mc[:, None], axis=1)


def _finish(avgs, projections, counts, opts):
    """Edge mean to 0, then ``normalize.toimage`` to the projection or ``filter.matchto`` (setsfref)."""
    from emflow.filters import radial_profile, set_structure_factor

    out = np.zeros_like(avgs)
    for c in np.nonzero(counts > 0)[0]:  # per non-empty class; each step is vectorised over pixels
        a = avgs[c]
        if opts.setsfref:
            a = set_structure_factor(a, radial_profile(projections[c], "power"))
            a = normalize_stack(a[None], "normalize.edgemean")[0] * projections[c].std()
        else:
            p = projections[c].astype(np.float64)
            da = a - a.mean()
            var = (da * da).sum()
            scale = ((p - p.mean()) * da).sum() / var if var > 0 else 1.0
            a = scale * da + p.mean()
        out[c] = a
    return out


def class_ssnr(averages: np.ndarray, projections: np.ndarray, ptcl_repr: np.ndarray | None = None) -> np.ndarray:
    """Per-class spectral SNR (EMAN header ``class_ssnr``, spec §4.4): the FRC of each class average
    with its projection, smoothed over 3 rings and converted to ``SSNR = f / (1 − f)`` (f clipped to
    [0, 0.999]).

    Returns ``(n_class, b//2)`` float32 (ring 1 … b/2); empty classes (``ptcl_repr == 0``) get zeros.
    """
    from emflow.fsc import frc_per_image

    f = np.asarray(frc_per_image(averages, projections), np.float64)[:, 1:]  # rings 1 … b/2
    pad = np.pad(f, ((0, 0), (1, 1)), mode="edge")
    smooth = (pad[:, :-2] + pad[:, 1:-1] + pad[:, 2:]) / 3.0
    smooth = np.clip(smooth, 0.0, 0.999)
    ssnr = smooth / (1.0 - smooth)
    if ptcl_repr is not None:
        ssnr[np.asarray(ptcl_repr) == 0] = 0.0
    return ssnr.astype(np.float32)
