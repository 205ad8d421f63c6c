"""Reference-free 2D classification of single-particle images (the scheme of EMAN ``e2refine2d``).

Why: at the SNR of real data (≈ 0.1) one particle carries too little low-resolution signal for the
SGD initial model (:mod:`emflow.spa.initial_model`) to assign it a view; EMAN runs
``e2initialmodel`` on the class averages of ``e2refine2d``. Averages of ~100 aligned particles of
the same view have ~100× their SNR; the SGD then runs on the averages, weighted by their counts.

Algorithm (EMAN2 ``programs/e2refine2d.py``: first classes from the data without references, then
iterations of alignment to the class averages, classification and averaging):

1. **Working sampling.** Particles are Fourier-cropped to a box whose pixel is about ``res_a/2.5``,
   Gaussian low-passed at ``res_a`` and edge-mean normalised
   (:func:`emflow.spa.initial_model.preprocess_particles`).
2. **First classes (reference free).** Reference-free alignment (Penczek, Radermacher & Frank
   1992): every particle is aligned (rotate–translate–flip) to the total average, which is then
   recomputed from the aligned particles, ``ref_free_iter`` times; the nearly round first average's
   noise breaks the symmetry and the particles end in one common frame. The aligned images are
   projected on their ``n_pca`` principal components (EMAN ``e2msa``) and split by k-means into
   ``ncls`` classes (EMAN ``e2classifykmeans``). (k-means on EMAN's rotation/translation-invariant
   footprints was tried first; at SNR 0.08 its classes were no more view-coherent than random ones.
   Footprints come from the amplitude spectrum, where phase-flipped images keep the CTF rings:
   a likely reason, not verified.)
3. **Iterations** (``niter``): every particle is aligned to every reference
   (rotate–translate–flip; :func:`emflow.spa.simmx.simmx`, the Fourier-space path of the
   e2refine loop; score ``frc`` over ``minres_a … res_a``) and joins the class it matches best
   (multi-reference alignment: the k-means of aligned images with the alignment inside, EMAN's
   ``e2simmx`` + ``e2classify`` in ``e2refine2d``'s later iterations). Of each class the best
   ``keep`` fraction (by score) is brought into the reference frame
   (:func:`emflow.spa.align2d.transform_images`) and averaged; each average is re-centred on its
   centre of mass (EMAN ``xform.centerofmass``), normalised and soft-masked to become the next
   reference. A class left with fewer than ``minsize`` particles is re-seeded by splitting the
   largest class (its worst-matching half goes to the empty one).
4. **Result.** The final averages are computed from the *unfiltered* particles at their own box
   (shifts scaled), with the member counts: the weights of the SGD.

Measured limits (simulated 70S ribosome, c1, CTF 1–2.5 µm phase-flipped; *view coherence*: the
mean fraction of a class's members within 20° of the class's principal view axis, random classes
≈ 0.1; tests/test_spa_classify2d.py): box 32 (10.5 Å/px), 1,000 images, 24 classes, 4 iterations:
SNR 1 → 0.61, SNR 0.3 → 0.13, SNR 0.08 → 0.098 (random 0.098). With k-means on invariants as the
first classes, SNR 0.08 was at chance too (box 32 at 25 Å; box 64 at 15 Å with soft assignment,
2,000 images); so was the reference-free init with soft assignment over all 16 classes (box 64 at
15 Å, 2,000 images, 8 iterations: 0.083, random 0.072). Yet assigning 300 such images (SNR 0.08) to the *true* projections (15° grid) puts
43 % within 20° of their true view at box 64 / 15 Å (12 % at box 32 / 25 Å; chance 6 %): the
information is there at box 64, and this multi-reference scheme does not bootstrap from it. A
likelihood-weighted scheme (soft over classes *and* poses, many iterations, as RELION/cryoSPARC)
is the next step.

Conventions: particles ``(n, b, b)`` ``[y, x]``, protein white, phase-flipped (or CTF-free),
centred on ``b//2``; transforms as :mod:`emflow.spa.align2d`. Cost per iteration: one simmx of
``n × ncls`` pairs at the working box and one batched transform of the ``n`` particles; no Python
loop over particles (the averaging is one ``np.add.reduceat`` over class-sorted images).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import scipy.cluster.vq

from emflow import fourier, masks
from emflow.errors import InputError
from emflow.spa import align2d
from emflow.spa.simmx import SimmxOptions, simmx

__all__ = ["Classify2DParams", "Classify2DResult", "classify2d", "class_sums"]


@dataclasses.dataclass
class Classify2DParams:
    """Parameters of :func:`classify2d` (config keys ``spa_initial_model.classify2d.*``).

    Attributes
    ----------
    ncls : int
        Number of classes (EMAN ``--ncls``); at most ``n // minsize``.
    niter : int
        Alignment–classification–averaging iterations after the first classes (EMAN ``--iter``).
    res_a : float
        Resolution (Å) of the alignment: low-pass of particles and references, upper end of ``frc``.
    minres_a : float
        Lower end (Å) of the ``frc`` band.
    keep : float
        Fraction of each class (best scores) in its average (EMAN ``--keep``; 0 < keep ≤ 1).
    minsize : int
        Classes with fewer particles are re-seeded from the largest class.
    n_pca : int
        Principal components of the invariants for the first k-means (EMAN ``--nbasisfp``).
    mask_radius_a : float or None
        Soft circular mask radius (Å) of the references; None: ``0.4·b·apix``.
    maxshift_px : float or None
        Largest shift (px of the particles' box) of the alignment; None: a fifth of the box.
    cmp : str
        Particle–reference score that picks the class: ``frc`` (EMAN's, rings weighted by their
        pixel count over ``minres_a … res_a``) or ``ccc`` (rings weighted by power: a matched filter).
    ntop : int
        Soft assignment of the iterations: each particle joins the averages of its ``ntop`` best
        classes with weights ``exp(−(s_j − s_1)/(softness·σ))`` (``σ``: the spread of its scores over
        the classes); 1: hard (EMAN). The final classes are always hard.
    softness : float
        Width of the soft assignment in units of ``σ``.
    ref_free_iter : int
        Iterations of the reference-free alignment of all particles to their total average that
        precedes the first MSA + k-means.
    """

    ncls: int = 48
    niter: int = 6
    res_a: float = 25.0
    minres_a: float = 200.0
    keep: float = 0.9
    minsize: int = 5
    n_pca: int = 10
    mask_radius_a: float | None = None
    maxshift_px: float | None = None
    cmp: str = "frc"
    ntop: int = 1
    softness: float = 1.0
    ref_free_iter: int = 3

    def check(self) -> None:
        """Raise :class:`InputError` (source ``spa_initial_model.classify2d.<key>``) on a bad value."""
        bad = [(k, v) for k, v, ok in (
            ("ncls", self.ncls, self.ncls >= 1), ("niter", self.niter, self.niter >= 0),
            ("res_a", self.res_a, self.res_a > 0), ("minres_a", self.minres_a, self.minres_a > self.res_a),
            ("keep", self.keep, 0 < self.keep <= 1), ("minsize", self.minsize, self.minsize >= 1),
            ("n_pca", self.n_pca, self.n_pca >= 1), ("ntop", self.ntop, self.ntop >= 1),
            ("softness", self.softness, self.softness > 0),
            ("ref_free_iter", self.ref_free_iter, self.ref_free_iter >= 1), ("cmp", self.cmp, self.cmp in ("frc", "ccc")),
            ("mask_radius_a", self.mask_radius_a, self.mask_radius_a is None or self.mask_radius_a > 0),
            ("maxshift_px", self.maxshift_px, self.maxshift_px is None or self.maxshift_px >= 0)) if not ok]
        if bad:
            k, v = bad[0]
            raise InputError(f"invalid 2D-classification parameter {k} = {v!r}",
                             source=f"spa_initial_model.classify2d.{k}",
                             fix="see config/schema.yaml (section spa_initial_model.classify2d) for the allowed range")


@dataclasses.dataclass
class Classify2DResult:
    """Output of :func:`classify2d`.

    Attributes
    ----------
    averages : ndarray, float32, (k, b, b)
        Class averages at the particles' box and pixel size (protein white, edge-mean normalised),
        largest class first; empty classes are dropped.
    counts : ndarray, int, (k,)
        Particles in each average.
    classes : ndarray, int, (n,)
        Class of every particle (index into ``averages``; −1: excluded by ``keep``).
    alpha, tx, ty, mirror : ndarray, float64, (n,)
        Transform bringing each particle onto its class average (degrees, px of the particles' box, 0/1).
    score : ndarray, float64, (n,)
        Its ``frc`` score against the final references (lower is better).
    history : list of dict
        Per iteration: ``changed`` (fraction of particles that changed class), ``score`` (mean
        best score), ``seconds`` (alignment ``align_s`` and averaging ``average_s``).
    working_box : int
    working_apix : float
    """

    averages: np.ndarray
    counts: np.ndarray
    classes: np.ndarray
    alpha: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    mirror: np.ndarray
    score: np.ndarray
    history: list
    working_box: int
    working_apix: float


def class_sums(aligned: np.ndarray, classes: np.ndarray, k: int,
               weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sums ``(k, b, b)`` float32 and counts ``(k,)`` of ``aligned`` images by class (``−1`` ignored):
    one ``np.add.reduceat`` over the class-sorted stack. With ``weights`` ``(n,)`` the images are
    weighted and the counts are sums of weights (float)."""
    use = np.nonzero(classes >= 0)[0]
    order = use[np.argsort(classes[use], kind="stable")]
    n_in = np.bincount(classes[use], minlength=k)
    counts = n_in if weights is None else np.bincount(classes[use], weights=weights[use], minlength=k)
    sums = np.zeros((k,) + aligned.shape[1:], np.float64)
    if len(order):
        present = np.nonzero(n_in)[0]
        starts = np.concatenate([[0], np.cumsum(n_in[present])[:-1]])
        x = aligned[order].astype(np.float64)
        if weights is not None:
            x *= weights[order][:, None, None]
        sums[present] = np.add.reduceat(x, starts, axis=0)
    return sums.astype(np.float32), counts


def _centre(avgs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift every average so that its positive, masked density's centre of mass is at ``b//2``."""
    w = np.maximum(avgs, 0) * mask
    b = avgs.shape[-1]
    tot = w.sum(axis=(1, 2))
    idx = np.arange(b, dtype=np.float64)
    cy = np.divide((w.sum(axis=2) * idx).sum(axis=1), tot, out=np.full(len(avgs), b // 2, float), where=tot > 0)
    cx = np.divide((w.sum(axis=1) * idx).sum(axis=1), tot, out=np.full(len(avgs), b // 2, float), where=tot > 0)
    sh = np.stack([b // 2 - cx, b // 2 - cy], axis=1)
    return np.asarray(fourier.shift(avgs, sh), np.float32)


def _normalise(avgs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Edge mean 0 (outside the mask), σ 1 inside, times the mask."""
    out = avgs - (avgs * (1 - mask)).sum(axis=(1, 2), keepdims=True) / max(float((1 - mask).sum()), 1.0)
    sd = np.sqrt(((out * mask) ** 2).sum(axis=(1, 2), keepdims=True) / mask.sum())
    return (out / np.where(sd > 0, sd, 1) * mask).astype(np.float32)


def _mask(b: int, apix: float, radius_a: float | None) -> np.ndarray:
    r = 0.4 * b if radius_a is None else min(radius_a / apix, b / 2 - 1)
    return masks.soft_circle(b, r, 0.06 * b).astype(np.float32)


def _soft_sums(pp, mx, k, keep_cls, ntop, softness):
    """Soft class sums: every kept particle joins its ``ntop`` best classes, each in that class's
    frame, with weights ``exp(−(s_j − s_1)/(softness·σ))`` summing to 1 (``σ``: spread of its scores
    over the classes). Returns ``(sums, weight totals)``."""
    sc = mx[0].astype(np.float64)
    m = min(ntop, k)
    top = np.argsort(sc, axis=1, kind="stable")[:, :m]
    rows = np.arange(len(sc))[:, None]
    s = sc[rows, top]
    w = np.exp(-(s - s[:, :1]) / np.maximum(softness * sc.std(axis=1, keepdims=True), 1e-12))
    w /= w.sum(axis=1, keepdims=True)
    w[keep_cls < 0] = 0.0
    r, c = np.nonzero(w > 0.01)
    j = top[r, c]
    aligned = align2d.transform_images(pp, mx[3][r, j], mx[1][r, j], mx[2][r, j], mx[4][r, j], index=r)
    return class_sums(aligned, j, k, weights=w[r, c])


def _align(pp, refs, opts):
    """Best class of every particle and the transform onto it: simmx (particles × references); and
    the whole matrix."""
    mx = simmx(pp, refs, opts)
    best = np.argmin(mx[0], axis=1)
    rows = np.arange(len(pp))
    return best, mx[0][rows, best].astype(np.float64), mx[3][rows, best], mx[1][rows, best], mx[2][rows, best], \
        mx[4][rows, best], mx


def _keep(classes, score, keep, k):
    """``classes`` with the worst ``1 − keep`` of every class set to −1 (rank within the class)."""
    if keep >= 1:
        return classes
    order = np.lexsort((score, classes))
    counts = np.bincount(classes, minlength=k)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(classes), np.int64)
    rank[order] = np.arange(len(classes)) - np.repeat(start, counts)
    out = classes.copy()
    out[rank >= np.ceil(keep * counts[classes])] = -1
    return out


def _reference_free_alignment(pp, mask, opts, n_iter):
    """Align every particle to the evolving total average (Penczek et al. 1992): the average of the
    centred particles is nearly round; its noise breaks the symmetry and, iterated, every particle
    is brought into one common frame. Returns ``(alpha, tx, ty, mirror)`` each ``(n,)``."""
    n = len(pp)
    ref = _normalise(_centre(pp.mean(axis=0, keepdims=True), mask), mask)
    zero = np.zeros(n)
    par = (zero, zero, zero, zero)
    for _ in range(n_iter):
        mx = simmx(pp, ref, opts)
        par = (mx[3][:, 0], mx[1][:, 0], mx[2][:, 0], mx[4][:, 0])
        ref = _normalise(_centre(align2d.transform_images(pp, *par).mean(axis=0, keepdims=True), mask), mask)
    return par


def _msa_kmeans(aligned, mask, k, n_pca, rng):
    """k-means (``k`` classes) on the first ``n_pca`` principal components of the masked aligned
    images (EMAN ``e2msa`` + ``e2classifykmeans``): the projection on a few eigenimages averages the
    noise of every pixel away."""
    x = (aligned * mask).reshape(len(aligned), -1).astype(np.float64)
    x -= x.mean(axis=0)
    sub = x[rng.choice(len(x), min(len(x), 3000), replace=False)]
    _, _, vt = np.linalg.svd(sub, full_matrices=False)
    z = x @ vt[: min(n_pca, len(vt))].T
    _, lab = scipy.cluster.vq.kmeans2(z, k, minit="++", seed=rng)
    return lab.astype(np.int64)


def _reseed(classes, score, k, minsize):
    """Give each class under ``minsize`` the worse-scoring half of the then-largest class."""
    classes = classes.copy()
    for c in np.nonzero(np.bincount(classes, minlength=k) < minsize)[0]:
        counts = np.bincount(classes, minlength=k)
        big = int(np.argmax(counts))
        if counts[big] < 2 * minsize:
            break
        mem = np.nonzero(classes == big)[0]
        worse = mem[np.argsort(score[mem], kind="stable")[len(mem) // 2:]]
        classes[worse] = c
    return classes


def classify2d(particles: np.ndarray, apix: float, params: Classify2DParams | None = None,
               rng: np.random.Generator | None = None,
               progress: Callable[[float], None] | None = None) -> Classify2DResult:
    """Reference-free 2D classes of ``particles`` ``(n, b, b)`` at ``apix`` Å/px (module docstring)."""
    import time

    from emflow.spa.initial_model import particle_stack, preprocess_particles, working_box

    p = params or Classify2DParams()
    p.check()
    rng = np.random.default_rng(0) if rng is None else rng
    particles = particle_stack(particles)
    n, b = len(particles), particles.shape[-1]
    if p.res_a < 2 * apix:
        raise InputError(f"classify2d.res_a = {p.res_a} Å is finer than Nyquist ({2 * apix:.2f} Å)",
                         source="spa_initial_model.classify2d.res_a", fix=f"set res_a ≥ {2 * apix:.1f}")
    k = max(1, min(p.ncls, n // max(1, p.minsize)))
    bw, apix_w = working_box(b, apix, p.res_a)
    pp = preprocess_particles(particles, bw, apix_w, p.res_a)
    mask_w = _mask(bw, apix_w, p.mask_radius_a)
    ms = math.ceil((b / 5.0 if p.maxshift_px is None else p.maxshift_px) * bw / b)
    cmp = f"frc:minres={p.minres_a:g}:maxres={p.res_a:g}" if p.cmp == "frc" else "ccc"
    opts = SimmxOptions(align="rotate_translate_flip", aligncmp="ccc", cmp=cmp, apix=apix_w, maxshift=ms)
    total = p.niter + 2
    history = []

    # 2. first classes: reference-free alignment to the total average, MSA + k-means of the aligned images
    t0 = time.perf_counter()
    alpha, tx, ty, mirror = _reference_free_alignment(pp, mask_w, opts, p.ref_free_iter)
    aligned = align2d.transform_images(pp, alpha, tx, ty, mirror)
    cls = _msa_kmeans(aligned, mask_w, k, p.n_pca, rng) if k > 1 else np.zeros(n, np.int64)
    cls = _reseed(cls, rng.random(n), k, p.minsize)
    score = np.zeros(n)
    t1 = time.perf_counter()
    sums, counts = class_sums(aligned, cls, k)
    refs = _normalise(_centre(sums / np.maximum(counts, 1)[:, None, None], mask_w), mask_w)
    history.append({"iteration": 0, "changed": 1.0, "score": float(score.mean()), "align_s": t1 - t0,
                    "average_s": time.perf_counter() - t1})
    if progress:
        progress(1 / total)

    # 3. iterations: multi-reference alignment, best class, averages of the best `keep`
    for it in range(1, p.niter + 1):
        t0 = time.perf_counter()
        new, score, alpha, tx, ty, mirror, mx = _align(pp, refs, opts)
        new = _reseed(new, score, k, p.minsize)
        changed = float((new != cls).mean())
        cls = new
        t1 = time.perf_counter()
        if p.ntop > 1:
            sums, counts = _soft_sums(pp, mx, k, _keep(cls, score, p.keep, k), p.ntop, p.softness)
        else:
            sums, counts = class_sums(align2d.transform_images(pp, alpha, tx, ty, mirror), _keep(cls, score, p.keep, k),
                                      k)
        refs = _normalise(_centre(sums / np.maximum(counts, 1)[:, None, None], mask_w), mask_w)
        history.append({"iteration": it, "changed": changed, "score": float(score.mean()), "align_s": t1 - t0,
                        "average_s": time.perf_counter() - t1})
        if progress:
            progress((it + 1) / total)

    # final assignment against the last references, averages of the unfiltered particles at box b
    t0 = time.perf_counter()
    cls, score, alpha, tx, ty, mirror, _ = _align(pp, refs, opts)
    t1 = time.perf_counter()
    tx, ty = tx * (b / bw), ty * (b / bw)
    kept = _keep(cls, score, p.keep, k)
    sums, counts = class_sums(align2d.transform_images(particles, alpha, tx, ty, mirror), kept, k)
    mask_b = _mask(b, apix, p.mask_radius_a)
    avgs = sums / np.maximum(counts, 1)[:, None, None]
    avgs = avgs - (avgs * (1 - mask_b)).sum(axis=(1, 2), keepdims=True) / max(float((1 - mask_b).sum()), 1.0)
    history.append({"iteration": p.niter + 1, "changed": 0.0, "score": float(score.mean()), "align_s": t1 - t0,
                    "average_s": time.perf_counter() - t1})
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    remap = np.full(k, -1, np.int64)
    remap[order] = np.arange(len(order))
    if progress:
        progress(1.0)
    return Classify2DResult(averages=np.ascontiguousarray(avgs[order], np.float32), counts=counts[order],
                            classes=np.where(kept >= 0, remap[np.maximum(kept, 0)], -1), alpha=alpha, tx=tx, ty=ty,
                            mirror=mirror, score=score, history=history, working_box=bw, working_apix=apix_w)
