"""Per-subtilt translation / rotation / defocus refinement with neighbour smoothing
(e2spt_subtlt_local, spec §3.8, §7 items 11–12).

For subtilt ``j`` (particle ``i``, tilt ``τ``) the neighbourhood is the ``smooth_n`` particles of
the same tomogram (``table.group``) nearest to ``i`` (itself included) that have a subtilt on
tilt ``τ``; positions are ``coord + t`` (px), weights ``exp(−d/smooth)``. One shared correction
is fitted to all of them, maximising ``Σ_m w_m·c_m / Σ_m w_m`` where ``c_m`` is the FRC of
neighbour ``m``'s subtilt with its model (see :mod:`emflow.spt_refine`), averaged over shells
``minp ≤ r < maxp``:

* ``t``: a 2D shift ``δ`` added to every neighbour's model shift (|δ| ≤ maxshift);
* ``r``: a small rotation ``D`` (rotation vector, deg) about particle ``i`` in the tilt frame plus
  ``δ``: neighbour ``m`` gets rotation ``D·M_m`` and extra shift ``(D q_m − q_m)_xy`` where
  ``q_m = P_τ (c_m − c_i)`` is its offset in the tilt frame;
* ``d``: the per-pixel FRC terms times ``sign CTF(df_m)`` (the flip of extraction) correlated with
  ``sign CTF(df_m + δ)`` for δ in ``ddef ± 0.2 µm`` (step 0.005); the best δ is the new offset.

The correction is stored for the central subtilt only (``drot ← D·drot``, ``dshift += δ``).

Speed: the shell-averaged FRC is linear in the model's phase ramp, so for fixed rotations the
score of any shift δ is ``Re Σ_p G_p exp(−2πi δ·q_p/b)`` with one precomputed vector ``G`` over
the annulus pixels; the shift is found by a 1-px grid then Nelder–Mead on that closed form.
Model slices come from the reference Fourier-cropped to the smallest box holding the annulus.
"""

from __future__ import annotations

from typing import Callable

import numba
import numpy as np
import scipy.optimize

from emflow import align3d, fourier
from emflow.ctf import CTF, _chi
from emflow.geometry import rotvec_to_matrix
from emflow.projection import VolumeProjector
from emflow.spt_refine import ParticleTable, RefineState

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
        r = np.rint(np.hypot(kx, ky)).astype(int)
        keep = (r >= minp) & (r < maxp) & ~((kx == 0) & (ky < 0))
        rows, cols = np.nonzero(keep)
        self.qx = kx[rows, cols].astype(int)
        self.qy = ky[rows, cols].astype(int)
        self.shell = r[rows, cols] - minp
        self.nshell = maxp - minp
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
        return np.exp(-2j * np.pi * (shifts[:, 0, None] * self.qx + shifts[:, 1, None] * self.qy) / self.b)

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


def refine_subtilts(table: ParticleTable, state: RefineState, rows, images: Callable, refs, apix: float,
                    mode: str, maxres_a: float, minres_a: float | None = None, smooth: float = 100.0,
                    smooth_n: int = 8, maxshift_px: float | None = None, microscope: dict | None = None,
                    progress: Callable[[float], None] | None = None) -> RefineState:
    """Refine the subtilts ``rows`` (mode ``"t"``, ``"r"`` or ``"d"``); returns an updated copy.

    ``images(rows)`` must serve any subtilt of the tomograms involved (neighbours too).
    ``maxshift_px`` (px, particle box) bounds each iteration's shift correction (default box/6);
    ``microscope`` (voltage_kv, cs_mm, ampcont) is needed for ``d``.
    """
    if mode not in ("t", "r", "d"):
        raise ValueError(f"mode must be t, r or d, got {mode!r}")
    if mode == "d" and microscope is None:
        raise ValueError("refine_subtilts: mode 'd' needs microscope")
    # a handful of slices per call: thread start-up costs more than it saves (10x on a loaded machine)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return _refine(table, state, rows, images, refs, apix, mode, maxres_a, minres_a, smooth, smooth_n,
                       maxshift_px, microscope, progress)
    finally:
        numba.set_num_threads(threads)


def _refine(table, state, rows, images, refs, apix, mode, maxres_a, minres_a, smooth, smooth_n, maxshift_px,
            microscope, progress):
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
        mic = dict(voltage_kv=microscope.get("voltage_kv", 300.0), cs_mm=microscope.get("cs_mm", 2.7),
                   ampcont=microscope.get("ampcont", 0.1))
        ctf = CTF(defocus_um=2.0, **mic)
        s2 = ((ann.qx ** 2 + ann.qy ** 2) / (b * apix) ** 2)[None, :]  # 1/Å² per annulus pixel
        steps = np.arange(-0.2, 0.2 + 1e-9, 0.005)

    for n, j in enumerate(rows):
        nb, w, off = hoods[n]
        D = data[[slot[int(r)] for r in nb]]
        M, sh = state.subtilt_transforms(table, nb)
        half = table.cls[table.ptcl[nb]] % 2

        def slices(rots):
            S = np.empty((len(nb), ann.npix), np.complex128)
            for h in (0, 1):
                s = half == h
                if s.any():
                    S[s] = ann.take(projs[h % len(projs)].slices_ft(rots[s], size=ss))
            return S

        S0 = slices(M)
        if mode == "t":
            G = ann.score_vector(S0, D, sh, w)
            delta, _ = ann.best_shift(G, maxshift)
            out.dshift[j] = state.dshift[j] + delta
            out.score2d[j] = -float(ann.frc_shells(S0[:1], D[:1], sh[:1] + delta).mean())
        elif mode == "r":
            # rotation by Nelder-Mead (3 params) at the best shift of the start; then the shift
            # is re-fitted in closed form at the chosen rotation
            q = off @ table.proj[j].T  # neighbour offsets in the tilt frame (x, y, depth)
            delta0, _ = ann.best_shift(ann.score_vector(S0, D, sh, w), maxshift)

            def unpack(x):
                Dr = rotvec_to_matrix(x)
                return Dr, Dr @ M, sh + (q @ Dr.T - q)[:, :2]

            def cost(x):
                _, rots, shifts = unpack(x)
                return -float(w @ ann.frc_shells(slices(rots), D, shifts + delta0).mean(axis=1)) / w.sum()

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
        else:
            df = table.defocus_um[nb]
            if not np.all(np.isfinite(df)):
                continue
            # per-pixel FRC terms (each pixel at its own |s|, finer than shell centres)
            den = np.sqrt(ann.shell_sum(np.abs(S0) ** 2) * ann.shell_sum(np.abs(D) ** 2))
            inv = np.where(den > 0, 1.0 / np.where(den > 0, den, 1), 0.0)[:, ann.shell]
            cross = (S0 * ann.phase(sh) * np.conj(D)).real * inv * (w / w.sum())[:, None]
            base = np.sign(-np.sin(_chi(ctf, s2, df[:, None] * 1e4)))  # the flip used at extraction
            deltas = state.ddef_um[j] + steps
            trial = np.sign(-np.sin(_chi(ctf, s2[None], (df[None, :, None] + deltas[:, None, None]) * 1e4)))
            score = np.einsum("mp,dmp->d", cross * base, trial)
            # ties (flat score): keep the offset closest to the current one
            best = np.flatnonzero(score >= score.max() - 1e-12 * max(1.0, abs(score.max())))
            out.ddef_um[j] = float(deltas[best[np.argmin(np.abs(steps[best]))]])
            out.score2d[j] = -float(ann.frc_shells(S0[:1], D[:1], sh[:1]).mean())
        if progress is not None:
            progress((n + 1) / len(rows))
    return out
