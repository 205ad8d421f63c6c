"""Demo-simulation benchmark: wall time of one simulated tomogram, of the SPA particle set and
of the bin-4 WBP reconstruction, with the settings of ``config/config.yaml`` (section ``demo``),
next to the time of the FFTs they cannot avoid (one inverse FFT per particle patch), measured in
the same run.

    .venv/bin/python benchmarks/bench_simulate.py [--threads N] [--spa-particles N] [--out results.json]

Writes JSON (stdout, and ``--out`` if given). Timings include numba compilation on a cold cache
only in ``first_call_s``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import scipy.fft

REPO = pathlib.Path(__file__).resolve().parents[1]


def _timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def _ifft_bound(n_images: int, size: int, threads: int) -> float:
    """Seconds for ``n_images`` inverse real FFTs of ``size²`` (batched) — the floor of the simulator."""
    batch = min(n_images, 256)
    spec = np.zeros((batch, size, size // 2 + 1), np.complex64)
    scipy.fft.irfft2(spec, s=(size, size), workers=threads)
    t0 = time.perf_counter()
    scipy.fft.irfft2(spec, s=(size, size), workers=threads)
    return (time.perf_counter() - t0) * n_images / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spa-particles", type=int, default=None, help="override demo.spa.n_particles")
    ap.add_argument("--out", type=pathlib.Path)
    args = ap.parse_args()

    from emflow._numba import set_threads
    from emflow.demo.data import structure_path
    from emflow.demo.simulate import resample_map, simulate_spa, simulate_tilt_series
    from emflow.io import read_mrc
    from emflow.pipeline.config import load_config
    from emflow.sta.tomo import reconstruct_wbp

    set_threads(args.threads)
    cfg = load_config(REPO / "config/config.yaml", REPO / "config/schema.yaml")
    demo, mic = cfg["demo"], cfg["microscope"]
    t = demo["tomo"]
    tilts = np.arange(t["tilt_min_deg"], t["tilt_max_deg"] + 1e-6, t["tilt_step_deg"])
    ref, apix_ref = read_mrc(structure_path(t["structure"]))

    def tomo_run(n_particles):
        return simulate_tilt_series(
            ref, apix_ref, apix=mic["apix"], shape_xyz=t["shape_xyz"], tilts_deg=tilts, n_particles=n_particles,
            rng=np.random.default_rng(demo["seed"]), defocus_um=t["defocus_um"], voltage_kv=mic["voltage_kv"],
            cs_mm=mic["cs_mm"], ampcont=mic["ampcont"], dose_per_tilt=t["dose_per_tilt"], snr=t["snr"],
            tilt_axis_deg=t["tilt_axis_deg"], min_dist_px=t["min_dist_px"], tilt_scheme=t["tilt_scheme"],
            defocus_jitter_um=t["defocus_jitter_um"], workers=args.threads)

    _, first = _timed(lambda: tomo_run(1))  # compiles numba kernels
    (stack, truth), t_tomo = _timed(lambda: tomo_run(t["n_particles"]))
    box_pad = 2 * resample_map(ref, apix_ref, mic["apix"]).shape[0]
    tomo_bound = _ifft_bound(len(tilts) * t["n_particles"], box_pad, args.threads)

    rec_args = dict(bin=cfg["tomogram"]["bin"], thickness_px=cfg["tomogram"]["thickness_px"],
                    radial_weight=cfg["tomogram"]["radial_filter"], lowpass=cfg["tomogram"]["lowpass"],
                    threads=args.threads)
    reconstruct_wbp(stack[:2], tilts[:2], **rec_args)  # compile
    vol, t_wbp = _timed(lambda: reconstruct_wbp(stack, tilts, **rec_args))
    voxel_tilts = vol.size * len(tilts)

    s = demo["spa"]
    n_spa = args.spa_particles or s["n_particles"]
    sref, sapix = read_mrc(structure_path(s["structure"]))
    (pstack, _), t_spa = _timed(lambda: simulate_spa(
        sref, sapix, apix=s["apix"], box=s["box"], n=n_spa, rng=np.random.default_rng(demo["seed"]),
        defocus_range_um=(s["defocus_min_um"], s["defocus_max_um"]), snr=s["snr"], max_shift_px=s["max_shift_px"],
        voltage_kv=mic["voltage_kv"], cs_mm=mic["cs_mm"], ampcont=mic["ampcont"], workers=args.threads))
    spa_bound = _ifft_bound(n_spa, 2 * s["box"], args.threads)

    result = {
        "threads": args.threads,
        "tilt_series": {"shape": list(stack.shape), "n_particles": t["n_particles"], "wall_s": t_tomo,
                        "first_call_s": first, "ifft_floor_s": tomo_bound, "ratio_to_floor": t_tomo / tomo_bound},
        "wbp": {"shape_zyx": list(vol.shape), "wall_s": t_wbp,
                "voxel_tilt_updates_per_s": voxel_tilts / t_wbp},
        "spa": {"n_particles": n_spa, "box": s["box"], "wall_s": t_spa, "ifft_floor_s": spa_bound,
                "ratio_to_floor": t_spa / spa_bound, "particles_per_s": n_spa / t_spa},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
