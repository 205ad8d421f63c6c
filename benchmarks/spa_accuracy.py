"""Accuracy of the in-process e2refine loop against ground truth (issue #5).

Simulates the demo's single-particle data (20S proteasome, box 64, 3.275 Å/px, CTF with defocus
1–2.5 µm, SNR 0.08, shifts ≤ 2 px; ``config/config.yaml`` ``demo.spa``), starts from the truth
low-passed to 30 Å (``spa.startingmodel: truth_lowpass30``) or a blob, and runs ``--iters``
iterations of :func:`emflow.spa.refine_loop.run_iteration`. After every iteration it prints the
FSC-vs-truth 0.5 and 0.143 resolutions, the hand check (mean FSC over 0.1–0.3 cycles/px against the
truth and against its mirror image) and the seconds per stage. Writes JSON with ``--out``.

Usage: python benchmarks/spa_accuracy.py [--n 2000] [--sym d7] [--iters 4]
       [--delta 6,6,4,4] [--snr 0.08] [--start truth_lowpass30|blob] [--out acc.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def resolution_at(c, apix: float, threshold: float) -> float:
    """First crossing of ``threshold`` (linear interpolation between shells) → Å."""
    f, v = c.freq, c.fsc
    for k in range(1, len(v)):
        if v[k] < threshold:
            a = (v[k - 1] - threshold) / max(v[k - 1] - v[k], 1e-12)
            fr = f[k - 1] + a * (f[k] - f[k - 1])
            return apix / fr if fr > 0 else float("inf")
    return apix / f[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--sym", default="d7")
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--delta", default="6", help="comma list of orientgen delta per iteration (last repeats)")
    ap.add_argument("--snr", type=float, default=0.08)
    ap.add_argument("--start", default="truth_lowpass30")
    ap.add_argument("--averager", default="ctf")
    ap.add_argument("--classralign", default="refine")
    ap.add_argument("--recon", default="fourier")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import mrcfile

    from emflow.demo.data import __file__ as data_init
    from emflow.demo.simulate import resample_map, simulate_spa
    from emflow.filters import lowpass_tophat
    from emflow.fsc import fsc
    from emflow.spa.refine_loop import RefineOptions, phase_flip_particles, run_iteration

    with mrcfile.open(data_init.replace("__init__.py", "proteasome20S_3j9i_2p62A_box80.mrc.gz")) as m:
        ref, ap_ref = np.asarray(m.data, np.float32), float(m.voxel_size.x)
    box, apix = 64, 3.275
    t0 = time.perf_counter()
    stack, truth = simulate_spa(ref, ap_ref, apix=apix, box=box, n=args.n, rng=np.random.default_rng(args.seed),
                                snr=args.snr)
    vol = resample_map(ref, ap_ref, apix, box=box)
    ctfs = truth.ctfs()
    particles = phase_flip_particles(stack, ctfs, apix)
    if args.start == "blob":
        from emflow.masks import soft_sphere
        model = lowpass_tophat(soft_sphere(box, box * 0.3, 3.0), apix, 30.0)
    else:
        model = lowpass_tophat(vol, apix, 30.0)
    print(f"simulated {args.n} particles in {time.perf_counter() - t0:.1f} s", flush=True)
    deltas = [float(d) for d in args.delta.split(",")]
    rows = []

    def report(it, model, secs):
        c = fsc(model, vol)
        cm = fsc(model, vol[::-1].copy())
        band = (c.freq >= 0.1) & (c.freq <= 0.3)
        row = {"iter": it, "res05_a": resolution_at(c, apix, 0.5), "res0143_a": resolution_at(c, apix, 0.143),
               "hand_fsc_true": float(c.fsc[band].mean()), "hand_fsc_mirror": float(cm.fsc[band].mean()),
               "seconds": secs}
        row["res05_px"] = row["res05_a"] / apix
        rows.append(row)
        print(json.dumps(row), flush=True)

    report(0, model, {})
    for it in range(1, args.iters + 1):
        d = deltas[min(it - 1, len(deltas) - 1)]
        opts = RefineOptions(sym=args.sym, apix=apix, orientgen=f"eman:delta={d}:inc_mirror=0",
                             classaverager=args.averager, classralign=args.classralign or None, recon=args.recon)
        secs = {}
        t = time.perf_counter()
        r = run_iteration(model, particles, opts, ctfs=ctfs, timings=secs)
        secs["total"] = time.perf_counter() - t
        model = r["threed"]
        report(it, model, {k: round(v, 1) for k, v in secs.items()})
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "iterations": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
