"""Benchmark of emflow.sta.align3d's global search (JSON on stdout, or to --out).

For box 32 and 64: seconds per particle for align_global (coarse grid + Nelder–Mead refinement)
and for the SGD search initial_model.align_coarse_to_fine (22.5° grid + batched pattern search),
with their median angular errors vs the simulated truth, orientations scored per second by the
fused kernel, and — measured in the same run for scale — the time of one FFT of the particle's
2×-padded subtilt stack.

    .venv/bin/python benchmarks/bench_align3d.py [--boxes 32 64] [--delta 15] [--out f.json]
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "naive"))

from naive_align3d import blob_phantom, simulate_particles  # noqa: E402

from emflow.geometry import angle_between, eman_to_matrix, orientations  # noqa: E402
from emflow.projection import VolumeProjector  # noqa: E402
from emflow.sta import align3d, initial_model  # noqa: E402


def bench(box: int, delta: float, nptcl: int, tilts) -> dict:
    rng = np.random.default_rng(0)
    vol = blob_phantom(box)
    imgs, P, R, t = simulate_particles(vol, nptcl, tilts, 0.2, rng, max_shift_px=1.0)
    proj = VolumeProjector(vol)
    parts = [align3d.SubtiltParticle.from_images(im, P) for im in imgs]
    maxp = box // 4  # ≈ 4 px resolution-limit shells used at 50 Å for 12.5 Å/px data
    align3d.align_global(proj, parts[0], maxp=maxp, delta=30.0, npos=2)  # compile
    eul = orientations("eman", delta=delta, phitoo=delta, inc_mirror=True)
    rots = eman_to_matrix(eul[:, 0], eul[:, 1], eul[:, 2])
    t0 = time.perf_counter()
    align3d.score_orientations(proj, parts[0], rots, None, 2, min(maxp, 12))
    t_scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    errs = []
    for p, Rt in zip(parts, R):
        a = align3d.align_global(proj, p, maxp=maxp, delta=delta, npos=4)
        errs.append(float(angle_between(a.rotation, Rt)))
    t_ptcl = (time.perf_counter() - t0) / nptcl
    initial_model.align_coarse_to_fine(proj, parts[0], maxp=maxp, delta=45.0, npos=1)  # compile
    t0 = time.perf_counter()
    errs_c2f = []
    for p, Rt in zip(parts, R):
        a = initial_model.align_coarse_to_fine(proj, p, maxp=maxp)
        errs_c2f.append(float(angle_between(a.rotation, Rt)))
    t_c2f = (time.perf_counter() - t0) / nptcl
    stack = np.zeros((len(tilts), 2 * box, 2 * box), np.float32)
    scipy.fft.rfft2(stack, workers=-1)
    t0 = time.perf_counter()
    for _ in range(5):
        scipy.fft.rfft2(stack, workers=-1)
    t_fft = (time.perf_counter() - t0) / 5
    return {"box": box, "ntilt": len(tilts), "delta_deg": delta, "n_orientations": len(rots),
            "maxp": maxp, "seconds_per_particle_global": t_ptcl,
            "seconds_per_particle_coarse_to_fine": t_c2f,
            "median_angle_error_coarse_to_fine_deg": float(np.median(errs_c2f)),
            "orientations_per_second_scan": len(rots) / t_scan,
            "seconds_fft_padded_subtilt_stack": t_fft,
            "median_angle_error_deg": float(np.median(errs)), "threads": numba.get_num_threads()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--boxes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--delta", type=float, default=15.0)
    ap.add_argument("--nptcl", type=int, default=2)
    ap.add_argument("--out", type=pathlib.Path)
    a = ap.parse_args(argv)
    tilts = np.arange(-60.0, 61.0, 3.0)
    res = [bench(b, a.delta, a.nptcl, tilts) for b in a.boxes]
    text = json.dumps(res, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
