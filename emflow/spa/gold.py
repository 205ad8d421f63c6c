"""Gold-standard refinement of single particles (the ``e2refine_easy`` scheme), in-process.

The particles are split into even and odd halves by stack index (EMAN's ``_even``/``_odd`` sets);
each half is refined by its own e2refine iteration (:func:`emflow.spa.refine_loop.run_iteration`)
against its own model, from a starting model whose phases are randomised beyond ``start_res_a``
independently for each half (``filter.lowpass.randomphase``), so the two maps share no noise and
no model bias beyond that resolution. Per iteration the FSC between the half maps (unmasked) gives
the 0.143 resolution; the combined map is the average of the halves weighted per shell by
``C_ref = sqrt(2·FSC / (1 + FSC))`` (Rosenthal & Henderson 2003), and each half's next model is its
own map with the same per-shell weight (a filter shape, not data of the other half: EMAN filters
each half's next reference by the gold-standard FSC in the same way).

Deviation from e2refine_easy: no masked FSC and no automatic schedule of the angular step from the
resolution (the ``orientgen`` schedule is given); the single-map 2012 loop remains
:func:`emflow.spa.refine_loop.run_iteration`.
"""

from __future__ import annotations

import numpy as np

from emflow.fsc import fsc, resolution
from emflow.spa.refine_loop import RefineOptions, run_iteration

HALVES = ("even", "odd")


def phase_randomise(vol: np.ndarray, apix: float, res_a: float, rng: np.random.Generator) -> np.ndarray:
    """``vol`` ``[z, y, x]`` with the phases of every Fourier coefficient beyond ``1/res_a`` (1/Å)
    replaced by random ones (amplitudes kept; EMAN ``filter.lowpass.randomphase``). float32."""
    v = np.asarray(vol, np.float64)
    ft = np.fft.rfftn(v)
    fz, fy = np.fft.fftfreq(v.shape[0], apix), np.fft.fftfreq(v.shape[1], apix)
    fx = np.fft.rfftfreq(v.shape[2], apix)
    s = np.sqrt(fz[:, None, None] ** 2 + fy[None, :, None] ** 2 + fx[None, None, :] ** 2)
    beyond = s > 1.0 / float(res_a)
    # random phases from the FT of real white noise: Hermitian where the rfft layout repeats itself
    noise_phase = np.angle(np.fft.rfftn(rng.standard_normal(v.shape)))
    ft[beyond] = np.abs(ft[beyond]) * np.exp(1j * noise_phase[beyond])
    return np.fft.irfftn(ft, s=v.shape).astype(np.float32)


def split_even_odd(n: int) -> dict[str, np.ndarray]:
    """Particle indices of the halves: even = 0, 2, 4, …; odd = 1, 3, 5, … (EMAN's split)."""
    return {"even": np.arange(0, n, 2), "odd": np.arange(1, n, 2)}


def shell_weights(curve, shape: tuple[int, int, int]) -> np.ndarray:
    """Per-voxel ``C_ref = sqrt(2·FSC/(1+FSC))`` (negative FSC → 0) on the rfftn grid of ``shape``."""
    f = np.clip(np.asarray(curve.fsc, np.float64), 0.0, 1.0)
    cref = np.sqrt(2 * f / (1 + f))
    nz, ny, nx = shape
    kz, ky, kx = np.fft.fftfreq(nz) * nz, np.fft.fftfreq(ny) * ny, np.fft.rfftfreq(nx) * nx
    r = np.rint(np.sqrt(kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2)).astype(int)
    table = np.concatenate([[1.0], cref, np.zeros(1)])  # shell 0 (mean) kept; beyond the last shell 0
    return table[np.minimum(r, len(table) - 1)]


def fsc_weighted(vol: np.ndarray, curve) -> np.ndarray:
    """``vol`` with each Fourier shell multiplied by :func:`shell_weights` of ``curve``. float32."""
    v = np.asarray(vol, np.float64)
    return np.fft.irfftn(np.fft.rfftn(v) * shell_weights(curve, v.shape), s=v.shape).astype(np.float32)


def gold_start(model: np.ndarray, apix: float, start_res_a: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Independent starting models of the halves: ``model`` phase-randomised beyond ``start_res_a``
    with a different random realisation per half (seeds ``seed`` and ``seed + 1``)."""
    return {h: phase_randomise(model, apix, start_res_a, np.random.default_rng(seed + k)) for k, h in enumerate(HALVES)}


def gold_iteration(models: dict[str, np.ndarray], particles: np.ndarray, opts: RefineOptions, *, ctfs=None,
                   seed: int = 0, timings: dict | None = None) -> dict:
    """One gold-standard iteration: each half refined against its own model from its own particles.

    Parameters
    ----------
    models : {"even": [z, y, x], "odd": [z, y, x]}
    particles : [n, y, x] float32, phase-flipped, protein white; ``ctfs`` their CTFs (stack order).

    Returns
    -------
    dict: ``maps`` (each half's raw map), ``fsc`` (FSCCurve between the halves, unmasked),
    ``res_0143_a`` (Å), ``combined`` (FSC-weighted average of the halves), ``next`` (each half's next
    model: its own map weighted by ``C_ref``), ``members`` (particle indices of each half).
    """
    members = split_even_odd(len(particles))
    maps = {}
    for k, h in enumerate(HALVES):
        idx = members[h]
        sub_ctfs = None if ctfs is None else [ctfs[i] for i in idx]
        r = run_iteration(models[h], particles[idx], opts, ctfs=sub_ctfs, rng=np.random.default_rng(seed + k),
                          timings=timings)
        maps[h] = np.asarray(r["threed"], np.float32)
    curve = fsc(maps["even"], maps["odd"])
    combined = fsc_weighted(0.5 * (maps["even"] + maps["odd"]), curve)
    return {"maps": maps, "fsc": curve, "res_0143_a": float(resolution(curve, opts.apix, 0.143)),
            "combined": combined, "next": {h: fsc_weighted(maps[h], curve) for h in HALVES}, "members": members}
