"""Extraction memory and throughput: peak RSS must not grow with the number of particles.

Writes one noise tilt series (default 41 tilts of 1024² px at 2.62 Å/px, ±60°, 3 µm defocus) as an
MRC file and extracts box-128 particles (256² subtilts) at several particle counts (default 20, 40,
80), each in a fresh process so its peak RSS (``VmHWM``; ``resource.getrusage`` is recorded too,
see :func:`peak_rss_mb`) is that run's own:

* ``stream`` (the workflow's chunk job): the tilt series memory-mapped (:class:`TiltSource`),
  particles extracted in blocks sized by a memory budget (``--mem-mb``, as ``resources.mem_mb``)
  and written as they are made (:func:`emflow.sta.extract.extract_to_files`);
* ``memory`` (the path before issue 13): the whole tilt series read and prepared, every subtilt and
  volume kept (:func:`extract_particles`), then written.

Noise instead of a simulated specimen: time and memory do not depend on the content.
The bound printed beside each run, measured in the same process after the extraction: one forward +
inverse 2D FFT of every subtilt (read back from the written file block by block), the FFT work
extraction cannot avoid.

Usage: ``python benchmarks/bench_extract.py [--counts 20 40 80] [--threads 1 2] [--modes stream memory]
[--mem-mb 2000] [--out results/benchmarks/bench_extract.json]``
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
APIX = 2.62


def _geometry(n_tilts: int):
    from emflow.sta.extract import TiltGeometry

    tilts = np.linspace(-60.0, 60.0, n_tilts)
    params = np.zeros((n_tilts, 5))
    params[:, 3] = tilts
    return TiltGeometry(params=params, apix_unbin=APIX, defocus_um=np.full(n_tilts, 3.0),
                        phase_deg=np.zeros(n_tilts))


def _positions(n: int, image: int, thickness: int, box: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    half = image / 2 - box  # the box stays inside every (untilted and tilted) image
    return np.column_stack([rng.uniform(-half / 2, half / 2, n), rng.uniform(-half, half, n),
                            rng.uniform(-thickness / 2, thickness / 2, n)])


def peak_rss_mb() -> tuple[float, float]:
    """``(VmHWM, ru_maxrss)`` of this process in MB. ``resource.getrusage``'s ``ru_maxrss`` carries
    the parent's high-water mark over ``fork``+``exec`` (Linux keeps ``signal->maxrss``), so a child
    started by a parent that held a large array reports at least that; ``VmHWM`` (/proc/self/status)
    is this process's own peak."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024, ru
    except OSError:
        pass
    return ru, ru


def worker(a) -> dict:
    """One extraction in this process; returns time, peak RSS and the FFT bound."""
    from emflow import fourier
    from emflow._numba import set_threads
    from emflow.io import HdfStackWriter, hdf_count, read_hdf_stack, read_mrc
    from emflow.sta.extract import (
        ExtractParams,
        TiltSource,
        extract_particles,
        extract_to_files,
        open_tilt_series,
        particle_headers,
        particles_per_block,
        prepare_tilt_series,
        subtilt_headers,
    )

    set_threads(a.threads)
    geom = _geometry(a.tilts)
    params = ExtractParams(box=a.box, pad2d=a.pad2d)
    coords = _positions(a.n, a.image, a.thickness, a.box)
    out = pathlib.Path(a.tmp)
    f2, f3 = str(out / f"sub_{a.mode}_{a.n}_{a.threads}.hdf"), str(out / f"p3d_{a.mode}_{a.n}_{a.threads}.hdf")
    # warm-up (numba compilation, FFT plans) on one particle, not timed
    extract_particles(prepare_tilt_series(read_mrc(a.ts, mmap=True)[0][:, :a.pad2d * 2, :a.pad2d * 2]), geom,
                      np.zeros((1, 3)), params, workers=a.threads)
    rss0 = peak_rss_mb()[0]
    t0 = time.perf_counter()
    if a.mode == "stream":
        block = particles_per_block(a.mem_mb, a.tilts, a.pad2d, a.box)
        extract_to_files(TiltSource(open_tilt_series(a.ts)), geom, coords, params, particles_path=f2,
                         particles3d_path=f3, block=block, workers=a.threads)
    else:
        block = None
        stack = read_mrc(a.ts)[0]
        res = extract_particles(prepare_tilt_series(stack), geom, coords, params, workers=a.threads)
        with HdfStackWriter(f2, apix=APIX) as w:
            w.append(res.subtilts, subtilt_headers(res, coords, geom, file_threed=f3))
        with HdfStackWriter(f3, apix=APIX) as w:
            w.append(res.volumes, particle_headers(res, coords, file_twod=f2))
        del res, stack
    seconds = time.perf_counter() - t0
    peak, peak_ru = peak_rss_mb()
    m = hdf_count(f2)
    t_fft = 0.0
    for s in range(0, m, 256):  # bound: one forward + inverse FFT of every subtilt
        imgs, _ = read_hdf_stack(f2, list(range(s, min(m, s + 256))))
        t1 = time.perf_counter()
        fourier.ift(fourier.ft(imgs, axes=(-2, -1), workers=a.threads), (a.pad2d, a.pad2d), workers=a.threads)
        t_fft += time.perf_counter() - t1
    for f in (f2, f3):
        pathlib.Path(f).unlink()
    return {"mode": a.mode, "n_particles": a.n, "threads": a.threads, "block_particles": block,
            "mem_mb_budget": a.mem_mb if a.mode == "stream" else None, "n_subtilts": m,
            "extract_s": round(seconds, 2), "particles_per_s": round(a.n / seconds, 3),
            "subtilts_per_s": round(m / seconds, 1), "fft_bound_s": round(t_fft, 3),
            "ratio_to_fft_bound": round(seconds / t_fft, 1), "rss_before_mb": round(rss0),
            "peak_rss_mb": round(peak), "ru_maxrss_mb": round(peak_ru)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[20, 40, 80])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["stream"], choices=["stream", "memory"])
    ap.add_argument("--mem-mb", type=float, default=2000.0, help="stream: memory budget (resources.mem_mb)")
    ap.add_argument("--tilts", type=int, default=41)
    ap.add_argument("--image", type=int, default=1024, help="tilt image size (px, square)")
    ap.add_argument("--thickness", type=int, default=256)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--pad2d", type=int, default=256)
    ap.add_argument("--out", default="results/benchmarks/bench_extract.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ts", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        a.threads = a.threads[0]
        print(json.dumps(worker(a)))
        return {}

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        ts = pathlib.Path(tmp) / "ts.mrc"
        # written by a child process, so this (parent) process stays small: see peak_rss_mb
        subprocess.run([sys.executable, "-c", "import numpy as np; from emflow.io import write_mrc; "
                        f"write_mrc({str(ts)!r}, np.random.default_rng(1).standard_normal(({a.tilts}, {a.image}, "
                        f"{a.image}), dtype=np.float32), {APIX})"], check=True)
        for mode in a.modes:
            for threads in a.threads:
                for n in a.counts:
                    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--n", str(n), "--threads",
                           str(threads), "--ts", str(ts), "--tmp", tmp, "--mem-mb", str(a.mem_mb), "--tilts",
                           str(a.tilts), "--image", str(a.image), "--thickness", str(a.thickness), "--box",
                           str(a.box), "--pad2d", str(a.pad2d)]
                    res = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
                    rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                    print(json.dumps(rows[-1]), flush=True)
    out = {"tilt_series": [a.tilts, a.image, a.image], "apix": APIX, "box": a.box, "pad2d": a.pad2d,
           "cpu": _cpu(), "runs": rows}
    for mode in a.modes:
        for threads in a.threads:
            r = [x for x in rows if x["mode"] == mode and x["threads"] == threads]
            if len(r) > 1:
                slope = np.polyfit([x["n_particles"] for x in r], [x["peak_rss_mb"] for x in r], 1)[0]
                out[f"{mode}_{threads}t_rss_mb_per_particle"] = round(float(slope), 2)
                print(f"{mode}, {threads} thread(s): peak RSS {[x['peak_rss_mb'] for x in r]} MB at "
                      f"{[x['n_particles'] for x in r]} particles ({slope:+.2f} MB/particle); "
                      f"{[x['particles_per_s'] for x in r]} particles/s, "
                      f"{[x['ratio_to_fft_bound'] for x in r]}x the FFT bound")
    path = pathlib.Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
