"""3D reconstruction from class averages (EMAN ``e2make3d``, spec §4.5) and map processors.

Class averages are inserted in Fourier space at their ``xform.projection`` rotations with weight
``ptcl_repr`` (:class:`emflow.reconstruct.Reconstructor`, symmetry applied at insertion). With
``iter ≥ 2`` every pass before the last measures each slice's agreement with the current map
(EMAN ``determine_slice_agreement``): ``absqual = Σ Re(V·S*)/√(Σ|V|²·Σ|S|²)`` and
``norm = √(Σ|V|²/Σ|S|²)`` over Fourier rings ``1 ≤ r < ny/2``, where ``V`` is the map's central
section (its projection) at the slice's orientation; slices are rescaled by ``norm`` and those
below the keep cutoff on ``absqual`` (EMAN ``--keepabs``) are left out of the next pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emflow.errors import InputError
from emflow.spa import cmp as cmpmod

RECONS = ("fourier", "wiener_fourier")
PROCESSORS = ("normalize.edgemean", "normalize", "filter.lowpass.gauss", "filter.lowpass.tophat",
              "filter.highpass.gauss", "mask.soft")


@dataclass
class Make3DOptions:
    """e2make3d options as e2refine passes them (config keys ``spa.m3d*``, ``recon``, ``pad``, ``sym``)."""

    recon: str = "fourier"
    pad: int = 0
    sym: str = "c1"
    iter: int = 2
    keep: float = 0.8
    keepsig: bool = False
    preprocess: str | None = "normalize.edgemean"
    postprocess: str | None = None
    setsf: np.ndarray | None = None
    kernel: str = "gauss_2"
    apix: float | None = None

    def __post_init__(self):
        if self.recon not in RECONS:
            raise InputError(f"unknown reconstructor {self.recon!r}", source="spa.recon", fix=f"use one of {RECONS}")
        if self.iter < 1:
            raise InputError("m3diter must be >= 1", source="spa.m3diter")
        for key, spec in (("spa.m3dpreprocess", self.preprocess), ("spa.m3dpostprocess", self.postprocess)):
            for proc in _split_procs(spec):
                parse_processor(proc, key)


def _split_procs(spec):
    if not spec:
        return []
    return [s for s in (spec if isinstance(spec, (list, tuple)) else str(spec).split(",")) if s and s != "none"]


def parse_processor(spec: str, source: str) -> tuple[str, dict]:
    """``"filter.lowpass.gauss:cutoff_freq=0.05"`` → ``(name, {"cutoff_freq": 0.05})``."""
    name, *items = str(spec).split(":")
    if name not in PROCESSORS:
        raise InputError(f"unsupported processor {name!r}", source=source, fix=f"use one of {PROCESSORS}")
    opts = {}
    for it in items:
        k, _, v = it.partition("=")
        try:
            opts[k.strip()] = float(v)
        except ValueError:
            raise InputError(f"processor option {it!r} is not key=number", source=source) from None
    if name.startswith("filter.") and "cutoff_freq" not in opts:
        raise InputError(f"{name} needs cutoff_freq (1/Å)", source=source)
    return name, opts


def apply_processors(x: np.ndarray, spec, apix: float | None, ndim: int) -> np.ndarray:
    """Apply EMAN processors in order to an image stack (``ndim=2``) or a volume (``ndim=3``)."""
    from emflow import filters, masks

    x = np.asarray(x, np.float32)
    for proc in _split_procs(spec):
        name, o = parse_processor(proc, "processor")
        if name == "normalize.edgemean":
            x = filters.normalize_edgemean(x, ndim=ndim)
        elif name == "normalize":
            x = np.stack([filters.normalize(v) for v in x]) if x.ndim > ndim else filters.normalize(x)
        elif name.startswith("filter."):
            if not apix:
                raise InputError(f"{name} needs the pixel size", source="spa.apix")
            res = 1.0 / o["cutoff_freq"]
            fn = {"filter.lowpass.gauss": filters.lowpass_gauss, "filter.lowpass.tophat": filters.lowpass_tophat,
                  "filter.highpass.gauss": filters.highpass_gauss}[name]
            x = fn(x, apix, res, ndim=ndim)
        elif name == "mask.soft":
            n = x.shape[-1]
            r = o.get("outer_radius", -2)
            radius = n / 2 + r if r < 0 else r
            x = x * masks.soft_sphere(n, radius, o.get("width", 2.0), ndim=ndim)
    return np.asarray(x, np.float32)


def slice_agreement(vol: np.ndarray, images: np.ndarray, rotations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(absqual, norm)`` of each image against the map's projection at its rotation."""
    from emflow.projection import project

    proj = project(vol, rotations)
    s = cmpmod.frc_curves(images, proj)
    ring = slice(1, None)
    dot = s[:, 0, ring].sum(axis=1)
    p_img, p_vol = s[:, 1, ring].sum(axis=1), s[:, 2, ring].sum(axis=1)
    den = np.sqrt(p_img * p_vol)
    absqual = np.divide(dot, den, out=np.zeros_like(dot), where=den > 0)
    norm = np.sqrt(np.divide(p_vol, p_img, out=np.ones_like(p_vol), where=p_img > 0))
    return absqual, norm


def keep_cutoff(absqual: np.ndarray, keep: float, keepsig: bool) -> float:
    """EMAN ``--keepabs`` cutoff: keep the top ``keep`` fraction, or ``mean − keep·σ``."""
    if keepsig:
        return float(absqual.mean() - keep * absqual.std())
    if keep >= 1:
        return -np.inf
    n = max(1, int(keep * len(absqual)))
    return float(np.sort(absqual)[-n])


def make3d(averages: np.ndarray, rotations: np.ndarray, ptcl_repr: np.ndarray, opts: Make3DOptions | None = None):
    """Reconstruct a map from class averages.

    Parameters
    ----------
    averages : (n, b, b) float32
        Class averages in their projection frame.
    rotations : (n, 3, 3) float64
        ``xform.projection`` of each average.
    ptcl_repr : (n,)
        Particles per average (insertion weight); 0 → not used.
    opts : Make3DOptions

    Returns
    -------
    vol : (b, b, b) float32
    info : dict with ``used`` (indices inserted in the last pass), ``excluded`` (left out by
        quality), ``absqual``/``norm`` (n,) from the last agreement pass (NaN when not measured).
    """
    from emflow.reconstruct import Reconstructor

    opts = opts or Make3DOptions()
    averages = np.asarray(averages, np.float32)
    n, b = len(averages), averages.shape[-1]
    w = np.asarray(ptcl_repr, np.float64)
    valid = np.nonzero(w > 0)[0]
    if len(valid) == 0:
        raise InputError("no class average has particles; nothing to reconstruct", source="spa.classkeep",
                         fix="check the particles and starting model (or raise classkeep)")
    img = apply_processors(averages[valid], opts.preprocess, opts.apix, 2)
    edge = np.zeros((b, b), bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    img = img - img[:, edge].mean(axis=1)[:, None, None]  # edge mean to 0 (critical, spec §4.5)
    R = np.asarray(rotations, np.float64)[valid]
    pad = max(1.0, opts.pad / b) if opts.pad else 2.0  # pad = 0: Reconstructor's 2× oversampling
    scale = np.ones(len(valid))
    include = np.ones(len(valid), bool)
    absqual = np.full(n, np.nan)
    norm = np.full(n, np.nan)
    for it in range(opts.iter):
        rec = Reconstructor(b, pad=pad, kernel=opts.kernel, sym=opts.sym)
        rec.insert(img[include] * scale[include, None, None].astype(np.float32), R[include], weights=w[valid][include])
        vol = rec.finish(wiener=opts.recon == "wiener_fourier")
        if it < opts.iter - 1:
            aq, nm = slice_agreement(vol, img, R)
            absqual[valid], norm[valid] = aq, nm
            scale = np.where(np.isfinite(nm) & (nm > 0), nm, 1.0)
            include = aq >= keep_cutoff(aq, opts.keep, opts.keepsig)
    if opts.setsf is not None:
        from emflow.filters import set_structure_factor
        vol = set_structure_factor(vol, opts.setsf)
    vol = apply_processors(vol, opts.postprocess, opts.apix, 3)
    return vol, {"used": valid[include], "excluded": valid[~include], "absqual": absqual, "norm": norm}


def read_structure_factor(path: str, box: int, apix: float) -> np.ndarray:
    """Per-shell power ``(box//2+1,)`` from a two-column text file (s in 1/Å, power), EMAN ``strucfac.txt``."""
    try:
        tab = np.loadtxt(path, comments="#", ndmin=2)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read structure factor: {err}", source=path,
                         fix="give two columns: spatial frequency (1/Å) and power") from None
    if tab.shape[1] < 2:
        raise InputError("structure factor file needs two columns", source=path)
    s = np.arange(box // 2 + 1) / (box * apix)
    return np.interp(s, tab[:, 0], tab[:, 1])
