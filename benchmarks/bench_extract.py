"""Throughput of subtilt extraction + per-particle reconstruction at the demo sizes.

Simulates one demo-sized tilt series (default 512 × 512 × 128 px, 41 tilts, 40 ribosomes at
5.24 Å/px, box 64 → 128 px subtilts), then times :func:`emflow.sta.extract.extract_particles` and,
as the lower bound of its FFT work, one forward + inverse FFT of the whole subtilt stack
(n_particles × n_tilts images of pad2d²). Prints and writes JSON.

Usage: ``python benchmarks/bench_extract.py [--small] [--threads N] [--out results/benchmarks/bench_extract.json]``
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="256 × 256 × 64, 21 tilts, 10 particles (quick check)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/bench_extract.json")
    args = ap.parse_args(argv)

    from emflow import fourier
    from emflow._numba import set_threads
    from emflow.demo.data import structure_path
    from emflow.demo.metadata import tilt_series_info
    from emflow.sta.extract import ExtractParams, TiltGeometry, extract_particles, extraction_boxes, prepare_tilt_series
    from emflow.io import read_mrc
    from emflow.demo.simulate import simulate_tilt_series

    set_threads(args.threads)
    shape, tilts, npart = ((256, 256, 64), np.linspace(-60, 60, 21), 10) if args.small else \
        ((512, 512, 128), np.arange(-60.0, 60.1, 3.0), 40)
    ref, apix_ref = read_mrc(structure_path("ribosome70S"))
    t0 = time.perf_counter()
    stack, truth = simulate_tilt_series(ref, apix_ref, apix=5.24, shape_xyz=shape, tilts_deg=tilts, n_particles=npart,
                                        rng=np.random.default_rng(0), snr=0.08, workers=args.threads)
    t_sim = time.perf_counter() - t0
    info = tilt_series_info(truth, truth.positions_px, label="initribo")
    geom = TiltGeometry.from_info(info, apix=5.24, voltage_kv=300.0, cs_mm=2.7, ampcont=0.1)
    box, pad2d = extraction_boxes(truth.box, 1, 2.0)
    params = ExtractParams(box=box, pad2d=pad2d)
    prepared = prepare_tilt_series(stack)
    # warm-up (numba compilation of the insertion kernels) on two particles
    extract_particles(prepared, geom, truth.positions_px[:2], params, workers=args.threads)
    t0 = time.perf_counter()
    res = extract_particles(prepared, geom, truth.positions_px, params, workers=args.threads)
    t_ext = time.perf_counter() - t0
    m = res.subtilts.shape[0]
    t0 = time.perf_counter()
    F = fourier.ft(res.subtilts, axes=(-2, -1), workers=args.threads)
    fourier.ift(F, (pad2d, pad2d), workers=args.threads)
    t_fft = time.perf_counter() - t0
    out = {
        "shape_xyz": list(shape), "n_tilts": int(len(tilts)), "n_particles": int(npart), "box": box, "pad2d": pad2d,
        "threads": args.threads, "simulate_s": round(t_sim, 3), "extract_s": round(t_ext, 3),
        "n_subtilts": int(m), "particles_per_s": round(npart / t_ext, 2), "subtilts_per_s": round(m / t_ext, 1),
        "fft_bound_s": round(t_fft, 4), "fft_bound_subtilts_per_s": round(m / t_fft, 1),
        "fraction_of_time_in_one_fft_pair": round(t_fft / t_ext, 3),
    }
    print(json.dumps(out, indent=1))
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
