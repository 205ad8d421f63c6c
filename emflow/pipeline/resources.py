"""Memory (``mem_mb``) and run time (``runtime``, minutes) of each rule as functions of its input size.

The ``resources:`` blocks of ``rules/*.smk`` call these, so a SLURM job asks for what its input needs
(a 2k tilt series gets more than the tiny demo's) and a retry (``attempt`` 2, the profiles'
``retries: 1``) asks for more. Every function is pure and grows with its size arguments; the few
helpers that read a file (``plan_json``, ``set_mb_per_particle``) only look up those sizes.

Where the coefficients come from (``benchmarks/scale_workflow.py``: each job's Snakemake benchmark
file and the peak RSS (``VmHWM``) it logs at exit; README "Scale benchmark"; the JSONs in
``benchmarks/scale/``): two runs of the tomography workflow on simulated IMOD-style data, 41 tilts,
5.24 Å/px, 70S ribosomes at box 64 (128² subtilts), bin-4 tomograms 64 voxels thick, chunks of 250:

* run A: 2048² tilt series (688 MB), 1,100 particles, tomogram 512² × 64 (67 MB);
* run B: 1024² tilt series (172 MB), 250 particles, tomogram 256² × 64 (17 MB);

both on 2 cores shared with five other sessions (load average 10–25), so times are upper bounds.
A third run (S2: two 1024² tomograms, 392 + 328 particles) gave the same per-tomogram peaks for both
tomograms. The single-particle rules (``spa_*``) come from three runs of the demo's SPA part
(1,000 × 64², 2,000 × 96², the demo's 4,000 × 64²; see the SPA block of coefficients).
Where a rule was measured at both sizes, memory is the line through both points; where at one
size, the docstring says so.

Memory: the fitted peak (RSS includes file pages of memory-mapped inputs) × ``MEM_MARGIN``, at least
``MIN_MEM``. Run time: measured wall time per unit of input × ``TIME_MARGIN``, at least
``MIN_RUNTIME`` minutes. Both × ``attempt``. The coefficients are at the end of the module, each
with the measurements it comes from.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Mapping, Sequence

__all__ = [
    "MEM_MARGIN", "TIME_MARGIN", "MIN_RUNTIME", "mem", "minutes",
    "import_mem_mb", "tomogram_peak_mb", "tomogram_mem_mb", "tomogram_runtime", "tempmatch_mem_mb", "tempmatch_runtime",
    "extract_chunk_mem_mb", "extract_chunk_runtime", "gather_mem_mb", "gather_runtime",
    "initial_model_mem_mb", "initial_model_runtime", "spt_chunk_mem_mb", "spt_align_runtime", "spt_make3d_runtime",
    "spt_postprocess_mem_mb", "plan_json", "set_mb_per_particle", "set_size", "file_mb", "n_rotations",
    "tomogram_mem", "tomogram_time", "extract_chunk_mem", "extract_chunk_time",
    "spa_stack", "spa_stack_mem_mb", "spa_prepare_runtime", "spa_simmx_mem_mb", "spa_simmx_runtime",
    "spa_classaverage_mem_mb", "spa_classaverage_runtime", "spa_volume_mem_mb", "spa_volume_runtime",
    "spa_gold_mem_mb", "spa_gold_runtime", "spa_initial_model_mem_mb", "spa_initial_model_runtime",
]

MEM_MARGIN = 1.5  # over the measured peak: other data, allocator slack, a different machine
TIME_MARGIN = 3.0  # over the measured wall time (itself measured on a shared, loaded machine)
MIN_RUNTIME = 10  # minutes: queue scheduling granularity; no job is asked shorter
MIN_MEM = 1000  # MB: interpreter + numpy + numba + h5py alone are 107–250 MB RSS (runs A and B)


def mem(base_mb: float, slope: float, size: float, attempt: int = 1) -> int:
    """``(base_mb + slope · size) · MEM_MARGIN · attempt`` MB, at least ``MIN_MEM`` · attempt."""
    return int(max(MIN_MEM, (base_mb + slope * max(size, 0.0)) * MEM_MARGIN) * max(1, attempt))


def minutes(seconds: float, attempt: int = 1) -> int:
    """``seconds · TIME_MARGIN`` in whole minutes, at least ``MIN_RUNTIME``, times ``attempt``."""
    return int(max(MIN_RUNTIME, -(-seconds * TIME_MARGIN // 60)) * max(1, attempt))


# ----------------------------------------------------------------------------- per stage
def import_mem_mb(tilt_series_mb: float, attempt: int = 1) -> int:
    """Import reads headers, the ``.tlt`` and the picks: 109 MB peak in runs A and B (size-independent)."""
    return mem(300.0, 0.0, tilt_series_mb, attempt)


def tomogram_peak_mb(tilt_series_mb: float) -> float:
    """Expected peak RSS of weighted back-projection (the fit, no margin): ``TOMO_SLOPE`` (4.77) × the
    tilt series' MB + ``TOMO_BASE_MB``; measured 954 MB at a 172 MB series, 3414 MB at 688 MB."""
    return TOMO_BASE_MB + TOMO_SLOPE * tilt_series_mb


def tomogram_mem_mb(tilt_series_mb: float, attempt: int = 1) -> int:
    """``tomogram_reconstruct``: :func:`tomogram_peak_mb` with the margin."""
    return mem(TOMO_BASE_MB, TOMO_SLOPE, tilt_series_mb, attempt)


def tomogram_runtime(tilt_series_mb: float, threads: int = 2, attempt: int = 1) -> int:
    """``TOMO_S_PER_MB`` s per tilt-series MB on 2 threads (measured 14.5 s at 172 MB, 39.4 s at 688 MB)."""
    return minutes(TOMO_S_PER_MB * tilt_series_mb * 2.0 / max(1, threads), attempt)


def tempmatch_mem_mb(tomogram_mb: float, tile_size_px: int, thickness_px: int, attempt: int = 1) -> int:
    """Template matching holds the tomogram with its score, angle and statistics maps
    (``TM_SLOPE`` × the tomogram's MB) plus one tile's working arrays (FFTs, local statistics:
    ``TM_B_PER_TILE_VOXEL`` bytes per tile voxel; a tile is at most ``tile_size_px`` on each axis, so
    ``min(tile, thickness) × tile²``, and at most the tomogram). Measured: 545 MB at a 16.8 MB
    tomogram (256² × 64, one tile), 944 MB at 67.1 MB (512² × 64, 9 tiles of 256² × 64)."""
    vox = tomogram_mb * 1e6 / 4.0
    tile_vox = min(float(min(tile_size_px, thickness_px)) * tile_size_px**2, vox)
    return mem(TM_BASE_MB + TM_SLOPE * tomogram_mb, TM_B_PER_TILE_VOXEL / 1e6, tile_vox, attempt)


def tempmatch_runtime(tomogram_mb: float, n_rotations: int, threads: int = 4, attempt: int = 1) -> int:
    """One FFT pair of every tile per rotation: ``TM_S_PER_MB_ROT`` s per tomogram MB and rotation on
    1 thread (threads assumed to add 0.7 each). Measured on 2 threads at load 25: 173 s for 16.8 MB ×
    552 rotations (one tile), 1254 s for 67.1 MB × 552 (9 overlapping tiles: the larger rate is used)."""
    eff = 1.0 + 0.7 * (max(1, threads) - 1)
    return minutes(TM_S_PER_MB_ROT * tomogram_mb * n_rotations / eff, attempt)


def extract_chunk_mem_mb(n_tilts: int, pad2d: int, box: int, n_particles: int, tilt_series_mb: float,
                         attempt: int = 1) -> int:
    """The budget of one extraction job: the job sizes its particle blocks to ``0.8 × mem_mb``
    (:func:`emflow.sta.extract.particles_per_block`: 24 B per ``pad2d³`` voxel + 400 MB fixed, 40 B per
    subtilt pixel + the ``box³`` volume per particle). Asked: blocks of up to ``EXTRACT_BLOCK``
    particles (larger blocks are not faster) plus the pages of the memory-mapped tilt series the job
    touches (up to the whole series)."""
    block = min(max(1, n_particles), EXTRACT_BLOCK)
    fixed = 24.0 * pad2d**3 + 400e6
    per = 40.0 * n_tilts * pad2d * pad2d + 4.0 * box**3
    return mem((fixed + block * per) / 0.8 / 1e6 / MEM_MARGIN, 1.0 / MEM_MARGIN, tilt_series_mb, attempt)


def extract_chunk_runtime(n_tilts: int, pad2d: int, n_particles: int, attempt: int = 1) -> int:
    """``EXTRACT_S_PER_MPIX`` s per million subtilt pixels (``n_tilts · pad2d²`` per particle), 2 threads."""
    return minutes(EXTRACT_S_PER_MPIX * n_particles * n_tilts * pad2d * pad2d / 1e6, attempt)


def gather_mem_mb(data_mb: float, attempt: int = 1) -> int:
    """Joining chunk files (extract_particles, spt gathers): block copies, independent of the data size."""
    return mem(300.0, 0.0, data_mb, attempt)


def gather_runtime(data_mb: float, attempt: int = 1) -> int:
    """A copy at ``GATHER_MB_PER_S`` (measured, scale run, shared disk)."""
    return minutes(data_mb / GATHER_MB_PER_S, attempt)


def initial_model_mem_mb(mb_per_particle: float, batch: int, attempt: int = 1) -> int:
    """SGD: the particles aligned per iteration (``batch / keep``, subtilts at the shrunk box) and the
    maps: ``SGD_BASE_MB`` + ``SGD_DATA_FACTOR`` × their data (``mb_per_particle`` of the set)."""
    return mem(SGD_BASE_MB, SGD_DATA_FACTOR * mb_per_particle, 2.0 * batch, attempt)


def initial_model_runtime(mb_per_particle: float, batch: int, niter: int, attempt: int = 1) -> int:
    """``SGD_S_PER_MB`` s per MB of particle data aligned (``2 · batch`` particles per iteration)."""
    return minutes(SGD_S_PER_MB * mb_per_particle * 2.0 * batch * niter, attempt)


def spt_chunk_mem_mb(n_particles: int, mb_per_particle: float, n_set: int = 0, attempt: int = 1, *,
                     neighbours: int | None = None) -> int:
    """An alignment or reconstruction job of ``n_particles`` (the chunk) of a set of ``n_set``: the
    references / insertion grids (by the box: ``SPT_DATA_FACTOR`` × ``mb_per_particle``, its subtilts +
    3D particle) plus, for alignment, ``SPT_CHUNK_FACTOR`` × the chunk's data and ``SPT_MB_PER_SET_PARTICLE``
    per particle of the whole set (``t``/``r`` smooth over neighbours). Measured peaks: box 64, 3.9 MB
    per particle: ``p`` 237–311 MB (chunks 77–250); ``t`` 372 MB (chunk 210 of 210), 681 MB (77 of 827),
    985 MB (250 of 827); make3d 272–323 MB.

    The set term is the subtilts the job transforms besides its own: for ``t``/``r`` the ``smoothN``
    nearest particles of each of its particles, so at most ``n_particles × neighbours`` of the set
    (77 particles of 827 with smoothN 8 needed 456: ``neighbours`` caps it, the job stays bounded as
    the set grows); for ``d`` (whole tilts, ``neighbours`` None) every particle of the tomogram."""
    n_data = n_set if neighbours is None else min(n_set, n_particles * int(neighbours))
    return mem(SPT_BASE_MB + SPT_DATA_FACTOR * mb_per_particle + SPT_MB_PER_SET_PARTICLE * n_data,
               SPT_CHUNK_FACTOR * mb_per_particle, n_particles, attempt)


def set_size(info3d_lst: str | os.PathLike) -> int:
    """Particles in a refinement set (lines of ``particle_info_3d.lst``); 0 before it exists."""
    p = pathlib.Path(info3d_lst)
    if not p.exists():
        return 0
    return _count(str(p), p.stat().st_mtime)


@functools.lru_cache(maxsize=64)
def _count(path: str, mtime: float) -> int:
    with open(path) as fh:
        return sum(1 for line in fh if not line.startswith("#") and "\t" in line)


def spt_align_runtime(n_particles: int, mb_per_particle: float, attempt: int = 1) -> int:
    """Global ``p`` (the slowest letter): ``SPT_ALIGN_S_PER_MB`` s per MB of particle data, 2 threads."""
    return minutes(SPT_ALIGN_S_PER_MB * n_particles * mb_per_particle, attempt)


def spt_make3d_runtime(n_particles: int, mb_per_particle: float, attempt: int = 1) -> int:
    """Insertion of the chunk's subtilts: ``SPT_MAKE3D_S_PER_MB`` s per MB of particle data, 2 threads."""
    return minutes(SPT_MAKE3D_S_PER_MB * n_particles * mb_per_particle, attempt)


def spt_postprocess_mem_mb(rec_chunk_mb: float, attempt: int = 1) -> int:
    """Merging the chunks' Fourier grids (one chunk file at a time), FSC and masks: a few copies of one
    chunk's grids (``rec_chunk_mb``, ∝ box³)."""
    return mem(SPT_POST_BASE_MB, SPT_POST_SLOPE, rec_chunk_mb, attempt)


# ----------------------------------------------------------------------------- single particle
# The SPA rules' sizes: the particle stack (``n`` images of ``box``², its MB), the reference projections
# of the iteration (``n_proj``), the chunk of a simmx job. Coefficients: SPA_* below.
def spa_stack_mem_mb(stack_mb: float, attempt: int = 1) -> int:
    """Jobs that read a whole stack or matrix once (spa_prepare: read, phase-flip, write; classify and the
    simmx gather on the similarity matrix): ``SPA_STACK_BASE_MB`` + ``SPA_STACK_SLOPE`` × its MB."""
    return mem(SPA_STACK_BASE_MB, SPA_STACK_SLOPE, stack_mb, attempt)


def spa_prepare_mem_mb(stack_mb: float, attempt: int = 1) -> int:
    """spa_prepare streams the stack in blocks of ``SPA_PREPARE_BLOCK_MB``: :func:`spa_stack_mem_mb` of one block."""
    return spa_stack_mem_mb(min(stack_mb, SPA_PREPARE_BLOCK_MB), attempt)


def spa_prepare_runtime(stack_mb: float, attempt: int = 1) -> int:
    """``SPA_PREPARE_S_PER_MB`` s per MB of the input stack."""
    return minutes(SPA_PREPARE_S_PER_MB * stack_mb, attempt)


def spa_simmx_mem_mb(stack_mb: float, n_particles: int, chunk: int, attempt: int = 1) -> int:
    """One simmx chunk: ``SPA_SIMMX_BASE_MB`` (interpreter, FFT plans, the projections and their
    rotations) + ``SPA_SIMMX_CHUNK_FACTOR`` × the chunk's share of the stack (its particles with their
    CTF / SNR arrays and coarse copies)."""
    share = stack_mb * min(max(chunk, 1), max(n_particles, 1)) / max(n_particles, 1)
    return mem(SPA_SIMMX_BASE_MB, SPA_SIMMX_CHUNK_FACTOR, share, attempt)


def spa_simmx_runtime(n_chunk: int, n_proj: int, box: int, attempt: int = 1) -> int:
    """``SPA_SIMMX_S_PER_GPIX`` s per 10⁹ (particle × projection × box²) (coarse-to-fine simmx)."""
    return minutes(SPA_SIMMX_S_PER_GPIX * n_chunk * n_proj * box * box / 1e9, attempt)


def spa_classaverage_mem_mb(stack_mb: float, attempt: int = 1, n_proj: int = 0, box: int = 0) -> int:
    """Class averaging holds one block of particles with its CTF amplitude and SNR arrays and aligned copies
    (:func:`spa_classaverage_block`): ``SPA_CLASSAVG_BASE_MB`` + ``SPA_CLASSAVG_SLOPE`` × the block's MB (the
    stack's, up to ``SPA_CLASSAVG_BLOCK_MB``) + ``SPA_CLASSAVG_B_PER_CLASS_PX`` per pixel of the ``n_proj``
    projections, references, averages and running sums."""
    base = SPA_CLASSAVG_BASE_MB + SPA_CLASSAVG_B_PER_CLASS_PX * n_proj * box * box / 1e6
    return mem(base, SPA_CLASSAVG_SLOPE, min(stack_mb, SPA_CLASSAVG_BLOCK_MB), attempt)


def spa_classaverage_block(mem_mb: float, box: int, n_proj: int) -> int:
    """Particles per block of a class-averaging job given its ``mem_mb`` (the inverse of
    :func:`spa_classaverage_mem_mb`, float32 images of ``box²``); at least 64."""
    avail = mem_mb / MEM_MARGIN - SPA_CLASSAVG_BASE_MB - SPA_CLASSAVG_B_PER_CLASS_PX * n_proj * box * box / 1e6
    return max(64, int(avail / (SPA_CLASSAVG_SLOPE * 4.0 * box * box / 1e6)))


def spa_classaverage_runtime(n_particles: int, box: int, attempt: int = 1) -> int:
    """``SPA_CLASSAVG_S_PER_MPIX`` s per 10⁶ particle pixels (``n · box²``), classiter 1."""
    return minutes(SPA_CLASSAVG_S_PER_MPIX * n_particles * box * box / 1e6, attempt)


def spa_volume_mem_mb(box: int, attempt: int = 1) -> int:
    """Jobs bound by one map (startmodel, project3d, make3d: the 2×-padded Fourier volume and its
    weights; fsc, report): ``SPA_VOLUME_BASE_MB`` + ``SPA_B_PER_VOXEL`` bytes per ``box³`` voxel."""
    return mem(SPA_VOLUME_BASE_MB, SPA_B_PER_VOXEL / 1e6, float(box) ** 3, attempt)


def spa_volume_runtime(box: int, n_proj: int = 0, attempt: int = 1) -> int:
    """A map job (project3d, make3d): ``SPA_VOLUME_S_PER_MPIX`` s per 10⁶ pixels of the 2×-padded
    slices it extracts or inserts (``n_proj · (2 · box)²``) plus the padded volume (``(2 · box)³``)."""
    return minutes(SPA_VOLUME_S_PER_MPIX * ((2.0 * box) ** 2 * max(0, n_proj) + (2.0 * box) ** 3) / 1e6, attempt)


def spa_gold_mem_mb(stack_mb: float, attempt: int = 1) -> int:
    """spa_gold runs the stages of both halves in one process: class averaging of the whole stack is
    its largest step (:func:`spa_classaverage_mem_mb`) plus both halves' simmx at once."""
    return mem(SPA_CLASSAVG_BASE_MB, SPA_CLASSAVG_SLOPE + SPA_SIMMX_CHUNK_FACTOR, stack_mb, attempt)


def spa_gold_runtime(n_particles: int, box: int, n_proj: Sequence[int], attempt: int = 1, n_local: int = 0) -> int:
    """spa_gold runs every iteration's stages on both halves in one job: the simmx of all particles
    against each iteration's projections plus class averaging once per iteration, then ``n_local`` local
    likelihood iterations (``SPA_LOCAL_S_PER_MPIX`` per iteration)."""
    s = sum(SPA_SIMMX_S_PER_GPIX * n_particles * n * box * box / 1e9
            + SPA_CLASSAVG_S_PER_MPIX * n_particles * box * box / 1e6 for n in n_proj)
    s += SPA_LOCAL_S_PER_MPIX * n_local * n_particles * box * box / 1e6
    return minutes(s, attempt)


def spa_initial_model_mem_mb(stack_mb: float, attempt: int = 1) -> int:
    """The SGD initial model (and 2D classification) hold the stack and per-particle arrays:
    ``SPA_INIT_BASE_MB`` + ``SPA_INIT_SLOPE`` × the stack's MB."""
    return mem(SPA_INIT_BASE_MB, SPA_INIT_SLOPE, stack_mb, attempt)


def spa_initial_model_runtime(n_particles: int, box: int, cfg: Mapping, attempt: int = 1) -> int:
    """method sgd: ``SPA_INIT_S_PER_MPIX`` s per 10⁶ image pixels the job works on: the SGD's ``ntry · niter · batch``
    images and the ``n_score`` scoring images (``cfg``: the config's ``spa_initial_model`` section),
    plus ``classify2d.niter`` passes over the ``n_particles`` when the 2D classification runs.
    method stochastic_em: ``SPA_EM_S_PER_MINIBATCH`` per minibatch of 200 particles, ``ntry · em.niter``
    minibatches (its working box follows ``em.res_a``, not the particles' box)."""
    if cfg.get("method", "sgd") == "stochastic_em":  # cost per minibatch, at the em block's grid and resolution
        em = cfg["em"]
        minibatches = int(cfg["ntry"]) * int(em["niter"]) * int(em["batch"]) / 200.0
        return minutes(SPA_EM_S_PER_MINIBATCH * minibatches, attempt)
    images = int(cfg["ntry"]) * int(cfg["niter"]) * int(cfg["batch"]) + int(cfg["n_score"])
    if cfg["classify2d"]["enabled"]:
        images += int(cfg["classify2d"]["niter"]) * int(n_particles)
    return minutes(SPA_INIT_S_PER_MPIX * images * box * box / 1e6, attempt)


@functools.lru_cache(maxsize=64)
def _stack(path: str, mtime: float) -> tuple[int, int]:
    if path.endswith(".hdf"):
        from emflow.io import hdf_count
        from emflow.io.hdf import hdf_image_shape

        return hdf_count(path), int(hdf_image_shape(path)[-1])
    from emflow.io import read_mrc_header

    shape = read_mrc_header(path)["shape"]  # (nz, ny, nx): a map (n = 1) or an image stack
    return (1 if shape[0] == shape[-1] else int(shape[0])), int(shape[-1])


def spa_stack(path: str | os.PathLike) -> tuple[int, int]:
    """``(n images, box)`` of an EMAN2 HDF stack or MRC file from its header (no image decoded; a cubic
    MRC counts as one map); ``(0, 0)`` before it exists (a dry run)."""
    p = pathlib.Path(path)
    if not p.exists():
        return 0, 0
    return _stack(str(p), p.stat().st_mtime)


# ----------------------------------------------------------------------------- fitted coefficients
# (values and the measurements they come from: README "Benchmarks", benchmarks/scale_workflow.py)
# tomogram_reconstruct, peak RSS 954 MB at a 172 MB series (41 × 1024²), 3414 MB at 688 MB (41 × 2048²):
# the line through both; wall 14.5 s / 39.4 s on 2 threads (load 10-11) -> 0.085 s per series MB
TOMO_BASE_MB = 134.0
TOMO_SLOPE = 4.77
TOMO_S_PER_MB = 0.085
# tempmatch_search: the two measurements above; slope through both (tile fixed at 256² × 64 = 4.19 M
# voxels), the rest of the 1024² peak above a 300 MB interpreter+numba base put on the tile (27 B/voxel)
TM_BASE_MB = 300.0
TM_SLOPE = 7.9
TM_B_PER_TILE_VOXEL = 27.0
TM_S_PER_MB_ROT = 0.058
# extract_chunk: run A, 250 particles × 41 × 128² = 168 M subtilt pixels in 75–110 s (0.45–0.65 s per M
# pixel, load 10–25), peak 1,634–1,650 MB with blocks of 98 (mem_mb 4000); run B with this function's
# budget (1,851 MB, blocks of 36): 244 particles in 117 s (0.71 s per M pixel), peak 833 MB. 32 particles per block asked.
EXTRACT_BLOCK = 32
EXTRACT_S_PER_MPIX = 0.72
# extract_particles joined 4.2 GB of chunk files in 49 s (86 MB/s, peak 360 MB); asked at 50 MB/s
GATHER_MB_PER_S = 50.0
# initial_model_sgd (box 64, batch 12, 10 iterations, 3.9 MB per particle): peak 350 MB, 240 s at load 25
SGD_BASE_MB = 250.0
SGD_DATA_FACTOR = 1.0
SGD_S_PER_MB = 0.26
# spt_refine_align / make3d, 1024² run (box 64, 3.9 MB per particle, one chunk of 210 particles, load 12-26):
# peak 237 MB (p) / 372 MB (t) / 272 MB (make3d); global p 594 s (0.73 s per particle MB), t 121 s,
# make3d 35.8 s (0.044 s per MB). One box size measured: base 200 MB, the rest (172 MB) ∝ the particle size.
# run A (2048², chunks of 250 of 827): t 955-985 MB, 681 MB for the 77-particle chunk -> 1.76 MB per chunk
# particle (0.45 x its data); with run B (372 MB, 210 of 210) -> about 0.9 MB per particle of the set
SPT_BASE_MB = 200.0
SPT_DATA_FACTOR = 45.0
SPT_CHUNK_FACTOR = 0.45
SPT_MB_PER_SET_PARTICLE = 0.9
SPT_ALIGN_S_PER_MB = 0.75
SPT_MAKE3D_S_PER_MB = 0.05
# spt_refine_postprocess: 255-271 MB peak for 25.6 MB reconstruction chunks (box 64, pad 2), one size measured
SPT_POST_BASE_MB = 170.0
SPT_POST_SLOPE = 4.0
# tomogram_slices: 192 MB at a 17 MB tomogram, 251 MB at 67 MB (the line through both)
SLICES_BASE_MB = 172.0
SLICES_SLOPE = 1.2
# tempmatch_extract (score + angle maps): 299 MB at 34 MB of input, 643 MB at 134 MB (the line through
# both); picks_filter (scores + tomogram) 239 / 402 MB at the same sizes, under the same line
TM_EXTRACT_BASE_MB = 182.0
TM_EXTRACT_SLOPE = 3.44


# single particle (rules/spa.smk, rules/spa_initial_model.smk): three runs of the demo's SPA part, each
# job's VmHWM from its log (Snakemake's sampled max_rss for the demo run, which predates that log line):
#   S: 1,000 × 64² (19.3 MB stack), 1 iteration;  M: 2,000 × 96² (78.4 MB), 2 iterations (under load 12-17);
#   D: the demo, 4,000 × 64² (74.9 MB), 6 iterations (quiet machine; sampled max_rss).
# spa_prepare: 230 MB (S, 18.7 MB stack), 461 MB (M, 78.4 MB), 455 MB (D, 74.9 MB): the line through S and M;
# simmx_gather and classify (on the similarity matrix, < 3 MB) 171-224 MB
SPA_STACK_BASE_MB = 157.0
SPA_STACK_SLOPE = 3.9
# spa_prepare CPU time 0.76 s (S), 2.7 s (M), wall 2.2 s quiet (D): 0.03-0.04 s per MB, asked 0.05
SPA_PREPARE_S_PER_MB = 0.05
# spa_simmx (chunks of 500): 343-364 MB (S, share 9.4 MB), 469-490 MB (M, share 19.6 MB), 492-507 MB (D, share
# 9.4 MB, 56-187 projections, sampled): an upper line over the three; the peak is mostly
# fixed (the interpreter, numba and FFT plans); the chunk term is the arrays it holds per
# particle (image, CTF amplitude, SNR, coarse copy, its FFTs: about 6 × its image), not a fit
SPA_SIMMX_BASE_MB = 460.0
SPA_SIMMX_CHUNK_FACTOR = 6.0
# simmx wall per 10⁹ particle × projection × box² px: 31-77 s (D, quiet, 48 jobs); CPU time up to 91 s (D) and
# 31 s (M): asked 90 s
SPA_SIMMX_S_PER_GPIX = 90.0
# spa_classaverage: 509 MB (S, 18.7 MB stack), 1,497-1,498 MB (M, 78.4 MB): the line through both (16.6 × the
# stack: images, CTF amplitudes, SNR weights, aligned copies); D 1,287-1,441 MB sampled at 74.9 MB, under it
# spa_prepare reads, converts, phase-flips and writes the stack in blocks of this many MB of float32 images
SPA_PREPARE_BLOCK_MB = 256.0
SPA_CLASSAVG_BASE_MB = 199.0
SPA_CLASSAVG_SLOPE = 16.6
# the job reads the particles in blocks of at most this many MB (float32 images): 256 MB is 15,600 particles at
# box 64, 1,000 at box 256, so a 4.4 GB job (× MEM_MARGIN) however large the stack
SPA_CLASSAVG_BLOCK_MB = 256.0
# per projection pixel: the projections, references and averages (float32) and the CTF averager's sums
# (complex128 + float64 on the half plane, ~12 B per pixel): about 24 B, asked 32
SPA_CLASSAVG_B_PER_CLASS_PX = 32.0
# classaverage wall 18-47 s for 16.4 M particle px (D quiet: 1.1-2.9 s per M px), CPU 49 s for 18.4 M (M):
# asked 3 s per M px
SPA_CLASSAVG_S_PER_MPIX = 3.0
# local likelihood refinement (spa.local, 123 rotations × 13 shifts per particle): 52-79 s per half of 2,000
# particles at box 64 on 2 cores (8.2 M particle px): asked 10 s per M px per iteration
SPA_LOCAL_S_PER_MPIX = 10.0
# make3d: 361 MB (M, box 96), 249-265 MB (D, box 64, sampled): the line in box³ (154 B per voxel);
# project3d 183-196 MB (M), 208-227 MB (D) and startmodel 141-161 MB are under it
SPA_VOLUME_BASE_MB = 225.0
SPA_B_PER_VOXEL = 154.0
# make3d wall 3.0-6.6 s (D quiet, box 64, 56-330 classes: 0.9-5.4 M slice px + 2.1 M voxels, m3diter 2),
# CPU 3.2 s (M, box 96): about 1 s per M px; asked 2
SPA_VOLUME_S_PER_MPIX = 2.0
# spa_initial_model (defaults: 4 starts × 30 iterations × batch 100 + 300 scored = 12,300 images; no 2D
# classification), S only (one size): 312 MB peak at 18.7 MB -> the stack line's base (157 MB) + 8.3 × the
# stack; CPU 53.9 s for 12,300 × 64² = 50 M px (1.07 s per M px; wall 607 s at load 18): asked 2 s per M px
SPA_INIT_BASE_MB = 157.0
SPA_INIT_SLOPE = 8.3
SPA_INIT_S_PER_MPIX = 2.0
# stochastic_em (defaults: 60 → 40 Å, 20 → 15° grid, minibatches of 200, 4,000 × 64² 80S): 0.36 s per
# minibatch under load 15–19 (s6-abinitio benchmark); 2 starts × 500 in 119.8 s quiet, 2 threads
# (0.12 s; session 6 user SPA run): asked the loaded figure
SPA_EM_S_PER_MINIBATCH = 0.36


# ----------------------------------------------------------------------------- size look-ups
@functools.lru_cache(maxsize=64)
def _plan(path: str, mtime: float) -> dict:
    return json.loads(pathlib.Path(path).read_text())


def plan_json(path: str | os.PathLike) -> dict:
    """The extraction plan (``results/extract/plan/*.json``: ``n_tilts``, ``pad2d``, ``box``, ``chunks``)."""
    p = pathlib.Path(path)
    return _plan(str(p), p.stat().st_mtime)


@functools.lru_cache(maxsize=64)
def _per_particle(path: str, mtime: float) -> float:
    files, n = set(), 0
    with open(path) as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) > 1:
                n += 1
                files.add(parts[1])
    total = 0
    for f in files:
        for g in (pathlib.Path(f), pathlib.Path(f.replace("particles3d", "particles"))):
            total += g.stat().st_size if g.exists() else 0
    return total / 1e6 / max(n, 1)


def set_mb_per_particle(info3d_lst: str | os.PathLike) -> float:
    """MB of subtilts + 3D particle per particle of a refinement set (``particle_info_3d.lst``: the
    3D particle files it names and their ``particles/`` subtilt twins, over its number of lines).
    0 when the file does not exist yet (a dry run before the set exists)."""
    p = pathlib.Path(info3d_lst)
    if not p.exists():
        return 0.0
    return _per_particle(str(p), p.stat().st_mtime)


def file_mb(path: str | os.PathLike) -> float:
    """Size of ``path`` in MB (0 if it does not exist yet: a dry run)."""
    try:
        return os.path.getsize(path) / 1e6
    except OSError:
        return 0.0


def n_rotations(delta_deg, sym_order: int = 1) -> int:
    """Rotations of the even SO(3) grid at step ``delta_deg`` (8π²/δ³: 552 at 30°, 4416 at 15°, 14832 at
    10° measured, README "Benchmarks"); ``auto`` or null counts as 10°."""
    import math

    d = math.radians(float(delta_deg)) if isinstance(delta_deg, (int, float)) else math.radians(10.0)
    return int(8.0 * math.pi**2 / d**3 / max(1, sym_order))


# ----------------------------------------------------------------------------- rule adapters
# Snakemake calls these with the job's ``wildcards``, ``input``, ``threads`` and ``attempt`` (named
# arguments); they look up sizes and call the functions above.
def tomogram_mem(wildcards, input, attempt):
    """``tomogram_reconstruct``'s mem_mb from its tilt series' size."""
    return tomogram_mem_mb(file_mb(input.tilt_series), attempt)


def tomogram_time(wildcards, input, threads, attempt):
    """``tomogram_reconstruct``'s runtime from its tilt series' size and threads."""
    return tomogram_runtime(file_mb(input.tilt_series), threads, attempt)


def extract_chunk_mem(wildcards, input, attempt):
    """``extract_chunk``'s mem_mb (its block budget) from the plan (tilts, box, chunk) and the tilt series."""
    plan = plan_json(input.plan)
    a, b = plan["chunks"][int(wildcards.chunk)]
    return extract_chunk_mem_mb(plan["n_tilts"], plan["pad2d"], plan["box"], b - a, file_mb(input.tilt_series), attempt)


def extract_chunk_time(wildcards, input, attempt):
    """``extract_chunk``'s runtime from the plan (tilts, subtilt size, particles in the chunk)."""
    plan = plan_json(input.plan)
    a, b = plan["chunks"][int(wildcards.chunk)]
    return extract_chunk_runtime(plan["n_tilts"], plan["pad2d"], b - a, attempt)

