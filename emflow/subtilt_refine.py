"""Per-subtilt translation / rotation / defocus refinement with neighbour smoothing
(e2spt_subtlt_local, spec §3.8, §7 items 11–12).

For subtilt ``j`` (particle ``i``, tilt ``τ``) the neighbourhood is the ``smooth_n`` particles of
the same tomogram (``table.group``) nearest to ``i`` (itself included) that have a subtilt on
tilt ``τ``; positions are ``coord + t`` (px), weights ``exp(−d/smooth)``. One shared correction
is fitted to all of them, maximising ``Σ_m w_m·c_m / Σ_m w_m`` where ``c_m`` is the FRC of
neighbour ``m``'s subtilt with its model (see :mod:`emflow.spt_refine`), averaged over shells
``minp ≤ r < maxp``:

* ``t``: a 2D shift ``δ`` added to every neighbour's model shift (Powell from 0, |δ| ≤ maxshift);
* ``r``: a small rotation ``D`` (rotation vector, deg) about particle ``i`` in the tilt frame plus
  ``δ``: neighbour ``m`` gets rotation ``D·M_m`` and extra shift ``(D q_m − q_m)_xy`` where
  ``q_m = P_τ (c_m − c_i)`` is its offset in the tilt frame;
* ``d``: per-shell FRCs times ``sign CTF(df_m)`` (the flip of extraction) correlated with
  ``sign CTF(df_m + δ)`` for δ in ``ddef ± 0.2 µm`` (step 0.005); the best δ is the new offset.

The correction is stored for the central subtilt only (``drot ← D·drot``, ``dshift += δ``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.optimize

from emflow import align3d, fourier
from emflow.ctf import CTF, ctf_1d
from emflow.postprocess import rotvec_matrix
from emflow.projection import VolumeProjector
from emflow.spt_refine import ParticleTable, RefineState

__all__ = ["neighbours", "refine_subtilts"]


def neighbours(table: ParticleTable, state: RefineState, row: int, smooth_n: int, smooth: float):
    """Subtilt rows of the ``smooth_n`` nearest particles on the same tilt (self first) and weights."""
    i = table.ptcl[row]
    same = np.flatnonzero((table.tilt_id == table.tilt_id[row]) & (table.group[table.ptcl] == table.group[i]))
    pos = table.coord + state.shift
    d = np.linalg.norm(pos[table.ptcl[same]] - pos[i], axis=1)
    order = np.argsort(d, kind="stable")[:max(1, int(smooth_n))]
    return same[order], np.exp(-d[order] / float(smooth)), pos[table.ptcl[same[order]]] - pos[i]


class _Annulus:
    """Half-plane Fourier pixels of a ``b`` box with minp ≤ round(|k|) < maxp (shell index − minp)."""

    def __init__(self, b: int, minp: int, maxp: int):
        ky, kx = np.meshgrid(np.fft.fftfreq(b, 1.0 / b), np.arange(b // 2 + 1), indexing="ij")
        r = np.rint(np.hypot(kx, ky)).astype(int)
        keep = (r >= minp) & (r < maxp) & ~((kx == 0) & (ky < 0))
        self.rows, self.cols = np.nonzero(keep)
        self.qx = kx[self.rows, self.cols]
        self.qy = ky[self.rows, self.cols]
        self.shell = r[self.rows, self.cols] - minp
        self.nshell = maxp - minp
        self.b = b

    def take(self, F):
        return F[..., self.rows, self.cols]

    def shell_sum(self, v):
        """Σ over each shell of the last axis; v (k, npix) → (k, nshell)."""
        out = np.zeros(v.shape[:-1] + (self.nshell,))
        for k in range(v.shape[0]):
            out[k] = np.bincount(self.shell, v[k], minlength=self.nshell)
        return out

    def frc_shells(self, S, D, shifts):
        """Per-shell FRC of model slices S (k,npix) moved by shifts (k,2) px against data D (k,npix)."""
        ph = np.exp(-2j * np.pi * (shifts[:, 0, None] * self.qx + shifts[:, 1, None] * self.qy) / self.b)
        cross = self.shell_sum((S * ph * np.conj(D)).real)
        den = np.sqrt(self.shell_sum(np.abs(S) ** 2) * self.shell_sum(np.abs(D) ** 2))
        return np.where(den > 0, cross / np.where(den > 0, den, 1), 0.0)


def refine_subtilts(table: ParticleTable, state: RefineState, rows, images: Callable, refs, apix: float,
                    mode: str, maxres_a: float, minres_a: float | None = None, smooth: float = 100.0,
                    smooth_n: int = 8, maxshift_px: float | None = None, microscope: dict | None = None,
                    progress: Callable[[float], None] | None = None) -> RefineState:
    """Refine the subtilts ``rows`` (mode ``"t"``, ``"r"`` or ``"d"``); returns an updated copy.

    ``images(rows)`` must serve any subtilt of the tomograms involved (neighbours too).
    ``maxshift_px`` defaults to box/6; ``microscope`` (voltage_kv, cs_mm, ampcont) is needed for ``d``.
    """
    if mode not in ("t", "r", "d"):
        raise ValueError(f"mode must be t, r or d, got {mode!r}")
    out = state.copy()
    projs = [VolumeProjector(np.asarray(r, np.float32), pad=2) for r in refs]
    b = projs[0].box
    minp, maxp = align3d.shells_for_resolution(b, apix, maxres_a, minres_a)
    ann = _Annulus(b, minp, maxp)
    maxshift = b / 6.0 if maxshift_px is None else float(maxshift_px)
    rows = np.asarray(rows, dtype=np.int64)
    cache: dict[int, tuple] = {}

    def data(r):
        if r not in cache:
            cache[r] = ann.take(fourier.ft(images(np.array([r]))[0], axes=(-2, -1)))
        return cache[r]

    for n, j in enumerate(rows):
        nb, w, off = neighbours(table, state, j, smooth_n, smooth)
        D = np.stack([data(int(r)) for r in nb])
        M, sh = state.subtilt_transforms(table, nb)
        half = table.cls[table.ptcl[nb]] % 2

        def slices(rots):
            S = np.empty((len(nb), ann.rows.size), np.complex64)
            for h in (0, 1):
                s = half == h
                if s.any():
                    S[s] = ann.take(projs[h].slices_ft(rots[s], size=b))
            return S

        S0 = slices(M)
        if mode == "t":
            def cost(x):
                if np.hypot(*x) > maxshift:
                    return 1.0
                return -float(w @ ann.frc_shells(S0, D, sh + x).mean(axis=1)) / w.sum()
            res = scipy.optimize.minimize(cost, np.zeros(2), method="Powell",
                                          options={"xtol": 1e-2, "ftol": 1e-4, "maxiter": 10})
            out.dshift[j] = state.dshift[j] + res.x
            out.score2d[j] = -float(ann.frc_shells(S0[:1], D[:1], sh[:1] + res.x).mean())
        elif mode == "r":
            q = off @ table.proj[j].T  # neighbour offsets in the tilt frame (x, y, depth)

            def unpack(x):
                Dr = rotvec_matrix(x[:3])
                return Dr, Dr @ M, sh + x[3:] + (q @ Dr.T - q)[:, :2]

            def cost(x):
                if np.hypot(x[3], x[4]) > maxshift:
                    return 1.0
                _, rots, shifts = unpack(x)
                return -float(w @ ann.frc_shells(slices(rots), D, shifts).mean(axis=1)) / w.sum()
            res = scipy.optimize.minimize(cost, np.zeros(5), method="Powell",
                                          options={"xtol": 1e-2, "ftol": 1e-4, "maxiter": 10})
            Dr, rots, shifts = unpack(res.x)
            out.drot[j] = Dr @ state.drot[j]
            out.dshift[j] = state.dshift[j] + res.x[3:]
            out.score2d[j] = -float(ann.frc_shells(slices(rots)[:1], D[:1], shifts[:1]).mean())
        else:
            frc = np.zeros((len(nb), b // 2))
            frc[:, minp:maxp] = ann.frc_shells(S0, D, sh)
            s = np.arange(b // 2) / (b * apix)
            mic = dict(voltage_kv=microscope.get("voltage_kv", 300.0), cs_mm=microscope.get("cs_mm", 2.7),
                       ampcont=microscope.get("ampcont", 0.1))
            df = table.defocus_um[nb]
            if not np.all(np.isfinite(df)):
                continue
            base = np.stack([np.sign(ctf_1d(CTF(defocus_um=float(v), **mic), s)) for v in df])
            deltas = state.ddef_um[j] + np.arange(-0.2, 0.2, 0.005)
            score = np.zeros(deltas.size)
            for k, dd in enumerate(deltas):
                trial = np.stack([np.sign(ctf_1d(CTF(defocus_um=float(v + dd), **mic), s)) for v in df])
                score[k] = w @ (frc * base * trial)[:, minp:maxp].mean(axis=1)
            out.ddef_um[j] = float(deltas[int(np.argmax(score))])
            out.score2d[j] = -float(frc[0, minp:maxp].mean())
        if progress is not None:
            progress((n + 1) / len(rows))
    return out
