"""Subtilt refinement driver: e2spt_refine_new with gold standard, keep and p/t/r/d iterations
(spec §3.6, §3.7, §3.9; §7 items 8–14).

Data model
----------
* :class:`ParticleTable`: the run's fixed metadata (``particle_info_3d.lst`` / ``_2d.lst``):
  per 3D particle its file/index, gold-standard ``cls`` (0 even, 1 odd), tomogram ``group`` and
  ``coord`` (px of the particle sampling, from the tomogram centre); per subtilt its file/index,
  particle ``ptcl``, ``tilt_id``, projection rotation ``proj`` = ``P_k`` and residual shift ``d_k``
  (extraction), and the defocus it was phase flipped with (µm, NaN if none).
* :class:`RefineState`: what the iterations change (``aliptcls3d_XX`` / ``aliptcls2d_XX``):
  per particle ``R``, ``t`` (reference → particle, CONVENTIONS; EMAN ``xform.align3d`` is the
  inverse) and score; per subtilt the correction ``dxf`` = (rotation ``Dr``, 2D shift ``ds``),
  its score and defocus offset ``ddef_um``.
* The model of subtilt ``k`` of particle ``i`` is the reference projected with rotation
  ``Dr_k · P_k · R_i`` and moved in 2D by ``s_k = (P_k t_i)_xy + d_k + ds_k`` px
  (:meth:`RefineState.subtilt_transforms`). This one function feeds alignment, subtilt
  refinement and reconstruction.

Images are supplied by a callable ``images(rows) -> (len(rows), b, b) float32`` (subtilts already
clipped to the particle box ``b``), so kernels do no I/O and a job loads only its rows.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

from emflow import fourier
from emflow.ctf import CTF, ctf_2d_stack
from emflow.errors import InputError
from emflow.projection import VolumeProjector
from emflow.reconstruct import Reconstructor
from emflow.sta import align3d

__all__ = ["ITER_KEY", "parse_iters", "parse_keep", "ParticleTable", "RefineState", "AlignParams",
           "align_particles_p", "select_subtilts", "reconstruct_halves", "chunk_ranges", "edge_mean_subtract",
           "align_mode", "STAGE_KEYS", "stage_params", "iteration_params", "CTF_MICROSCOPE_KEYS"]

ITER_KEY = "spt_refine.iters"
_ITER_TOKEN = re.compile(r"^([ptrd])(\d*)$")


# ----------------------------------------------------------------------------- options
def parse_iters(text: str, key: str = ITER_KEY) -> list[str]:
    """Expand an EMAN iteration string (``"p3,t2,p,t,r,d"``) into one letter per iteration.

    ``p`` = particle alignment, ``t`` = subtilt translation, ``r`` = subtilt rotation+translation,
    ``d`` = subtilt defocus; a count repeats the letter. ``t``/``r``/``d`` need an earlier ``p``.

    Raises
    ------
    InputError
        Unknown letter, zero count, empty string, or a subtilt step before the first ``p``.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError("iteration string is empty", source=key, fix='use e.g. "p3,t2,p,t,r,d"')
    out: list[str] = []
    for tok in text.replace(" ", "").split(","):
        m = _ITER_TOKEN.match(tok.lower())
        if not m or (m.group(2) and int(m.group(2)) == 0):
            raise InputError(f"bad iteration token {tok!r} in {text!r}", source=key,
                             fix="tokens are p, t, r or d, optionally followed by a repeat count (p3)")
        letter = m.group(1)
        if letter != "p" and "p" not in out:
            raise InputError(f"{letter!r} (subtilt refinement) comes before any p iteration in {text!r}",
                             source=key, fix="start with at least one p iteration")
        out.extend(letter * (int(m.group(2)) if m.group(2) else 1))
    return out


def parse_keep(keep, key: str = "spt_refine.keep") -> tuple[float, float, float]:
    """``keep`` as (3D score, 2D score, 2D drift) fractions: one number or ``"a,b,c"``."""
    vals = [keep] if isinstance(keep, (int, float)) else str(keep).split(",")
    try:
        f = [float(v) for v in vals]
    except ValueError:
        raise InputError(f"keep {keep!r} is not a number or 'a,b,c'", source=key) from None
    if len(f) == 1:
        f = f * 3
    if len(f) != 3 or not all(0 < v <= 1 for v in f):
        raise InputError(f"keep {keep!r} needs 1 or 3 fractions in (0, 1]", source=key)
    return f[0], f[1], f[2]


def chunk_ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), …]`` covering ``range(n)`` in pieces of ``chunk_size``."""
    chunk_size = max(1, int(chunk_size))
    return [(a, min(n, a + chunk_size)) for a in range(0, max(n, 1), chunk_size)]


def align_mode(iters: Sequence[str], it: int, localrefine: bool) -> str:
    """``"global"`` for the first p iteration (or every p without ``localrefine``), else ``"local"``."""
    first_p = iters.index("p") + 1
    return "local" if (localrefine and it > first_p) else "global"


# ----------------------------------------------------------------------------- per-job params
# The ``spt_refine:`` keys each job reads (rules/spt_refine.smk passes only these as ``params``), so
# that a key change reruns only the jobs that use it and appending an iteration to ``iters`` changes
# the params of no finished job (the pattern of ``emflow.spa.refine_loop.STAGE_KEYS``).
STAGE_KEYS = {
    "setup": ("startres", "goldstandard", "goldcontinue", "maxres", "maxtilt_deg"),
    "align": ("goldstandard", "chunk_size", "minres", "sym", "maxshift"),  # + the iteration's own keys
    "make3d": ("chunk_size", "keep", "sym"),
    "postprocess": ("sym", "maxres"),  # + the iteration's letter
}
# keys an alignment iteration reads besides STAGE_KEYS["align"], by letter and p mode
ITERATION_KEYS = {"global": ("delta_deg", "npos"), "local": ("maxang",), "t": ("smooth", "smoothN"),
                  "r": ("smooth", "smoothN"), "d": ("smooth", "smoothN")}
# the microscope keys of CTF (re-)flipping (not apix: the pixel size comes from the particle files)
CTF_MICROSCOPE_KEYS = ("voltage_kv", "cs_mm", "ampcont")


def stage_params(spt: dict, stage: str) -> dict:
    """The ``spt_refine:`` keys one job kind reads (``STAGE_KEYS[stage]``)."""
    return {key: spt[key] for key in STAGE_KEYS[stage]}


def iteration_params(spt: dict, it: int, stage: str = "align") -> dict:
    """Params of iteration ``it`` (1-based) of ``stage``: its letter, and for ``align`` the p mode
    (global/local) and that mode's or letter's keys; nothing from the other iterations.

    Raises InputError (``spt_refine.iters``) when ``it`` is beyond the iteration plan.
    """
    iters = parse_iters(spt["iters"])
    if not 1 <= it <= len(iters):
        raise InputError(f"iteration {it} is not in the plan {spt['iters']!r} ({len(iters)} iterations)",
                         source=ITER_KEY, fix="ask for an iteration of the plan")
    kind = iters[it - 1]
    out = {**stage_params(spt, stage), "kind": kind}
    if stage == "align":
        mode = align_mode(iters, it, spt["localrefine"]) if kind == "p" else kind
        if kind == "p":
            out["mode"] = mode
        out.update({key: spt[key] for key in ITERATION_KEYS[mode]})
    return out


# ----------------------------------------------------------------------------- tables
@dataclasses.dataclass
class ParticleTable:
    """Fixed metadata of a refinement run (see module docstring). n particles, m subtilts.

    Attributes
    ----------
    path3d : list of str (n,); idx3d, cls, group : int64 (n,); coord : float64 (n, 3) px
    path2d : list of str (m,); idx2d, ptcl, tilt_id : int64 (m,)
    proj : float64 (m, 3, 3); proj_shift : float64 (m, 2) px; defocus_um : float64 (m,)
    """

    path3d: list
    idx3d: np.ndarray
    cls: np.ndarray
    group: np.ndarray
    coord: np.ndarray
    path2d: list
    idx2d: np.ndarray
    ptcl: np.ndarray
    tilt_id: np.ndarray
    proj: np.ndarray
    proj_shift: np.ndarray
    defocus_um: np.ndarray

    @property
    def n3d(self) -> int:
        return len(self.idx3d)

    @property
    def n2d(self) -> int:
        return len(self.idx2d)

    def rows_of(self, particles) -> np.ndarray:
        """Subtilt rows of the given particles (in table order)."""
        return np.flatnonzero(np.isin(self.ptcl, np.asarray(particles)))


@dataclasses.dataclass
class RefineState:
    """Alignment state (see module docstring): rot (n,3,3), shift (n,3), score3d (n,),
    drot (m,3,3), dshift (m,2), score2d (m,), ddef_um (m,)."""

    rot: np.ndarray
    shift: np.ndarray
    score3d: np.ndarray
    drot: np.ndarray
    dshift: np.ndarray
    score2d: np.ndarray
    ddef_um: np.ndarray

    @classmethod
    def identity(cls, table: ParticleTable) -> "RefineState":
        n, m = table.n3d, table.n2d
        return cls(np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 3)), np.zeros(n),
                   np.tile(np.eye(3), (m, 1, 1)), np.zeros((m, 2)), np.zeros(m), np.zeros(m))

    def copy(self) -> "RefineState":
        return RefineState(*(np.array(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def subtilt_transforms(self, table: ParticleTable, rows=None) -> tuple[np.ndarray, np.ndarray]:
        """Model rotations ``Dr·P·R`` (k,3,3) and 2D shifts ``(P t)_xy + d + ds`` (k,2) of subtilt rows."""
        rows = np.arange(table.n2d) if rows is None else np.asarray(rows)
        p = table.ptcl[rows]
        P = table.proj[rows]
        rot = self.drot[rows] @ P @ self.rot[p]
        sh = np.einsum("kij,kj->ki", P[:, :2, :], self.shift[p]) + table.proj_shift[rows] + self.dshift[rows]
        return rot, sh


# ----------------------------------------------------------------------------- p: alignment
@dataclasses.dataclass
class AlignParams:
    """Settings of a p iteration (e2spt_align_subtlt). Resolutions in Å, angles in degrees,
    ``maxshift_px`` in px of the particle box (None: box/6)."""

    maxres_a: float
    minres_a: float | None = None
    mode: str = "global"
    sym: str = "c1"
    maxang_deg: float = 30.0
    maxshift_px: float | None = None
    delta_deg: float | None = 12.0  # config spt_refine.delta_deg (None: EMAN's 7.5)
    npos: int = 4  # config spt_refine.npos (EMAN 32)
    maxiter: int = 50


def align_particles_p(table: ParticleTable, state: RefineState, particles, images: Callable,
                      refs: Sequence[np.ndarray], apix: float, params: AlignParams,
                      progress: Callable[[float], None] | None = None) -> RefineState:
    """Align ``particles`` (indices) to the even/odd references with their subtilts (spec §3.7).

    Each particle uses ``refs[cls]``. Existing subtilt corrections (``dxf``) are kept: the
    subtilt data see ``Dr·P`` and ``d + ds``. Global mode searches the asymmetric unit
    (:func:`emflow.sta.align3d.align_global`); local mode refines from the current ``R, t`` within
    ``maxang_deg`` (:func:`emflow.sta.align3d.align_local`).

    Returns
    -------
    RefineState
        A copy with ``rot, shift, score3d`` of these particles and ``score2d`` of their subtilts set.
    """
    out = state.copy()
    projectors = [VolumeProjector(np.asarray(r, np.float32), pad=2) for r in refs]
    b = projectors[0].box
    minp, maxp = align3d.shells_for_resolution(b, apix, params.maxres_a, params.minres_a)
    particles = np.asarray(particles, dtype=np.int64)
    for n, i in enumerate(particles):
        rows = np.flatnonzero(table.ptcl == i)
        if rows.size == 0:
            out.score3d[i] = 0.0
            continue
        part = align3d.SubtiltParticle.from_images(
            images(rows), state.drot[rows] @ table.proj[rows], table.proj_shift[rows] + state.dshift[rows])
        proj = projectors[int(table.cls[i]) % len(projectors)]
        if params.mode == "global":
            a = align3d.align_global(proj, part, sym=params.sym, minp=minp, maxp=maxp, delta=params.delta_deg,
                                     maxshift=params.maxshift_px, npos=params.npos, maxiter=params.maxiter)
        else:
            a = align3d.align_local(proj, part, state.rot[i], state.shift[i], sym=params.sym, minp=minp,
                                    maxp=maxp, maxang=params.maxang_deg, maxshift=params.maxshift_px,
                                    maxiter=params.maxiter)
        out.rot[i], out.shift[i], out.score3d[i] = a.rotation, a.shift, a.score
        out.score2d[rows] = a.tilt_scores
        if progress is not None:
            progress((n + 1) / len(particles))
    return out


# ----------------------------------------------------------------------------- keep + make3d
def _quantile_keep(values: np.ndarray, frac: float) -> np.ndarray:
    """Rows with value ≤ the ``frac`` quantile (all rows if the values do not vary or frac ≥ 1)."""
    if frac >= 1.0 or values.size == 0 or np.ptp(values) == 0:
        return np.ones(values.shape, dtype=bool)
    return values <= np.quantile(values, frac)


def select_subtilts(table: ParticleTable, state: RefineState, keep=(1.0, 1.0, 1.0),
                    weighted: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Three-stage keep and insertion weights of e2spa_make3d (spec §3.9, §7.13).

    (1) particles whose mean subtilt score is above the ``keep[0]`` quantile are dropped;
    (2) subtilts above the ``keep[1]`` quantile of the 2D score; (3) subtilts whose correction
    shift ``|ds|`` is above the ``keep[2]`` quantile. Weights ``max(0, −score)/max(−score)``
    (1 when no scores vary or ``weighted`` is False).

    Returns
    -------
    keep : bool (m,); weights : float64 (m,)
    """
    s2 = state.score2d
    sums = np.bincount(table.ptcl, s2, minlength=table.n3d)
    cnt = np.bincount(table.ptcl, minlength=table.n3d)
    has = cnt > 0
    mean3d = np.where(has, sums / np.maximum(cnt, 1), np.inf)
    k3 = np.zeros(table.n3d, dtype=bool)
    k3[has] = _quantile_keep(mean3d[has], keep[0])
    sel = k3[table.ptcl] & _quantile_keep(s2, keep[1])
    drift = np.hypot(state.dshift[:, 0], state.dshift[:, 1])
    sel &= _quantile_keep(drift, keep[2])
    neg = np.maximum(0.0, -s2)
    if weighted and neg.max() > 0:
        w = neg / neg.max()
    else:
        w = np.ones(table.n2d)
    return sel, w


def edge_mean_subtract(images: np.ndarray) -> np.ndarray:
    """Subtract each image's edge-pixel mean (float32, (k, b, b))."""
    im = np.asarray(images, dtype=np.float32)
    edge = np.concatenate([im[:, 0, :], im[:, -1, :], im[:, 1:-1, 0], im[:, 1:-1, -1]], axis=1)
    return im - edge.mean(axis=1, dtype=np.float64)[:, None, None].astype(np.float32)


def _reflip(images: np.ndarray, df_um: np.ndarray, ddef_um: np.ndarray, apix: float, microscope: dict) -> np.ndarray:
    """Re-phase-flip subtilts flipped at ``df`` to ``df + ddef``: FT × sign(CTF(df))·sign(CTF(df+ddef))."""
    b = images.shape[-1]
    mk = dict(voltage_kv=microscope.get("voltage_kv", 300.0), cs_mm=microscope.get("cs_mm", 2.7),
              ampcont=microscope.get("ampcont", 0.1))
    c0 = ctf_2d_stack([CTF(defocus_um=float(d), **mk) for d in df_um], (b, b), apix)
    c1 = ctf_2d_stack([CTF(defocus_um=float(d + e), **mk) for d, e in zip(df_um, ddef_um)], (b, b), apix)
    F = fourier.ft(images, axes=(-2, -1)) * (np.sign(c0) * np.sign(c1)).astype(np.float32)
    return fourier.ift(F, (b, b), axes=(-2, -1)).astype(np.float32)


def reconstruct_halves(table: ParticleTable, state: RefineState, rows, images: Callable, box: int,
                       sym="c1", keep_mask=None, weights=None, apix: float | None = None,
                       microscope: dict | None = None, pad: float = 2.0,
                       batch: int = 256) -> list[Reconstructor]:
    """Partial even/odd reconstructions (trilinear Fourier insertion) of subtilt ``rows``.

    Subtilts outside ``keep_mask`` are skipped; each is edge-mean subtracted, re-flipped when
    its ``ddef_um`` ≠ 0 (needs ``apix`` and ``microscope``), and inserted with rotation
    ``Dr·P·R``, its shift ``s`` undone and weight ``weights[row]``. Merge partials with
    :meth:`Reconstructor.merge` and finish with :meth:`Reconstructor.finish`.

    Returns
    -------
    [even, odd] : list of Reconstructor
    """
    rows = np.asarray(rows, dtype=np.int64)
    if keep_mask is not None:
        rows = rows[np.asarray(keep_mask)[rows]]
    w_all = np.ones(table.n2d) if weights is None else np.asarray(weights, np.float64)
    recs = [Reconstructor(box, pad=pad, kernel="trilinear", sym=sym) for _ in range(2)]
    # one half's rows per batch, inserted in one kernel call: the kernel sweeps the accumulator once per call
    # (measured, 1 thread, quiet: 15-19 % less time per subtilt at box 64 than calls of 64; same at box 128)
    half_of = table.cls[table.ptcl[rows]] % 2
    for h in (0, 1):
        rows_h = rows[half_of == h]
        for a in range(0, rows_h.size, batch):
            r = rows_h[a:a + batch]
            img = edge_mean_subtract(images(r))
            flip = (state.ddef_um[r] != 0) & np.isfinite(table.defocus_um[r])
            if flip.any():
                if apix is None or microscope is None:
                    raise ValueError("reconstruct_halves: defocus offsets need apix and microscope")
                img[flip] = _reflip(img[flip], table.defocus_um[r][flip], state.ddef_um[r][flip], apix, microscope)
            rot, sh = state.subtilt_transforms(table, r)
            recs[h].insert(img, rot, weights=w_all[r], shifts=sh, chunk=batch)
    return recs

