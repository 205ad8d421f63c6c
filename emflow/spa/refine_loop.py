"""One e2refine iteration in-process (spec §4.0): project3d → simmx → classify → classaverage → make3d.

The Snakemake rules call the same stage functions one file at a time; :func:`run_iteration`
chains them for tests and small runs, and :class:`RefineOptions` maps the ``spa:`` config
section onto the stage option objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from emflow.errors import InputError
from emflow.spa.classaverage import ClassAverageOptions, class_average_blocks, class_ssnr
from emflow.spa.classify import classify
from emflow.spa.make3d import Make3DOptions, make3d
from emflow.spa.simmx import SimmxOptions, ctf_snr_rings, simmx, twostage_pairs

PROJECTORS = ("standard", "fourier")


@dataclass
class RefineOptions:
    """The e2refine options of the ``spa:`` config section (names as in the spec)."""

    sym: str = "c1"
    orientgen: str = "eman:delta=6:inc_mirror=0:perturb=0"
    projector: str = "standard"
    apix: float | None = None  # Å/px: from the particles' header (spa.apix null); CTF and mass stages need it
    mass: float = 0.0
    shrink: int = 1
    twostage: int = 0
    simcoarse_shrink: int = 2  # helper F: coarse-to-fine simmx (config spa.simcoarse_*)
    simcoarse_keep: int = 8
    simcoarse_grid: float = 1.5  # local search of the coarse stage (config spa.simcoarse_grid)
    simcmp: str = "frc:zeromask=1:snrweight=1"
    simalign: str = "rotate_translate_flip"
    simaligncmp: str = "ccc"
    simralign: str | None = None
    simraligncmp: str = "ccc"
    simmask: float = 0.0  # radius of the 0/1 comparison mask in px (0 = none)
    maxshift: int | None = None  # largest 2D shift (full-size px) in simmx and class averaging; None: no limit
    prefilt: bool = False
    sep: int = 1
    simvec: bool = False
    classiter: int = 1
    classcmp: str = "frc:snrweight=1"
    classalign: str = "rotate_translate_flip"
    classaligncmp: str = "ccc"
    classralign: str | None = "refine"
    classraligncmp: str = "ccc"
    classaverager: str = "ctf"
    classkeep: float = 0.8
    classkeepsig: bool = False
    classnormproc: str | None = "normalize.edgemean"
    classrefsf: bool = False
    classautomask: bool = False
    pad: int = 0
    recon: str = "fourier"
    m3dkeep: float = 0.8
    m3dkeepsig: bool = False
    m3diter: int = 2
    m3dpreprocess: str | None = "normalize.edgemean"
    m3dpostprocess: str | None = None
    m3dsetsf: np.ndarray | None = field(default=None, repr=False)
    automask3d: list | None = None

    @classmethod
    def from_config(cls, spa: dict, **override) -> "RefineOptions":
        """Build from the ``spa:`` config dict (unknown keys such as ``iter``/``path`` are ignored)."""
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in spa.items() if k in names and k != "m3dsetsf"}
        kw.update(override)
        if not isinstance(kw.get("orientgen", ""), str):
            raise InputError("a list orientgen needs an iteration", source="spa.orientgen",
                             fix="pick one with orientgen_for_iteration(spa['orientgen'], it)")
        return cls(**kw)

    def simmx_options(self) -> SimmxOptions:
        return SimmxOptions(align=self.simalign, aligncmp=self.simaligncmp, ralign=self.simralign or None,
                            raligncmp=self.simraligncmp, cmp=self.simcmp, shrink=max(1, self.shrink),
                            prefilt=self.prefilt, apix=self.apix, maxshift=self.simmx_maxshift(),
                            coarse_shrink=self.simcoarse_shrink, coarse_keep=self.simcoarse_keep,
                            coarse_grid=self.simcoarse_grid)

    def simmx_maxshift(self) -> int | None:
        """``maxshift`` in the pixels of the simmx images (shrunk by ``shrink``)."""
        if self.maxshift is None:
            return None
        return max(1, int(round(self.maxshift / max(1, self.shrink))))

    def classaverage_options(self) -> ClassAverageOptions:
        return ClassAverageOptions(iter=self.classiter, align=self.classalign, aligncmp=self.classaligncmp,
                                   ralign=self.classralign or None, raligncmp=self.classraligncmp,
                                   averager=self.classaverager, cmp=self.classcmp, keep=self.classkeep,
                                   keepsig=self.classkeepsig, normproc=self.classnormproc,
                                   setsfref=self.classrefsf, automask=self.classautomask, apix=self.apix,
                                   maxshift=self.maxshift)

    def make3d_options(self) -> Make3DOptions:
        return Make3DOptions(recon=self.recon, pad=self.pad, sym=self.sym, iter=self.m3diter, keep=self.m3dkeep,
                             keepsig=self.m3dkeepsig, preprocess=self.m3dpreprocess,
                             postprocess=self.m3dpostprocess, setsf=self.m3dsetsf, apix=self.apix)


def orientgen_for_iteration(orientgen: str | list[str], iteration: int) -> str:
    """The orientation generator of 1-based ``iteration``: ``orientgen`` itself, or from a list
    (one string per iteration, the last repeated), e.g. a coarse-to-fine angular step."""
    if isinstance(orientgen, str):
        return orientgen
    if not orientgen:
        raise InputError("empty orientgen list", source="spa.orientgen", fix="give one EMAN string or a list of them")
    return orientgen[min(int(iteration), len(orientgen)) - 1]


# The ``spa:`` keys each stage reads: the rules pass only these as params, so that changing,
# say, ``classkeep`` reruns class averaging onwards but not the projections or the simmx.
STAGE_KEYS = {
    "prepare": ("apix",),
    "startmodel": ("startingmodel", "blob_radius_a"),
    "project3d": ("sym", "projector"),  # + the iteration's orientgen
    "simmx": ("chunk_size", "shrink", "twostage", "simcmp", "simalign", "simaligncmp", "simralign", "simraligncmp",
              "simmask", "prefilt", "maxshift", "simcoarse_shrink", "simcoarse_keep", "simcoarse_grid",
              "sym"),  # sym: the angular distances of the coarse stage's local search
    "classify": ("sep", "simvec"),
    "classaverage": ("classiter", "classcmp", "classalign", "classaligncmp", "classralign", "classraligncmp",
                     "classaverager", "classkeep", "classkeepsig", "classnormproc", "classrefsf", "classautomask",
                     "maxshift"),
    "make3d": ("sym", "pad", "recon", "m3dkeep", "m3dkeepsig", "m3dsetsf", "m3diter", "m3dpreprocess",
               "m3dpostprocess", "mass", "automask3d"),
}


def check_options(spa: dict, n_iter: int) -> list[int]:
    """Validate every e2refine option of the ``spa:`` section (EMAN ``--check``) without data.

    Returns the number of reference projections of each iteration. Raises :class:`InputError`
    naming the key on an unparsable comparator, aligner, processor or orientation string.
    """
    schedule = spa.get("orientgen", RefineOptions.orientgen)
    counts = []
    for it in range(1, n_iter + 1):
        opts = RefineOptions.from_config(spa, orientgen=orientgen_for_iteration(schedule, it))
        counts.append(len(projection_orientations(opts)))
    opts.simmx_options(), opts.classaverage_options(), opts.make3d_options()
    return counts


def projection_orientations(opts: RefineOptions, rng: np.random.Generator | None = None) -> np.ndarray:
    """EMAN ``(az, alt, phi)`` degrees ``(n, 3)`` of the reference projections."""
    from emflow.geometry.orientations import orientations_from_string

    return np.asarray(orientations_from_string(opts.orientgen, sym=opts.sym, rng=rng or np.random.default_rng(0)))


def project3d(model: np.ndarray, eulers: np.ndarray, projector: str = "standard") -> np.ndarray:
    """Reference projections (e2project3d) followed by ``normalize.circlemean`` (e2refine)."""
    from emflow.geometry import eman_to_matrix
    from emflow.projection import project, project_real

    if projector not in PROJECTORS:
        raise InputError(f"unknown projector {projector!r}", source="spa.projector", fix=f"use one of {PROJECTORS}")
    R = eman_to_matrix(eulers[:, 0], eulers[:, 1], eulers[:, 2])
    proj = project_real(model, R) if projector == "standard" else project(model, R)
    b = proj.shape[-1]
    yy, xx = np.indices((b, b))
    ring = np.abs(np.hypot(yy - b // 2, xx - b // 2) - (b // 2 - 1)) < 1.0
    proj = proj - proj[:, ring].mean(axis=1)[:, None, None]  # circle mean to 0, as normalize.circlemean
    sd = proj.reshape(len(proj), -1).std(axis=1)
    return (proj / np.where(sd > 0, sd, 1)[:, None, None]).astype(np.float32)


def phase_flip_particles(stack: np.ndarray, ctfs, apix: float) -> np.ndarray:
    """Phase-flip protein-white particles (``image = IFT(−CTF·FT(P))``, the RELION/EMAN box
    convention of :func:`emflow.demo.simulate.simulate_spa`) so that the result is ``|CTF|·P``.

    :func:`emflow.ctf.phase_flip` multiplies by ``sign(CTF)`` with ``CTF = −sin χ``, which for
    protein-white data gives ``−|CTF|·P``; the sign is restored here.
    """
    from emflow.ctf import phase_flip

    return -phase_flip(np.asarray(stack, np.float32), ctfs, apix)


def ctf_arrays(ctfs, box: int, apix: float, shrink: int = 1, signal: np.ndarray | None = None):
    """``(ctf_abs (n, b, b//2+1), snr_full (n, b//2), snr_shrunk)`` for CTF-aware stages, or Nones.

    ``signal``: the reference projections ``[n, b, b]``, whose power spectrum shapes the SNR
    weights (:func:`emflow.spa.simmx.ctf_snr_rings`); every stage passes them.
    """
    if not ctfs:
        return None, None, None
    if apix is None:
        raise InputError("the particles have CTFs but no pixel size reached the CTF stages", source="spa.apix",
                         fix="give the particles' Å/px in their header (spa_prepare writes it) or set spa.apix")
    from emflow.ctf import ctf_2d_stack

    ctf_abs = np.abs(ctf_2d_stack(ctfs, (box, box), apix))
    return (ctf_abs, ctf_snr_rings(ctfs, box, apix, 1, signal=signal),
            ctf_snr_rings(ctfs, box, apix, shrink, signal=signal))


def stage_project(model: np.ndarray, opts: RefineOptions, rng: np.random.Generator | None = None):
    """Stage 1 (e2project3d): ``(eulers (n, 3), projections (n, b, b), rotations (n, 3, 3))``."""
    from emflow.geometry import eman_to_matrix

    eulers = projection_orientations(opts, rng)
    proj = project3d(model, eulers, opts.projector)
    return eulers, proj, eman_to_matrix(eulers[:, 0], eulers[:, 1], eulers[:, 2])


def stage_simmx(align_set: np.ndarray, proj: np.ndarray, opts: RefineOptions, *, ctfs=None,
                progress: Callable[[float], None] | None = None, rotations: np.ndarray | None = None):
    """Stage 2 (e2simmx / e2simmx2stage) of the particles ``align_set`` (the raw or ``usefilt`` stack,
    or one chunk of it, with their ``ctfs``) against ``proj``: ``(simmx (6, n, n_proj), pairs or None)``.
    ``rotations`` ``(n_proj, 3, 3)``: the projections' orientations (:func:`stage_project`), which let the
    coarse stage search locally (``simcoarse_grid``, :func:`emflow.spa.simmx.coarse_candidates`) in the
    point group ``opts.sym``; without them every projection is scored.

    The comparison mask (``simmask``), the CTF SNR rings and the two-stage seeding are built here, so the
    per-chunk rule and :func:`run_iteration` compute the same matrix.
    """
    box = align_set.shape[-1]
    _, snr_full, snr_shrunk = ctf_arrays(ctfs, box, opts.apix, max(1, opts.shrink), signal=proj)
    so = opts.simmx_options()
    mask = None
    if opts.simmask > 0:
        from emflow.masks import soft_circle
        mask = (soft_circle(box, opts.simmask, 0.0) > 0.5).astype(np.float32)
    pairs = None
    if opts.twostage > 0:
        pairs = twostage_pairs(align_set, proj, so, opts.twostage, particle_snr=snr_full)
    sym_matrices = None
    if rotations is not None:
        from emflow.geometry import get_symmetry

        sym_matrices = get_symmetry(opts.sym).matrices
    mx = simmx(align_set, proj, so, mask=mask, particle_snr=snr_shrunk, pairs=pairs, progress=progress,
               rotations=rotations, sym_matrices=sym_matrices)
    return mx, pairs


def simvec_scores(score: np.ndarray) -> np.ndarray:
    """EMAN ``e2classify --simvec`` (spec §4.3): classify by the pattern of the whole score row.

    Each particle's row (``(n_ptcl, n_proj)``, lower is better; non-finite entries take the row's
    largest finite value) is centred and scaled to unit length; the reference vector of projection
    ``N`` is the unit-length mean of the rows whose best column is ``N``; the new score of
    (particle, ``N``) is the squared distance ``|row − ref_N|² = 2 − 2·row·ref_N``. Projections
    that are no particle's best get ``+inf``. float32.
    """
    s = np.asarray(score, np.float64).copy()
    finite = np.isfinite(s)
    rowmax = np.where(finite, s, -np.inf).max(axis=1, keepdims=True)
    s = np.where(finite, s, np.where(np.isfinite(rowmax), rowmax, 0.0))
    s -= s.mean(axis=1, keepdims=True)
    s /= np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-30)
    best = np.argmin(np.where(finite, score, np.inf), axis=1)
    n_proj = s.shape[1]
    ref = np.zeros((n_proj, n_proj))
    np.add.at(ref, best, s)
    norm = np.linalg.norm(ref, axis=1)
    used = norm > 0
    ref[used] /= norm[used, None]
    out = 2.0 - 2.0 * (s @ ref.T)
    out[:, ~used] = np.inf
    return out.astype(np.float32)


def stage_classify(mx: np.ndarray, opts: RefineOptions) -> np.ndarray:
    """Stage 3 (e2classify): the classmx ``(7, n_ptcl, sep)``; with ``simvec`` on the score-row patterns."""
    if opts.simvec:
        mx = np.array(mx, np.float32, copy=True)
        mx[0] = simvec_scores(mx[0])
    return classify(mx, opts.sep)


def stage_classaverage(particles, cls: np.ndarray, proj: np.ndarray, opts: RefineOptions, *, ctfs=None,
                       usefilt=None, progress: Callable[[float], None] | None = None, block: int | None = None):
    """Stage 4 (e2classaverage): ``(averages (n_proj, b, b), info)``; ``info["class_ssnr"]`` holds each
    class's SSNR curve (:func:`emflow.spa.classaverage.class_ssnr`).

    ``particles`` (n, b, b) with their ``ctfs`` and optional ``usefilt`` stack, all in memory; or a reader
    ``(n, read)`` with ``read(rows) -> (particles, ctfs or None, usefilt or None)`` of those rows, read
    ``block`` particles at a time (:func:`emflow.spa.classaverage.class_average_blocks`: the job's memory is
    bounded by the block). Same averages either way."""
    if isinstance(particles, tuple):
        n, read = particles
    else:
        n = len(particles)

        def read(rows):
            return (particles[rows], None if ctfs is None else [ctfs[i] for i in rows],
                    None if usefilt is None else usefilt[rows])

    def load(rows):
        stack, c, uf = read(rows)
        ctf_abs, snr_full, _ = ctf_arrays(c, stack.shape[-1], opts.apix, signal=proj)
        return stack, uf, ctf_abs, snr_full

    avgs, info = class_average_blocks(n, load, cls, proj, opts.classaverage_options(), block=block, progress=progress)
    info["class_ssnr"] = class_ssnr(avgs, proj, info["ptcl_repr"])
    return avgs, info


def stage_make3d(avgs: np.ndarray, R: np.ndarray, ptcl_repr: np.ndarray, opts: RefineOptions):
    """Stage 5 (e2make3d + mass/automask3d): ``(threed, threed_filt, info)``; ``threed_filt`` is the
    next iteration's model (``normalize.bymass`` with ``mass``, times ``mask.auto3d`` with ``automask3d``)."""
    vol, info = make3d(np.asarray(avgs, np.float32), R, ptcl_repr, opts.make3d_options())
    filt = vol
    if opts.mass > 0:
        from emflow.filters import normalize_by_mass

        if opts.apix is None:
            raise InputError("spa.mass needs the map's pixel size", source="spa.mass",
                             fix="give the particles' Å/px in their header or set spa.apix")
        filt = normalize_by_mass(filt, opts.apix, opts.mass)
    if opts.automask3d:
        from emflow.masks import auto_mask
        thr, radius, nshells, nshellsgauss, nmaxseed = opts.automask3d
        filt = filt * auto_mask(filt, opts.apix, threshold=thr, nshells=int(nshells), nshellsgauss=int(nshellsgauss),
                                nmaxseed=int(nmaxseed), radius=radius)
    return vol, np.asarray(filt, np.float32), info


def run_iteration(model: np.ndarray, particles: np.ndarray, opts: RefineOptions, *, ctfs=None,
                  usefilt: np.ndarray | None = None, rng=None,
                  progress: Callable[[str, float], None] | None = None, timings: dict | None = None) -> dict:
    """One refinement iteration on phase-flipped particles; returns every intermediate.

    Chains the stage functions the Snakemake rules call one file at a time (:func:`stage_project`,
    :func:`stage_simmx`, :func:`stage_classify`, :func:`stage_classaverage`, :func:`stage_make3d`), so
    this path and the workflow's compute the same maps. ``timings``: optional dict that receives the
    wall seconds of each stage.
    """
    clock = _StageClock(timings)
    eulers, proj, R = stage_project(model, opts, rng)
    clock("project3d")
    cb = (lambda f: progress("simmx", f)) if progress else None
    mx, pairs = stage_simmx(particles if usefilt is None else usefilt, proj, opts, ctfs=ctfs, progress=cb,
                            rotations=R)
    clock("simmx")
    cls = stage_classify(mx, opts)
    avgs, info = stage_classaverage(particles, cls, proj, opts, ctfs=ctfs, usefilt=usefilt)
    clock("classaverage")
    vol, filt, m3d = stage_make3d(avgs, R, info["ptcl_repr"], opts)
    clock("make3d")
    return {"eulers": eulers, "projections": proj, "simmx": mx, "classify": cls, "classes": avgs,
            "class_info": info, "make3d_R": R, "threed": vol, "threed_filt": filt, "make3d_info": m3d, "pairs": pairs}


def calibrate_cost(spa: dict, box: int, apix: float, *, ctf: bool = True, n_ptcl: int = 64, n_proj: int = 24,
                   seed: int = 0, repeats: int = 2) -> dict:
    """Measured cost of one iteration's stages per unit on this machine, from a tiny run (EMAN ``--check``
    cannot say this): ``{"simmx_pair", "classaverage_ptcl", "per_proj"}`` seconds per (particle ×
    projection) pair, per particle, and per projection (project3d + make3d).

    The run uses the ``spa`` options on ``n_ptcl`` noisy projections of a Gaussian ellipsoid (box
    ``box``, with CTFs when ``ctf``) against ``n_proj`` references; a first smaller pass compiles the
    kernels so the timing excludes the JIT, and the ``repeats`` measured passes are averaged (a machine
    shared with other jobs varies from second to second). Estimate an iteration with :func:`estimate_iteration_seconds`.
    """
    from emflow.ctf import CTF

    rng = np.random.default_rng(seed)
    zz, yy, xx = (np.indices((box,) * 3) - box // 2) / max(box / 8, 1)
    model = np.exp(-(xx**2 / 4 + yy**2 / 2 + zz**2)).astype(np.float32)
    opts = RefineOptions.from_config(spa, apix=apix, orientgen="eman:delta=15:inc_mirror=0:perturb=0", sym="c1")
    eulers = projection_orientations(opts)
    runs: list[dict] = []
    for npt, npr in [(8, 4)] + [(n_ptcl, n_proj)] * repeats:  # warm-up (numba compilation), then measured passes
        ev = eulers[rng.choice(len(eulers), npr, replace=False)]
        t: dict = {}
        clock = _StageClock(t)
        proj = project3d(model, ev, opts.projector)
        parts = (proj[rng.integers(0, npr, npt)] + rng.normal(0, 2.0, (npt, box, box))).astype(np.float32)
        ctfs = [CTF(defocus_um=1.0 + 1.5 * rng.random()) for _ in range(npt)] if ctf else None
        clock("project3d")
        mx, _ = stage_simmx(parts, proj, opts, ctfs=ctfs)
        clock("simmx")
        cls = stage_classify(mx, opts)
        avgs, info = stage_classaverage(parts, cls, proj, opts, ctfs=ctfs)
        clock("classaverage")
        from emflow.geometry import eman_to_matrix

        stage_make3d(avgs, eman_to_matrix(ev[:, 0], ev[:, 1], ev[:, 2]), np.maximum(info["ptcl_repr"], 1), opts)
        clock("make3d")
        runs.append({"simmx_pair": t["simmx"] / (npt * npr), "classaverage_ptcl": t["classaverage"] / npt,
                     "per_proj": (t["project3d"] + t["make3d"]) / npr})
    return {k: float(np.mean([r[k] for r in runs[1:]])) for k in runs[0]}


def estimate_iteration_seconds(cost: dict, n_particles: int, n_projections: int) -> float:
    """Seconds of one iteration from :func:`calibrate_cost`: simmx ∝ particles × projections, class
    averaging ∝ particles, projection and reconstruction ∝ projections (one process, this machine)."""
    return float(cost["simmx_pair"] * n_particles * n_projections + cost["classaverage_ptcl"] * n_particles
                 + cost["per_proj"] * n_projections)


class _StageClock:
    """Records wall seconds since the previous call under a stage name (no-op without a dict)."""

    def __init__(self, timings: dict | None):
        import time

        self._now = time.perf_counter
        self.timings, self.last = timings, time.perf_counter()

    def __call__(self, stage: str) -> None:
        if self.timings is not None:
            now = self._now()
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
            self.last = now
