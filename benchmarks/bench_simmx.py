"""Benchmark of one e2refine iteration, stage by stage, and the simmx cost per pair.

Simulates N proteasome particles (box 64, 3.275 Å/px, SNR 0.08, CTF) and ~500 reference
projections (c1, eman delta=7.5 → 372, or the count closest to --nproj), then times project3d,
simmx, classify, classaverage and make3d. The physical yardstick measured in the same run is one
2D FFT pair (rfft2 + irfft2 of a batch of box×box images, per image): simmx's per-pair cost is
reported as a multiple of it. Writes JSON (stdout and --out).

The default simmx is coarse-to-fine (``spa.simcoarse_keep`` 8 of ``simcoarse_shrink`` 2); the same
run also times the exhaustive search (``coarse_keep=0``, EMAN's) on the same data and prints both,
their ratio, and how often the two pick the same projection (or one whose viewing direction is
within ``--step`` degrees).

Usage: python benchmarks/bench_simmx.py [--n 200] [--nproj 500] [--box 64] [--step 0] [--out bench.json]
(N is scaled down from a production 10⁴–10⁵ on small machines; time scales linearly in N·nproj.)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import scipy.fft


def fft_pair_seconds(box: int, batch: int = 512, repeat: int = 5) -> tuple[float, float]:
    """(wall, CPU) seconds of one rfft2 + irfft2 pair of a box×box float32 image, batched."""
    x = np.random.default_rng(0).normal(size=(batch, box, box)).astype(np.float32)
    scipy.fft.irfft2(scipy.fft.rfft2(x, axes=(-2, -1), workers=-1), s=(box, box), axes=(-2, -1), workers=-1)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        scipy.fft.irfft2(scipy.fft.rfft2(x, axes=(-2, -1), workers=-1), s=(box, box), axes=(-2, -1), workers=-1)
    return (time.perf_counter() - t) / (repeat * batch), (time.process_time() - c) / (repeat * batch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--nproj", type=int, default=500)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--step", type=float, default=0.0, help="angular step counted as agreement (deg); 0: the median nearest-neighbour angle")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import mrcfile

    from emflow.demo.data import __file__ as data_init
    from emflow.demo.simulate import resample_map, simulate_spa
    from emflow.geometry import eman_to_matrix
    from emflow.spa.classaverage import class_average
    from emflow.spa.classify import classify
    from emflow.spa.make3d import make3d
    from emflow.spa.refine_loop import RefineOptions, ctf_arrays, phase_flip_particles, project3d
    from emflow.spa.simmx import simmx

    with mrcfile.open(data_init.replace("__init__.py", "proteasome20S_3j9i_2p62A_box80.mrc.gz")) as m:
        ref, ap_ref = np.asarray(m.data, np.float32), float(m.voxel_size.x)
    box, apix = args.box, 3.275 * 64 / args.box
    stack, truth = simulate_spa(ref, ap_ref, apix=apix, box=box, n=args.n, rng=np.random.default_rng(0), snr=0.08)
    vol = resample_map(ref, ap_ref, apix, box=box)
    ctfs = truth.ctfs()
    particles = phase_flip_particles(stack, ctfs, apix)
    from emflow.geometry.orientations import orientations
    eul = np.asarray(orientations("eman", sym="c1", n=args.nproj))
    opts = RefineOptions(sym="c1", apix=apix)
    R = eman_to_matrix(eul[:, 0], eul[:, 1], eul[:, 2])
    ctf_abs, snr_full, snr_sh = ctf_arrays(ctfs, box, apix)
    # warm-up (numba compilation) on a tiny problem, not timed
    w = simmx(particles[:2], project3d(vol, eul[:3]), opts.simmx_options(), particle_snr=snr_sh[:2])
    class_average(particles[:2], classify(w), project3d(vol, eul[:3]), opts.classaverage_options())
    times = {}
    t = time.perf_counter()
    proj = project3d(vol, eul)
    times["project3d"] = time.perf_counter() - t
    pair_before = fft_pair_seconds(box)
    t, c = time.perf_counter(), time.process_time()
    mx = simmx(particles, proj, opts.simmx_options(), particle_snr=snr_sh)
    times["simmx"] = time.perf_counter() - t
    simmx_cpu = time.process_time() - c
    t = time.perf_counter()
    cls = classify(mx)
    times["classify"] = time.perf_counter() - t
    t = time.perf_counter()
    avgs, info = class_average(particles, cls, proj, opts.classaverage_options(), ctf_abs=ctf_abs, particle_snr=snr_full)
    times["classaverage"] = time.perf_counter() - t
    t = time.perf_counter()
    make3d(avgs, R, info["ptcl_repr"], opts.make3d_options())
    times["make3d"] = time.perf_counter() - t
    import dataclasses
    exh = dataclasses.replace(opts.simmx_options(), coarse_keep=0)
    t, c = time.perf_counter(), time.process_time()
    mx_exh = simmx(particles, proj, exh, particle_snr=snr_sh)
    times_exh, cpu_exh = time.perf_counter() - t, time.process_time() - c
    pair_after = fft_pair_seconds(box)
    d = R[:, 2, :]
    b1, b0 = np.argmin(mx[0], axis=1), np.argmin(mx_exh[0], axis=1)
    view = np.degrees(np.arccos(np.clip(np.abs((d[b1] * d[b0]).sum(axis=1)), 0, 1)))
    cos = np.abs(d @ d.T)
    np.fill_diagonal(cos, 0)
    step = args.step or float(np.median(np.degrees(np.arccos(np.clip(cos.max(axis=1), 0, 1)))))
    # the FFT yardstick is measured just before and just after simmx (the machine is shared:
    # wall times swing with the load; CPU seconds are steadier)
    pair = (pair_before[0] + pair_after[0]) / 2
    pair_cpu = (pair_before[1] + pair_after[1]) / 2
    npairs = len(particles) * len(proj)
    per_pair, per_pair_cpu = times["simmx"] / npairs, simmx_cpu / npairs
    out = {"n_particles": len(particles), "n_projections": len(proj), "box": box, "cpus": os.cpu_count(),
           "load_average": os.getloadavg(), "seconds": times, "iteration_seconds": sum(times.values()),
           "simmx_seconds_per_pair": per_pair, "fft_pair_seconds": pair, "simmx_pair_over_fft_pair": per_pair / pair,
           "simmx_cpu_seconds_per_pair": per_pair_cpu, "fft_pair_cpu_seconds": pair_cpu,
           "simmx_pair_over_fft_pair_cpu": per_pair_cpu / pair_cpu,
           "exhaustive_simmx_seconds": times_exh, "exhaustive_simmx_cpu_seconds": cpu_exh,
           "exhaustive_pair_over_fft_pair": times_exh / npairs / pair,
           "exhaustive_over_coarse_to_fine": times_exh / times["simmx"],
           "exhaustive_over_coarse_to_fine_cpu": cpu_exh / simmx_cpu,
           "same_projection_as_exhaustive": float(np.mean(b1 == b0)),
           "within_step_of_exhaustive": float(np.mean(view <= step * 1.01 + 1e-6)), "step_deg": step}
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
