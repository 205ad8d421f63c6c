"""Gold-standard refinement of single particles (the ``e2refine_easy`` scheme), in-process.

The particles are split into even and odd halves by stack index (EMAN's ``_even``/``_odd`` sets);
each half is refined by its own e2refine iteration (:func:`emflow.spa.refine_loop.run_iteration`)
against its own model, from a starting model whose phases are randomised beyond ``start_res_a``
independently for each half (``filter.lowpass.randomphase``), so the two maps share no noise and
no model bias beyond that resolution. Per iteration (:func:`gold_fsc`):

* the FSC between the half maps unmasked, and under a soft mask from their average (:func:`gold_mask`:
  low-pass, threshold, dilate, cosine edge), corrected for the mask's own correlation by phase
  randomisation (Chen et al. 2013): beyond the shell where the unmasked FSC first drops below 0.8 both
  half maps get random phases, are masked, and ``FSC_true = (FSC_t − FSC_n)/(1 − FSC_n)`` from two
  shells past it (RELION ``src/postprocessing.cpp`` ``calculateFSCtrue``); the reported gold-standard
  resolution is ``FSC_true``'s 0.143 crossing;
* the combined map is the average of the halves weighted per shell by ``C_ref = sqrt(2·FSC/(1 + FSC))``
  (Rosenthal & Henderson 2003) of ``FSC_true``, and each half's next model is its own map with the same
  weight (a filter shape, not data of the other half: EMAN filters each half's next reference by the
  gold-standard FSC in the same way);
* with ``speed`` (:func:`eman_angular_step`) the next iteration's angular step follows the measured
  resolution by e2refine_easy's rule (``programs/e2refine_easy.py`` lines 524–569, EMAN2 commit f9e8fc6).

The single-map 2012 loop remains :func:`emflow.spa.refine_loop.run_iteration`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import scipy.ndimage

from emflow.fsc import FSCCurve, fsc, resolution
from emflow.spa.local_refine import LocalParams, poses_from_classes, refine_half
from emflow.spa.refine_loop import RefineOptions, orientgen_for_iteration, run_iteration

#: RELION's default: phases are randomised from the shell where the unmasked FSC drops below this
RANDOMIZE_FSC_AT = 0.8

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
    dict: ``maps`` (each half's raw map), ``fsc`` (the reported FSCCurve between the halves: masked and
    corrected by phase randomisation, :func:`gold_fsc` ``true``), ``fsc_all`` (every :func:`gold_fsc`
    curve and the mask), ``res_0143_a`` (Å, of ``fsc``), ``combined`` (FSC-weighted average of the
    halves), ``next`` (each half's next model: its own map weighted by ``C_ref``), ``members``
    (particle indices of each half).
    """
    members = split_even_odd(len(particles))
    maps, poses = {}, {}
    for k, h in enumerate(HALVES):
        idx = members[h]
        sub_ctfs = None if ctfs is None else [ctfs[i] for i in idx]
        r = run_iteration(models[h], particles[idx], opts, ctfs=sub_ctfs, rng=np.random.default_rng(seed + k),
                          timings=timings)
        maps[h] = np.asarray(r["threed"], np.float32)
        poses[h] = poses_from_classes(r["class_info"]["result"], r["make3d_R"])
    return _halves_result(maps, members, opts.apix, seed, poses=poses)


def _halves_result(maps: dict, members: dict, apix: float, seed: int, **extra) -> dict:
    """The gold-standard FSC of two half maps, their FSC-weighted average and each half's next reference."""
    g = gold_fsc(maps["even"], maps["odd"], apix, seed=seed)
    curve = g["true"]
    combined = fsc_weighted(0.5 * (maps["even"] + maps["odd"]), curve)
    return {"maps": maps, "fsc": curve, "fsc_all": g, "res_0143_a": g["res_true_a"], "combined": combined,
            "next": {h: fsc_weighted(maps[h], curve) for h in HALVES}, "members": members, **extra}


def likelihood_kmax(curve, box: int) -> float:
    """Outermost ring (px) the local refinement's likelihood uses after a gold-standard FSC ``curve``: 1.3× the
    shell where it first drops below 0.143, + 2 shells (the reference is ``C_ref``-weighted, so the rings past
    its resolution add cost, not signal), at most Nyquist − 1."""
    f = np.asarray(curve.fsc)
    below = np.flatnonzero(f < 0.143)
    shell = float(curve.shell[below[0]]) if below.size else box / 2.0
    return float(min(box / 2 - 1, 1.3 * shell + 2))


def local_iteration(models: dict[str, np.ndarray], particles: np.ndarray, poses: dict, params: LocalParams,
                    k: int, kmax_px: float, apix: float, sym: str = "c1", *, ctfs=None, seed: int = 0) -> dict:
    """Local iteration ``k`` (0-based) of the likelihood refinement (:mod:`emflow.spa.local_refine`) on both
    halves, each against its own reference ``models[h]`` (soft-masked to a sphere of 0.42 box) from its own
    poses ``poses[h] = (R, t)``. Returns :func:`gold_iteration`'s dict with the new ``poses`` and ``stats`` (per
    half, :class:`emflow.spa.local_refine.LocalHalfResult` ``stats``)."""
    from emflow.masks import soft_sphere

    members = split_even_odd(len(particles))
    b = particles.shape[-1]
    mask = soft_sphere(b, 0.42 * b, 0.06 * b).astype(np.float32)
    step, shift_step = params.step(k)
    maps, new_poses, stats = {}, {}, {}
    for h in HALVES:
        idx = members[h]
        r = refine_half(models[h] * mask, particles[idx], *poses[h], step_deg=step, shift_step_px=shift_step,
                        kmax_px=kmax_px, ctfs=None if ctfs is None else [ctfs[i] for i in idx], apix=apix,
                        radius_steps=params.radius_steps, min_weight=params.min_weight, sym=sym,
                        global_deg=params.global_step(k), keep=params.keep)
        maps[h], new_poses[h], stats[h] = r.map, (r.rotations, r.shifts), r.stats
    return _halves_result(maps, members, apix, seed, poses=new_poses, stats=stats)


def gold_mask(vol: np.ndarray, apix: float, res_a: float, threshold: float = 0.2) -> np.ndarray:
    """Soft mask of ``vol`` (the average of the half maps) for the masked FSC. float32 in [0, 1].

    ``vol`` is Gaussian low-passed to ``res_a``; voxels above ``threshold × max`` form the binary mask
    (the connected component holding the maximum and those as large as a tenth of it); it is dilated by
    ``ceil(res_a / 2 apix) + 1`` px and given a raised-cosine edge of ``max(3, ceil(res_a / apix))`` px,
    clipped to the box's inscribed sphere.
    """
    from emflow.filters import lowpass_gauss
    from emflow.masks import radius_grid

    lp = np.asarray(lowpass_gauss(np.asarray(vol, np.float32), apix, max(res_a, 2 * apix)), np.float32)
    above = lp > threshold * float(lp.max())
    labels, n = scipy.ndimage.label(above)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
        above = np.isin(labels, keep)
    dilate = math.ceil(res_a / (2 * apix)) + 1
    width = max(3, math.ceil(res_a / apix))
    d = scipy.ndimage.distance_transform_edt(~above)
    d = np.maximum(d - dilate, 0.0)
    m = np.where(d < width, 0.5 * (1 + np.cos(np.pi * np.minimum(d / width, 1.0))), 0.0)
    m[radius_grid(vol.shape) > vol.shape[-1] / 2 - 1] = 0.0
    return m.astype(np.float32)


def gold_fsc(even: np.ndarray, odd: np.ndarray, apix: float, mask: np.ndarray | None = None, seed: int = 0,
             mask_res_a: float | None = None) -> dict:
    """Unmasked, masked and phase-randomisation-corrected FSC of two half maps.

    ``randomize_at``: first shell (1-based) whose unmasked FSC is below 0.8; both half maps get random
    phases beyond it (:func:`phase_randomise`, independent realisations) and are masked: ``random_masked``.
    ``true`` = ``masked`` below shell ``randomize_at + 2``, else ``(masked − random)/(1 − random)``
    (RELION src/postprocessing.cpp, Postprocessing::calculateFSCtrue). When the unmasked FSC never drops
    below 0.8 no correction is possible and ``true`` is the unmasked curve (``randomize_at`` None).
    ``mask``: default :func:`gold_mask` of the average at the unmasked 0.143 resolution (or ``mask_res_a``).
    Returns the four :class:`FSCCurve` s, ``mask``, ``randomize_at`` and the 0.143 resolutions (Å).
    """
    e, o = np.asarray(even, np.float32), np.asarray(odd, np.float32)
    unmasked = fsc(e, o)
    res_un = resolution(unmasked, apix, 0.143)
    if mask is None:
        mask = gold_mask(0.5 * (e + o), apix, mask_res_a or max(res_un, 2 * apix))
    masked = fsc(e * mask, o * mask)
    below = np.flatnonzero(unmasked.fsc < RANDOMIZE_FSC_AT)
    n = e.shape[-1]
    if below.size == 0:
        random_masked = FSCCurve(unmasked.shell, unmasked.freq, np.zeros_like(unmasked.fsc), unmasked.nvox)
        true, rnd_at = unmasked, None
    else:
        rnd_at = int(unmasked.shell[below[0]])
        res_at = n * apix / rnd_at
        re_ = phase_randomise(e, apix, res_at, np.random.default_rng(seed + 101))
        ro = phase_randomise(o, apix, res_at, np.random.default_rng(seed + 202))
        random_masked = fsc(re_ * mask, ro * mask)
        ft, fn = masked.fsc, random_masked.fsc
        corr = (ft - fn) / np.maximum(1.0 - fn, 1e-6)
        true = FSCCurve(masked.shell, masked.freq, np.where(masked.shell < rnd_at + 2, ft, corr), masked.nvox)
    return {"unmasked": unmasked, "masked": masked, "random_masked": random_masked, "true": true, "mask": mask,
            "randomize_at": rnd_at, "res_unmasked_a": res_un, "res_masked_a": resolution(masked, apix, 0.143),
            "res_true_a": resolution(true, apix, 0.143)}


def eman_angular_step(res_a: float, box: int, apix: float, speed: int = 5) -> float:
    """e2refine_easy's angular step (degrees) for target resolution ``res_a`` (programs/e2refine_easy.py,
    EMAN2 f9e8fc6, lines 526–530 and 552–553): ``89.99 / ceil(810 / ((speed + 3)·sqrt(4300 / effbox)))``
    with ``effbox = box·apix·2/res`` when ``res > 4·apix``, else ``box`` (a step dividing 90°)."""
    effbox = box * apix * 2.0 / res_a if res_a > apix * 4 else float(box)
    return 89.99 / math.ceil(90.0 * 9.0 / ((speed + 3.0) * math.sqrt(4300.0 / effbox)))


def orientgen_with_delta(orientgen: str, delta: float) -> str:
    """``orientgen`` (EMAN string) with its ``delta`` replaced (or added)."""
    if re.search(r"delta=[0-9.eE+-]+", orientgen):
        return re.sub(r"delta=[0-9.eE+-]+", f"delta={delta:.5f}", orientgen)
    return f"{orientgen}:delta={delta:.5f}"


def local_names(n: int) -> list[str]:
    """Names of the ``n`` local iterations in gold.json and the gold/ file names: ``L1``, ``L2``, …"""
    return [f"L{k + 1}" for k in range(int(n))]


def run_gold(model: np.ndarray, particles: np.ndarray, spa: dict, iters: list[str], apix: float, *, ctfs=None,
             m3dsetsf: np.ndarray | None = None,
             on_iteration: Callable[[str, dict, dict], None] | None = None) -> tuple[dict, list[dict]]:
    """The gold-standard refinement (``spa.goldstandard``): :func:`gold_start` from ``model`` at
    ``spa["gold_startres"]``, one :func:`gold_iteration` per entry of ``iters`` ("01", …), then
    ``spa["local"]["iterations"]`` :func:`local_iteration` s (named by :func:`local_names`) from the last
    iteration's poses and references.

    The angular step of each iteration is the ``orientgen`` schedule's, or with ``spa["gold_speed"]``
    (after the first iteration) :func:`eman_angular_step` of the previous gold-standard resolution.
    ``on_iteration(it, result, row)`` is called after each iteration (the script writes its files there).
    Returns the last iteration's result and one summary row per iteration.
    """
    import time

    models = gold_start(model, apix, spa["gold_startres"], seed=0)
    rows: list[dict] = []
    r: dict = {}

    def row(it: str, r: dict, t0: float, **extra) -> dict:
        g = r["fsc_all"]
        rows.append({"iter": it, **extra, "gold_0143_a": g["res_true_a"], "unmasked_0143_a": g["res_unmasked_a"],
                     "masked_0143_a": g["res_masked_a"], "randomize_at_a": None if g["randomize_at"] is None else
                     round(particles.shape[-1] * apix / g["randomize_at"], 2),
                     "seconds": round(time.perf_counter() - t0, 1)})
        if on_iteration:
            on_iteration(it, r, rows[-1])
        return r["next"]

    for it in iters:
        og = orientgen_for_iteration(spa["orientgen"], int(it))
        if spa.get("gold_speed") and rows:
            og = orientgen_with_delta(og, eman_angular_step(rows[-1]["gold_0143_a"], particles.shape[-1], apix,
                                                            int(spa["gold_speed"])))
        opts = RefineOptions.from_config(spa, apix=apix, m3dsetsf=m3dsetsf, orientgen=og)
        t0 = time.perf_counter()
        r = gold_iteration(models, particles, opts, ctfs=ctfs, seed=10 * int(it))
        models = row(it, r, t0, orientgen=og)
    lp = LocalParams(**spa.get("local", {}))
    lp.check()
    for k, it in enumerate(local_names(lp.iterations)):
        t0 = time.perf_counter()
        kmax = likelihood_kmax(r["fsc"], particles.shape[-1])
        r = local_iteration(models, particles, r["poses"], lp, k, kmax, apix, spa.get("sym", "c1"), ctfs=ctfs,
                            seed=10 * (len(iters) + k + 1))
        step, shift_step = lp.step(k)
        models = row(it, r, t0, global_step_deg=lp.global_step(k), local_step_deg=round(step, 3),
                     local_shift_step_px=round(shift_step, 3),
                     likelihood_kmax_px=round(kmax, 1),
                     local={h: {key: round(v, 4) if isinstance(v, float) else v for key, v in st.items()}
                            for h, st in r["stats"].items()})
    return r, rows
