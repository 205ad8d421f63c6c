"""Fourier insertion and subtilt reconstruction throughput, each beside its bound from the same run.

* insertion kernel (trilinear, pad 2, random orientations, ``nslices`` FT'd slices): voxel updates
  per second (8 per slice pixel within the insertion radius) of the interleaved kernel
  (``Reconstructor.insert_ft``, issue 13 item 3) and of the previous kernel (``_insert_slab`` on
  separate F/W arrays), per run and per core;
* subtilt reconstruction as refinement does it (:func:`emflow.sta.spt_refine.reconstruct_halves`:
  edge-mean, pad, FFT, shift, even/odd insertion) in subtilts/s, against the bound the issue names:
  one 2D FFT of every subtilt (``fourier.ft``), and against one padded 2D FFT pair.

Usage: ``python benchmarks/bench_reconstruct.py [--threads 1 2] [--boxes 64 128] [--out f.json]``

Last measured (session 7, quiet 2-core machine, after the pruned padded transform and one kernel call per half
and batch of 256 subtilts in ``reconstruct_halves``): insertion 273 / 191 M voxel updates per CPU-second at box
64 / 128, 1 thread (previous kernel in the same run 204 / 90 M; issue 13 asks >= 10 M). Subtilt reconstruction,
wall (CPU) time against the bound of the same run: ``--nsub 410``, 1 thread: box 64 21.3x (23.9x), box 128
**13.7x (14.8x)**; 2 threads 11.9x / 14.5x. ``--nsub 2050`` (a larger set, as a make3d chunk has: the bound's
FFT batch no longer sits in cache, 54k instead of 82k FFTs/s at box 64): 1 thread **12.9x (13.4x) / 13.8x
(14.8x)**, 2 threads 13.8x / 13.9x (issue 13 asks <= 15x). Session 6 (one call per 64 slices, rfft2 of the
padded box): 19.4x / 19.7x at 1 thread.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numba
import numpy as np
import scipy.fft


def _best(fn, repeat=3):
    """Best wall time of ``repeat`` runs (after a warm-up)."""
    return _best_cpu(fn, repeat)[0]


def _best_cpu(fn, repeat=3):
    """``(best wall s, best process CPU s)`` of ``repeat`` runs. On a shared machine the CPU time
    (all threads) is the fairer measure of per-core throughput: waiting for a core is not counted."""
    fn()
    wall = cpu = np.inf
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu


def insertion(box: int, nslices: int, threads: int) -> dict:
    from emflow import reconstruct as rc
    from emflow.geometry import random_rotations

    rng = np.random.default_rng(0)
    rec = rc.Reconstructor(box, pad=2)
    N = rec.n_pad
    S = (rng.standard_normal((nslices, N, N // 2 + 1))
         + 1j * rng.standard_normal((nslices, N, N // 2 + 1))).astype(np.complex64)
    R = random_rotations(nslices, rng)
    npix = np.count_nonzero(np.add.outer(np.fft.fftfreq(N) ** 2 * N * N, np.arange(N // 2 + 1) ** 2.0)
                            <= (N / 2 - 1) ** 2)
    F = np.zeros((N, N, N // 2 + 1), np.complex64)
    W = np.zeros((N, N, N // 2 + 1), np.float32)
    ones, idx, nowsl = np.ones(nslices), np.arange(nslices), np.zeros((1, 1, 1), np.float32)
    rmax2 = (N / 2 - 1) ** 2
    old = lambda: rc._insert_slab(F, W, S, nowsl, False, ones, R, idx, 1, rmax2, threads)  # noqa: E731
    new = lambda: rec.insert_ft(S, R)  # noqa: E731
    sl = np.zeros((nslices, N, N), np.float32)
    pair = lambda: scipy.fft.irfft2(scipy.fft.rfft2(sl, workers=threads), s=(N, N), workers=threads)  # noqa: E731
    runs = {"old": [], "new": [], "fft": []}
    for _ in range(3):  # interleaved, so both kernels see the same machine load
        for name, fn in (("old", old), ("new", new), ("fft", pair)):
            runs[name].append(_best_cpu(fn, 1))
    (w_old, c_old), (w_new, c_new), (w_fft, c_fft) = (
        tuple(min(v) for v in zip(*runs[k])) for k in ("old", "new", "fft"))
    upd = nslices * npix * 8
    return {"box": box, "n_pad": N, "threads": threads, "nslices": nslices,
            "voxel_updates_per_s": upd / w_new, "voxel_updates_per_cpu_s": upd / c_new,
            "legacy_voxel_updates_per_s": upd / w_old, "legacy_voxel_updates_per_cpu_s": upd / c_old,
            "insert_ms_per_slice": 1e3 * w_new / nslices, "legacy_insert_ms_per_slice": 1e3 * w_old / nslices,
            "padded_fft2_pair_ms_per_slice": 1e3 * w_fft / nslices,
            "insert_cpu_to_padded_fft2_pair_cpu": c_new / c_fft}


def subtilt_reconstruction(box: int, nsub: int, threads: int) -> dict:
    from emflow import fourier
    from emflow.geometry import random_rotations, tilt_matrix
    from emflow.sta.spt_refine import ParticleTable, RefineState, reconstruct_halves

    rng = np.random.default_rng(1)
    tilts = np.arange(-60.0, 61.0, 3.0)
    k = tilts.size
    n = max(2, nsub // k)
    P = tilt_matrix(tilts)
    ptcl, tid = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    table = ParticleTable(["b"] * n, np.arange(n), np.arange(n) % 2, np.zeros(n, int), rng.uniform(-60, 60, (n, 3)),
                          ["b"] * (n * k), np.arange(n * k), ptcl, tid, P[tid], np.zeros((n * k, 2)),
                          np.full(n * k, 3.0))
    state = RefineState.identity(table)
    state.rot[:], state.shift[:] = random_rotations(n, rng), rng.uniform(-1, 1, (n, 3))
    img = rng.standard_normal((n * k, box, box)).astype(np.float32)
    rows = np.arange(n * k)
    rec = lambda: reconstruct_halves(table, state, rows, lambda r: img[r], box)  # noqa: E731
    fft = lambda: fourier.ft(img, axes=(-2, -1), workers=threads)  # noqa: E731
    runs = {"rec": [], "fft": []}
    for _ in range(3):
        runs["rec"].append(_best_cpu(rec, 1))
        runs["fft"].append(_best_cpu(fft, 1))
    (w_rec, c_rec), (w_fft, c_fft) = (tuple(min(v) for v in zip(*runs[k])) for k in ("rec", "fft"))
    return {"box": box, "threads": threads, "n_subtilts": int(n * k),
            "subtilts_per_s": n * k / w_rec, "fft2_bound_subtilts_per_s": n * k / w_fft,
            "ratio_to_fft2_bound": w_rec / w_fft, "ratio_to_fft2_bound_cpu": c_rec / c_fft}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--nslices", type=int, default=100)
    ap.add_argument("--nsub", type=int, default=410, help="subtilts of the reconstruction benchmark")
    ap.add_argument("--out", default="results/benchmarks/bench_reconstruct.json")
    a = ap.parse_args(argv)
    out = {"insertion": [], "subtilt_reconstruction": []}
    for threads in a.threads:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        for box in a.boxes:
            r = insertion(box, a.nslices, threads)
            out["insertion"].append(r)
            print(f"{threads} thread(s), box {box} (N {r['n_pad']}): {r['voxel_updates_per_cpu_s'] / 1e6:.1f} M "
                  f"voxel updates per CPU-second (per core; previous kernel "
                  f"{r['legacy_voxel_updates_per_cpu_s'] / 1e6:.1f} M), {r['voxel_updates_per_s'] / 1e6:.1f} M/s wall; "
                  f"{r['insert_ms_per_slice']:.2f} ms per slice vs padded 2D FFT pair "
                  f"{r['padded_fft2_pair_ms_per_slice']:.2f} ms", file=sys.stderr)
            s = subtilt_reconstruction(box, a.nsub, threads)
            out["subtilt_reconstruction"].append(s)
            print(f"{threads} thread(s), box {box}: subtilt reconstruction {s['subtilts_per_s']:.0f} subtilts/s, "
                  f"2D FFT bound {s['fft2_bound_subtilts_per_s']:.0f}/s: {s['ratio_to_fft2_bound']:.1f}x the bound "
                  f"({s['ratio_to_fft2_bound_cpu']:.1f}x in CPU time)",
                  file=sys.stderr)
    text = json.dumps(out, indent=1)
    print(text)
    path = pathlib.Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
