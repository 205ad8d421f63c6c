"""Per-subtilt translation / rotation / defocus refinement with neighbour smoothing
(e2spt_subtlt_local, spec §3.8, §7 items 11–12).

For subtilt ``j`` (particle ``i``, tilt ``τ``) the neighbourhood is the ``smooth_n`` particles of
the same tomogram (``table.group``) nearest to ``i`` (itself included) that have a subtilt on
tilt ``τ``; positions are ``coord + t`` (px), weights ``exp(−d/smooth)``. One shared correction
is fitted to all of them, maximising ``Σ_m w_m·c_m / Σ_m w_m`` where ``c_m`` is the FRC of
neighbour ``m``'s subtilt with its model (see :mod:`emflow.sta.spt_refine`), averaged over shells
``minp ≤ r < maxp``:

* ``t``: a 2D shift ``δ`` added to every neighbour's model shift (|δ| ≤ maxshift);
* ``r``: a small rotation ``D`` (rotation vector, deg) about particle ``i`` in the tilt frame plus
  ``δ``: neighbour ``m`` gets rotation ``D·M_m`` and extra shift ``(D q_m − q_m)_xy`` where
  ``q_m = P_τ (c_m − c_i)`` is its offset in the tilt frame;
* ``d``: one defocus offset δ (µm, added to each subtilt's own depth-corrected flip defocus ``df_m``)
  per tilt of a tomogram: by default the neighbourhood is every particle of the tomogram on that tilt
  (weights 1), because a recorded-defocus error belongs to the tilt image. Phase-flipped data carry
  ``CTF(df_true)·sign CTF(df_m)``, so ``y_p = Re(S_p D̄_p)·sign CTF(df_m)`` ∝ ``CTF(df_true)``; δ maximises
  the Cauchy–Schwarz normalised correlation ``Σ u·y·C_δ / sqrt(Σ u·|S|²·C_δ²)`` (``C_δ = CTF(df_m + δ)``,
  ``u`` = 1/data power of the pixel's shell) over |δ| ≤ ``d_range_um`` (grid 0.01 µm, parabolic peak).
  One free gain for all shells: per-shell gains would leave only the CTF signs. Shells below
  ``d_minres_a`` (CTF nearly defocus-independent, model amplitude off the one-gain model) are left out.
  EMAN correlates sign curves only (spec §3.8); on the demo that recovered nothing (corr 0.10).
  Because each subtilt is in its own half map the score is pulled toward the flip defocus
  (measured slope ≈ 0.8 on the demo).

The correction is stored for the central subtilt only (``drot ← D·drot``, ``dshift += δ``).

Speed: the shell-averaged FRC is linear in the model's phase ramp, so for fixed rotations the
score of any shift δ is ``Re Σ_p G_p exp(−2πi δ·q_p/b)`` with one precomputed vector ``G`` over
the annulus pixels; the shift is found by a 1-px grid then Nelder–Mead on that closed form.
Model slices come from the reference Fourier-cropped to the smallest box holding the annulus; only the
annulus pixels are sampled (:func:`_annulus_slices`, the trilinear interpolation of
:meth:`emflow.projection.VolumeProjector.slices_ft`), and the rotation search's cost samples, shifts
and correlates them in one serial pass (:func:`_hood_frc`): no full slices, no per-pixel exponentials
(the phase ramp is separable), no thread-pool hand-offs for a handful of slices.
"""

from __future__ import annotations

from typing import Callable

import numba
import numpy as np
import scipy.optimize

from emflow import fourier
from emflow._numba import jit
from emflow.ctf import CTF, _chi
from emflow.geometry import rotvec_to_matrix
from emflow.projection import VolumeProjector
from emflow.sta import align3d
from emflow.sta.spt_refine import ParticleTable, RefineState

__all__ = ["neighbours", "refine_subtilts"]


def neighbours(table: ParticleTable, state: RefineState, row: int, smooth_n: int, smooth: float):
    """Subtilt rows of the ``smooth_n`` nearest particles on the same tilt (self first), weights and
    offsets ``(c_m + t_m) − (c_i + t_i)`` (k, 3) px."""
    i = table.ptcl[row]
    same = np.flatnonzero((table.tilt_id == table.tilt_id[row]) & (table.group[table.ptcl] == table.group[i]))
    pos = table.coord + state.shift
    d = np.linalg.norm(pos[table.ptcl[same]] - pos[i], axis=1)
    order = np.argsort(d, kind="stable")[:max(1, int(smooth_n))]
    return same[order], np.exp(-d[order] / float(smooth)), pos[table.ptcl[same[order]]] - pos[i]


class _Annulus:
    """Half-plane Fourier pixels with minp ≤ round(|k|) < maxp; pixel ``p`` sits at frequency
    ``(qx, qy)`` (cycles per ``b`` box) and in shell ``shell[p]`` (index − minp)."""

    def __init__(self, b: int, minp: int, maxp: int):
        ky, kx = np.meshgrid(np.fft.fftfreq(b, 1.0 / b), np.arange(b // 2 + 1), indexing="ij")
        r = np.rint(fourier.radius_grid((b, b)) * b).astype(int)
        keep = (r >= minp) & (r < maxp) & ~((kx == 0) & (ky < 0))
        rows, cols = np.nonzero(keep)
        self.qx = kx[rows, cols].astype(int)
        self.qy = ky[rows, cols].astype(int)
        self.shell = r[rows, cols] - minp
        self.nshell = maxp - minp
        self.minp = minp
        self.b = b
        self.npix = self.qx.size

    def take(self, F):
        """Annulus pixels of rfft-layout arrays (..., s, s//2+1) of any size s > 2·maxp."""
        s = F.shape[-2]
        return F[..., self.qy % s, self.qx]

    def shell_sum(self, v):
        """Σ over each shell of the last axis; v (k, npix) real → (k, nshell)."""
        k = v.shape[0]
        idx = (np.arange(k)[:, None] * self.nshell + self.shell[None]).ravel()
        return np.bincount(idx, v.ravel(), minlength=k * self.nshell).reshape(k, self.nshell)

    def phase(self, shifts):
        """exp(−2πi s·q/b) for shifts (k, 2) px → (k, npix)."""
        # separable: exp(−2πi sx·qx/b)·exp(−2πi sy·qy/b), 2(b+1) exponentials per shift instead of npix
        shifts = np.asarray(shifts, np.float64)
        h = self.b // 2
        e = np.exp(-2j * np.pi * shifts[:, :, None] * np.arange(-h, h + 1) / self.b)  # (k, 2, b+1)
        return e[:, 0, self.qx + h] * e[:, 1, self.qy + h]

    def frc_shells(self, S, D, shifts):
        """Per-shell FRC of model slices S (k,npix) moved by shifts (k,2) px against data D (k,npix)."""
        cross = self.shell_sum((S * self.phase(shifts) * np.conj(D)).real)
        den = np.sqrt(self.shell_sum(np.abs(S) ** 2) * self.shell_sum(np.abs(D) ** 2))
        return np.where(den > 0, cross / np.where(den > 0, den, 1), 0.0)

    def score_vector(self, S, D, shifts, w):
        """``G`` (npix,) with ``Re Σ G·phase(δ)`` = weighted mean over neighbours and shells of the FRC
        when every model is moved by ``shifts + δ``."""
        den = np.sqrt(self.shell_sum(np.abs(S) ** 2) * self.shell_sum(np.abs(D) ** 2))
        inv = np.where(den > 0, 1.0 / np.where(den > 0, den, 1), 0.0)[:, self.shell]
        scale = (w / (w.sum() * self.nshell))[:, None] * inv
        return (S * self.phase(shifts) * np.conj(D) * scale).sum(axis=0)

    def best_shift(self, G, maxshift):
        """δ (2,) maximising ``Re Σ G·phase(δ)`` within |δ| ≤ maxshift: integer grid by one FFT, then Nelder–Mead."""
        full = np.zeros((self.b, self.b), np.complex128)
        np.add.at(full, (self.qy % self.b, self.qx % self.b), G)
        ccf = np.fft.fft2(full).real  # ccf[y, x] = Re Σ G exp(−2πi (x qx + y qy)/b)
        g = np.fft.fftfreq(self.b, 1.0 / self.b)
        dy, dx = np.meshgrid(g, g, indexing="ij")
        ccf[np.hypot(dx, dy) > maxshift] = -np.inf
        k = int(np.argmax(ccf))
        x0 = np.array([dx.flat[k], dy.flat[k]])
        best = float(ccf.flat[k])

        def cost(x):
            return 1.0 if np.hypot(*x) > maxshift else -float((self.phase(x[None]) @ G).real[0])

        res = scipy.optimize.minimize(cost, x0, method="Nelder-Mead",
                                      options={"xatol": 0.01, "fatol": 1e-7, "maxiter": 200,
                                               "initial_simplex": x0 + np.array([[0, 0], [0.5, 0], [0, 0.5]])})
        return (res.x, -float(res.fun)) if -res.fun >= best else (x0, best)


@jit
def _annulus_slices(vft, scale, rots, qx, qy, out):
    """Model values at the annulus pixels only: ``out[m, p]`` = the trilinear sample of the centred
    half-volume FT ``vft`` (N, N, N//2+1) at ``rots[m]ᵀ (qx[p], qy[p], 0)·scale``, the very arithmetic of
    :func:`emflow.projection._extract_slices` (so ``out`` equals ``ann.take(slices_ft(rots, size))``,
    ``scale = N / size``). rots float64 (k, 3, 3); out complex64 (k, npix). Serial."""
    N = vft.shape[0]
    c = N // 2
    nxh = vft.shape[2]
    for m in range(rots.shape[0]):
        R = rots[m]
        for p in range(qx.shape[0]):
            out[m, p] = _sample(vft, R, qx[p], qy[p], scale, N, c, nxh)


@jit
def _sample(vft, R, kx, fy, scale, N, c, nxh):
    """One trilinear sample of ``vft`` at ``Rᵀ (kx, fy, 0)·scale`` (``_extract_slices``' arithmetic)."""
    px = (R[0, 0] * kx + R[1, 0] * fy) * scale
    py = (R[0, 1] * kx + R[1, 1] * fy) * scale
    pz = (R[0, 2] * kx + R[1, 2] * fy) * scale
    conj = False
    if px < 0.0:
        px, py, pz, conj = -px, -py, -pz, True
    x0 = int(np.floor(px))
    y0 = int(np.floor(py)) + c
    z0 = int(np.floor(pz)) + c
    fx = px - np.floor(px)
    fy_ = py - np.floor(py)
    fz = pz - np.floor(pz)
    acc_r = 0.0
    acc_i = 0.0
    # |p| < N/2 (annulus inside the slice radius) so z0, y0 are in [0, N) and +1 wraps at most once
    # (the DFT is periodic: +N/2 is -N/2); same indices as ``% N``, without integer divisions
    for dz in range(2):
        zz = z0 + dz
        if zz >= N:
            zz -= N
        wz = fz if dz else 1.0 - fz
        for dy in range(2):
            yy = y0 + dy
            if yy >= N:
                yy -= N
            wzy = wz * (fy_ if dy else 1.0 - fy_)
            for dx in range(2):
                xx = x0 + dx
                if xx >= nxh:
                    continue
                w = wzy * (fx if dx else 1.0 - fx)
                v = vft[zz, yy, xx]
                acc_r += w * v.real
                acc_i += w * v.imag
    if conj:
        acc_i = -acc_i
    return np.complex64(complex(acc_r, acc_i))


@jit
def _hood_frc(vft, scale, rots, shifts, qx, qy, shell, nshell, b, D, dpow, frc):
    """Per-shell FRC ``frc[m, s]`` of neighbour ``m``'s model (``_annulus_slices`` of ``rots[m]``, moved by
    ``shifts[m]`` px: × exp(−2πi s·q/b)) against its data ``D[m]`` (k, npix) complex128, whose per-shell
    power is ``dpow[m]`` (k, nshell). Same definition as :meth:`_Annulus.frc_shells` (0 where a shell has
    no power); the phase ramp is the product of two 1D ramps (|q| ≤ b/2). Serial."""
    N = vft.shape[0]
    c = N // 2
    nxh = vft.shape[2]
    h = b // 2
    ex = np.empty(2 * h + 1, np.complex128)
    ey = np.empty(2 * h + 1, np.complex128)
    cross = np.zeros(nshell)
    spow = np.zeros(nshell)
    for m in range(rots.shape[0]):
        for u in range(2 * h + 1):
            ex[u] = np.exp(-2j * np.pi * shifts[m, 0] * (u - h) / b)
            ey[u] = np.exp(-2j * np.pi * shifts[m, 1] * (u - h) / b)
        cross[:] = 0.0
        spow[:] = 0.0
        R = rots[m]
        for p in range(qx.shape[0]):
            sv = complex(_sample(vft, R, qx[p], qy[p], scale, N, c, nxh))
            sr, si = sv.real, sv.imag
            spow[shell[p]] += sr * sr + si * si
            e = ex[qx[p] + h] * ey[qy[p] + h]
            d = D[m, p]
            # Re(sv·e·conj d)
            er = sr * e.real - si * e.imag
            ei = sr * e.imag + si * e.real
            cross[shell[p]] += er * d.real + ei * d.imag
        for sh in range(nshell):
            den = np.sqrt(spow[sh] * dpow[m, sh])
            frc[m, sh] = cross[sh] / den if den > 0 else 0.0


def ctf_correlation(y, pw, s2, df_um, deltas, ctf: CTF, batch: int = 32):
    """Numerator and denominator of the normalised CTF correlation of each subtilt over trial offsets.

    y, pw : (k, npix) float — sign-corrected, noise-weighted correlation terms and model power per pixel;
    s2 : (npix,) squared frequency, 1/Å²; df_um : (k,) flip defocus, µm (underfocus positive);
    deltas : (n,) trial offsets, µm. Returns num, den (k, n): ``Σ_p y·C``, ``Σ_p pw·C²`` with
    ``C = −sin χ(df + δ)`` (no envelope: it is absorbed by the free gain).
    """
    k = y.shape[0]
    num, den = np.empty((k, deltas.size)), np.empty((k, deltas.size))
    for a in range(0, k, batch):  # (batch, n, npix) CTF block bounded in memory
        C = -np.sin(_chi(ctf, s2[None, None], (df_um[a:a + batch, None, None] + deltas[None, :, None]) * 1e4))
        num[a:a + batch] = np.matmul(C, y[a:a + batch, :, None])[..., 0]
        den[a:a + batch] = np.matmul(C * C, pw[a:a + batch, :, None])[..., 0]
    return num, den


def parabolic_peak(x, f) -> float:
    """``x`` at the maximum of ``f`` sampled on the uniform grid ``x``, refined by a parabola through the
    top three samples (the grid value at an edge or when the top is not a strict maximum)."""
    k = int(np.argmax(f))
    if 0 < k < len(x) - 1:
        a, b, c = f[k - 1:k + 2]
        curv = a - 2 * b + c
        if curv < 0:
            return float(x[k] + 0.5 * (a - c) / curv * (x[1] - x[0]))
    return float(x[k])


def _defocus_terms(ann: _Annulus, S, D, df_um, s2, ctf: CTF, dmin: int):
    """Per-subtilt terms of the ``d`` score on annulus shells ≥ ``dmin`` (module docstring):
    ``y = u·Re(S D̄)·sign CTF(df)`` and ``pw = u·|S|²`` (k, npix'), ``u`` = 1/mean |D|² of the shell
    (data noise-dominated at subtilt SNR), and the pixels' s2 (npix',)."""
    cnt = np.maximum(np.bincount(ann.shell, minlength=ann.nshell), 1)
    power = ann.shell_sum(np.abs(D) ** 2) / cnt
    u = np.where(power > 0, 1.0 / np.where(power > 0, power, 1), 0.0)[:, ann.shell]
    sel = ann.shell >= dmin
    flip = np.sign(-np.sin(_chi(ctf, s2[None, sel], df_um[:, None] * 1e4)))  # the flip applied at extraction
    y = (S[:, sel] * np.conj(D[:, sel])).real * u[:, sel] * flip
    return y, (np.abs(S[:, sel]) ** 2) * u[:, sel], s2[sel]


def refine_subtilts(table: ParticleTable, state: RefineState, rows, images: Callable, refs, apix: float,
                    mode: str, maxres_a: float, minres_a: float | None = None, smooth: float = 100.0,
                    smooth_n: int = 8, maxshift_px: float | None = None, microscope: dict | None = None,
                    progress: Callable[[float], None] | None = None, d_whole_tilt: bool = True,
                    d_minres_a: float = 40.0, d_range_um: float = 0.5) -> RefineState:
    """Refine the subtilts ``rows`` (mode ``"t"``, ``"r"`` or ``"d"``); returns an updated copy.

    ``images(rows)`` must serve any subtilt of the tomograms involved (neighbours too).
    ``maxshift_px`` (px, particle box) bounds each iteration's shift correction (default box/6);
    ``microscope`` (voltage_kv, cs_mm, ampcont) is needed for ``d``; ``d_whole_tilt`` False uses the
    ``smooth_n`` neighbourhood instead of the whole tilt; ``d_minres_a`` (Å) and ``d_range_um`` (µm) bound
    the shells and offsets of ``d`` (module docstring).
    """
    if mode not in ("t", "r", "d"):
        raise ValueError(f"mode must be t, r or d, got {mode!r}")
    if mode == "d" and microscope is None:
        raise ValueError("refine_subtilts: mode 'd' needs microscope")
    # a handful of slices per call: thread start-up costs more than it saves (10x on a loaded machine)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        if mode == "d" and d_whole_tilt:
            smooth_n, smooth = table.n2d, np.inf  # every particle of the tilt, weight exp(-d/inf) = 1
        return _refine(table, state, rows, images, refs, apix, mode, maxres_a, minres_a, smooth, smooth_n,
                       maxshift_px, microscope, progress, (d_minres_a, d_range_um))
    finally:
        numba.set_num_threads(threads)


def _refine(table, state, rows, images, refs, apix, mode, maxres_a, minres_a, smooth, smooth_n, maxshift_px,
            microscope, progress, dopts):
    out = state.copy()
    b = np.asarray(refs[0]).shape[0]
    minp, maxp = align3d.shells_for_resolution(b, apix, maxres_a, minres_a)
    ann = _Annulus(b, minp, maxp)
    ss = min(b, fourier.good_size(2 * maxp + 2))  # smallest box holding the annulus
    projs = [VolumeProjector(fourier.fourier_crop(np.asarray(r, np.float32), ss) if ss < b
                             else np.asarray(r, np.float32), pad=2) for r in refs]
    maxshift = b / 6.0 if maxshift_px is None else float(maxshift_px)
    rows = np.asarray(rows, dtype=np.int64)

    # neighbourhoods first, then every needed subtilt transformed once
    hoods = [neighbours(table, state, int(j), smooth_n, smooth) for j in rows]
    need = np.unique(np.concatenate([h[0] for h in hoods])) if len(hoods) else np.zeros(0, np.int64)
    data = np.empty((need.size, ann.npix), np.complex128)
    for a in range(0, need.size, 256):
        data[a:a + 256] = ann.take(fourier.ft(images(need[a:a + 256]), axes=(-2, -1)))
    slot = {int(r): k for k, r in enumerate(need)}
    if mode == "d":
        return _refine_defocus(table, state, out, rows, hoods, data, slot, need, ann, projs, ss, b, apix,
                               microscope, *dopts, progress)

    scale = projs[0].n_pad / ss
    dpow_all = ann.shell_sum(np.abs(data) ** 2) if mode == "r" else None
    for n, j in enumerate(rows):
        nb, w, off = hoods[n]
        k = [slot[int(r)] for r in nb]
        D = data[k]
        M, sh = state.subtilt_transforms(table, nb)
        half = table.cls[table.ptcl[nb]] % 2
        sel = [np.flatnonzero(half == h) for h in (0, 1)]

        def slices(rots):
            S = np.empty((len(nb), ann.npix), np.complex128)
            for h in (0, 1):
                if sel[h].size:
                    out = np.empty((sel[h].size, ann.npix), np.complex64)
                    _annulus_slices(projs[h % len(projs)].vft, scale, np.ascontiguousarray(rots[sel[h]]), ann.qx,
                                    ann.qy, out)
                    S[sel[h]] = out
            return S

        if mode == "r":  # per half: the neighbours' data and per-shell data power, once per row
            Dh = [np.ascontiguousarray(D[i]) for i in sel]
            dph = [dpow_all[np.asarray(k, dtype=np.int64)[i]] for i in sel]

        def hood_frc(rots, shifts):
            """== ann.frc_shells(slices(rots), D, shifts) in one pass."""
            F = np.empty((len(nb), ann.nshell))
            for h in (0, 1):
                if sel[h].size:
                    i = sel[h]
                    out = np.empty((i.size, ann.nshell))
                    _hood_frc(projs[h % len(projs)].vft, scale, np.ascontiguousarray(rots[i]),
                              np.ascontiguousarray(shifts[i], dtype=np.float64), ann.qx, ann.qy, ann.shell,
                              ann.nshell, b, Dh[h], dph[h], out)
                    F[i] = out
            return F

        S0 = slices(M)
        if mode == "r":
            # rotation by Nelder-Mead (3 params) at the best shift of the start; then the shift
            # is re-fitted in closed form at the chosen rotation
            q = off @ table.proj[j].T  # neighbour offsets in the tilt frame (x, y, depth)
            delta0, _ = ann.best_shift(ann.score_vector(S0, D, sh, w), maxshift)

            def unpack(x):
                Dr = rotvec_to_matrix(x)
                return Dr, Dr @ M, sh + (q @ Dr.T - q)[:, :2]

            def cost(x):
                _, rots, shifts = unpack(x)
                return -float(w @ hood_frc(rots, shifts + delta0).mean(axis=1)) / w.sum()

            step = np.degrees(np.arctan(1.0 / maxp))  # one Fourier pixel at the outer shell
            res = scipy.optimize.minimize(cost, np.zeros(3), method="Nelder-Mead",
                                          options={"initial_simplex": np.vstack([np.zeros(3), step * np.eye(3)]),
                                                   "maxfev": 45, "xatol": 0.05, "fatol": 1e-6})
            Dr, rots, shifts = unpack(res.x)
            S = slices(rots)
            delta, _ = ann.best_shift(ann.score_vector(S, D, shifts, w), maxshift)
            out.drot[j] = Dr @ state.drot[j]
            out.dshift[j] = state.dshift[j] + delta
            out.score2d[j] = -float(ann.frc_shells(S[:1], D[:1], shifts[:1] + delta).mean())
        else:  # mode == "t"; "d" never reaches this loop
            G = ann.score_vector(S0, D, sh, w)
            delta, _ = ann.best_shift(G, maxshift)
            out.dshift[j] = state.dshift[j] + delta
            out.score2d[j] = -float(ann.frc_shells(S0[:1], D[:1], sh[:1] + delta).mean())
        if progress is not None:
            progress((n + 1) / len(rows))
    return out


def _refine_defocus(table, state, out, rows, hoods, data, slot, need, ann, projs, ss, b, apix, microscope,
                    d_minres_a, d_range_um, progress):
    """Mode ``d`` (module docstring): per-subtilt correlation curves once for every needed subtilt,
    then each row pools its neighbourhood's curves and takes the peak."""
    ctf = CTF(defocus_um=2.0, voltage_kv=microscope.get("voltage_kv", 300.0), cs_mm=microscope.get("cs_mm", 2.7),
              ampcont=microscope.get("ampcont", 0.1))
    df = table.defocus_um[need]
    ok = np.isfinite(df)
    M, sh = state.subtilt_transforms(table, need)
    half = table.cls[table.ptcl[need]] % 2
    S = np.empty_like(data)
    for h in (0, 1):
        for a in np.array_split(np.flatnonzero(half == h), max(1, int(np.sum(half == h)) // 256)):
            if a.size:
                sl = np.empty((a.size, ann.npix), np.complex64)
                _annulus_slices(projs[h % len(projs)].vft, projs[0].n_pad / ss, np.ascontiguousarray(M[a]), ann.qx,
                                ann.qy, sl)
                S[a] = sl * ann.phase(sh[a])
    s2 = (ann.qx ** 2 + ann.qy ** 2) / (b * apix) ** 2
    dmin = max(0, int(np.ceil(b * apix / d_minres_a)) - ann.minp) if d_minres_a else 0  # in ann.shell units
    deltas = np.arange(-d_range_um, d_range_um + 1e-9, 0.01)
    num, den = np.zeros((need.size, deltas.size)), np.zeros((need.size, deltas.size))
    if ok.any():
        y, pw, s2d = _defocus_terms(ann, S[ok], data[ok], df[ok], s2, ctf, dmin)
        num[ok], den[ok] = ctf_correlation(y, pw, s2d, df[ok], deltas, ctf)
    for n, j in enumerate(rows):
        nb, w, _ = hoods[n]
        k = [slot[int(r)] for r in nb]
        if np.isfinite(table.defocus_um[j]):
            d = w @ den[k]
            if np.all(d > 0):
                out.ddef_um[j] = parabolic_peak(deltas, (w @ num[k]) / np.sqrt(d))
        out.score2d[j] = -float(ann.frc_shells(S[k[0]:k[0] + 1], data[k[0]:k[0] + 1], np.zeros((1, 2))).mean())
        if progress is not None:
            progress((n + 1) / len(rows))
    return out
