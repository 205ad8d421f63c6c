"""Throughput of the Fourier core against its FFT bound.

For each box ``b`` (padded ``N = 2b``) it measures, in one run on the same machine:

* ``fft3d_pair_s``: rfftn + irfftn of the padded ``N³`` volume (scipy.fft, all workers): the
  bound that reconstruction's ``finish`` and the projector set-up cannot beat;
* ``fft2d_pair_ms``: rfft2 + irfft2 of one padded ``N²`` slice;
* projection: ``VolumeProjector.project`` slices/s (extraction + 2D IFFT) and bare
  ``slices_ft`` slices/s;
* insertion: ``Reconstructor.insert`` slices/s and voxel updates/s (8 per slice pixel for
  trilinear) for the ``slab`` and ``private`` strategies, and ``gauss_2``;
* ``rotate_volume`` voxels/s.

Usage: ``python benchmarks/bench_fourier.py [--boxes 64 128] [--big] [--out benchmarks/results/fourier.json]``
(``--big`` adds box 256).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import numba
import numpy as np
import scipy.fft

from emflow import projection
from emflow.geometry import random_rotations
from emflow.reconstruct import Reconstructor
from emflow.rotate import rotate_volume


def _best(fn, repeat=3):
    fn()  # warm-up (numba compile, FFT plans)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_box(b: int, nslices: int, rng) -> dict:
    N = 2 * b
    vol = rng.standard_normal((b, b, b)).astype(np.float32)
    padded = np.zeros((N, N, N), np.float32)
    r = {"box": b, "n_pad": N, "nslices": nslices}

    r["fft3d_pair_s"] = _best(
        lambda: scipy.fft.irfftn(scipy.fft.rfftn(padded, workers=-1), s=padded.shape, workers=-1), 2)
    sl = np.zeros((N, N), np.float32)
    r["fft2d_pair_ms"] = 1e3 * _best(
        lambda: scipy.fft.irfft2(scipy.fft.rfft2(sl, workers=-1), s=sl.shape, workers=-1), 5)

    R = random_rotations(nslices, rng)
    r["projector_setup_s"] = _best(lambda: projection.VolumeProjector(vol), 1)
    vp = projection.VolumeProjector(vol)
    t = _best(lambda: vp.slices_ft(R), 2)
    r["slice_extract_per_s"] = nslices / t
    t = _best(lambda: vp.project(R), 2)
    r["project_per_s"] = nslices / t

    imgs = vp.project(R)
    r2 = np.add.outer(np.fft.fftfreq(N) ** 2 * N * N, np.arange(N // 2 + 1) ** 2.0)
    npix = np.count_nonzero(r2 <= (N / 2 - 1) ** 2)
    for kernel, strategy, nupd in [("trilinear", "slab", 8), ("trilinear", "private", 8), ("gauss_2", "auto", 8),
                                   ("nearest", "auto", 1)]:
        rec = Reconstructor(b, kernel=kernel, strategy=strategy)
        S = rec.slices_from_images(imgs)
        t = _best(lambda: rec.insert_ft(S, R), 2)
        key = f"insert_{kernel}_{strategy}"
        r[key + "_per_s"] = nslices / t
        r[key + "_voxel_updates_per_s"] = nslices * npix * nupd / t
    rec = Reconstructor(b)
    r["insert_images_trilinear_auto_per_s"] = nslices / _best(lambda: rec.insert(imgs, R), 2)
    r["finish_s"] = _best(lambda: rec.finish(), 2)
    out = np.empty_like(vol)
    Rr = random_rotations(1, rng)[0]
    r["rotate_volume_voxels_per_s"] = b**3 / _best(lambda: rotate_volume(vol, Rr, out=out), 3)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--big", action="store_true", help="also run box 256 (needs ~3 GB RAM)")
    ap.add_argument("--nslices", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/fourier.json")
    a = ap.parse_args(argv)
    boxes = list(a.boxes) + ([256] if a.big else [])
    rng = np.random.default_rng(0)
    rows = [bench_box(b, a.nslices, rng) for b in boxes]
    meta = {"threads": numba.get_num_threads(), "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "numpy": np.__version__, "scipy": scipy.__version__, "numba": numba.__version__}
    cols = [("box", "{:d}"), ("fft3d_pair_s", "{:.3f}"), ("fft2d_pair_ms", "{:.2f}"), ("project_per_s", "{:.0f}"),
            ("slice_extract_per_s", "{:.0f}"), ("insert_trilinear_slab_per_s", "{:.0f}"),
            ("insert_trilinear_private_per_s", "{:.0f}"), ("insert_gauss_2_auto_per_s", "{:.0f}"),
            ("insert_trilinear_slab_voxel_updates_per_s", "{:.3g}"), ("finish_s", "{:.3f}"),
            ("rotate_volume_voxels_per_s", "{:.3g}")]
    print(f"threads={meta['threads']} cpus={meta['cpus']}")
    for name, fmt in cols:
        print(f"{name:45s} " + " ".join(f"{fmt.format(r[name]):>10s}" for r in rows))
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
