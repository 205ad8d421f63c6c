"""Template-matching benchmark: time per orientation vs. one rfftn + irfftn of the tile,
measured in the same run (goal ≤ 1.3×, issue 13), peak memory vs. the number of rotations (each
search in a fresh process, its own ``VmHWM``; must be flat, one tile and several), the
rotation count of the angular step, and optionally picking accuracy vs. SNR.

    .venv/bin/python benchmarks/bench_tempmatch.py [--threads 1 2] [--reps 5] [--no-memory] [--accuracy]
        [--out results.json]

The bound at each thread count is the FFT pair with the same number of scipy.fft workers (and
numba threads) as the search. On a shared machine the wall-time ratios vary with the load: each
is the median of ``--reps`` repetitions, with its range, and the 1-minute load average is recorded.

Writes JSON (stdout, and ``--out`` if given).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np
import scipy.fft

REPO = pathlib.Path(__file__).resolve().parents[1]


def _pairs(f, k: int) -> tuple[float, float]:
    """``(wall, process CPU)`` seconds per call of ``k`` calls of ``f``."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(k):
        f()
    return (time.perf_counter() - t0) / k, (time.process_time() - c0) / k


def speed(shape, box: int, n_rot: int, threads: int, reps: int = 5) -> dict:
    """Time per rotation of one search against one FFT pair of the tile, measured in the same run.

    Each repetition times ``n_rot // 2`` FFT pairs (scipy.fft rfftn + irfftn, ``workers=threads``),
    one search of ``n_rot`` rotations (``workers=threads``), and the pairs again. The time per
    rotation is read from the search's progress callback (first to last completed rotation:
    no set-up, no compile, no tile statistics); its ratio to the mean pair of that repetition is
    one sample. Reported: median and range over ``reps`` repetitions, wall time (the figure that
    shows thread scaling) and process CPU time (all threads; on a loaded machine the fairer
    figure at one thread, since time spent waiting for a core is not counted).
    """
    from emflow.geometry import random_rotations
    from emflow.sta import tempmatch as tm

    rng = np.random.default_rng(0)
    vol = rng.normal(size=shape).astype(np.float32)
    tmpl = rng.normal(size=(box,) * 3).astype(np.float32)
    weight = np.ones((box, box, box // 2 + 1), np.float32)
    rots = random_rotations(n_rot, rng)
    fshape = tuple(scipy.fft.next_fast_len(n, real=True) for n in shape)
    v = np.zeros(fshape, np.float32)
    pair = lambda: scipy.fft.irfftn(scipy.fft.rfftn(v, workers=threads), s=fshape, workers=threads)  # noqa: E731
    tm.match_template(vol, tmpl, rots[:2], weight=weight, workers=threads, tile_size=max(shape))  # compile
    pair()
    samples = []
    for _ in range(reps):
        stamps: list[tuple[float, float, float]] = []
        before = _pairs(pair, max(2, n_rot // 2))
        tm.match_template(vol, tmpl, rots, weight=weight, workers=threads, tile_size=max(shape),
                          progress=lambda f: stamps.append((f, time.perf_counter(), time.process_time())))
        after = _pairs(pair, max(2, n_rot // 2))
        (f0, w0, c0), (f1, w1, c1) = stamps[0], stamps[-1]
        n = (f1 - f0) * n_rot  # rotations completed between the first and the last stamp
        pw, pc = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        samples.append(((w1 - w0) / n, (c1 - c0) / n, pw, pc))
    a = np.array(samples)
    med = np.median(a, axis=0)
    rw, rc = a[:, 0] / a[:, 2], a[:, 1] / a[:, 3]
    return {"shape_zyx": list(shape), "template_box": box, "n_rotations": n_rot, "threads": threads,
            "repetitions": reps, "fft_pair_ms": 1e3 * med[2], "per_rotation_ms": 1e3 * med[0],
            "ratio_per_rotation_to_fft_pair": float(np.median(rw)),
            "ratio_range": [float(rw.min()), float(rw.max())],
            "fft_pair_cpu_ms": 1e3 * med[3], "per_rotation_cpu_ms": 1e3 * med[1],
            "ratio_per_rotation_to_fft_pair_cpu": float(np.median(rc)),
            "ratio_cpu_range": [float(rc.min()), float(rc.max())],
            "load_average_1min": os.getloadavg()[0]}


def memory(shape, box: int, n_rot: int, tile: int, threads: int) -> dict:
    """Peak RSS of one search in a fresh process (so earlier runs do not count)."""
    import subprocess

    code = f"""
import resource, json, numpy as np, numba
numba.set_num_threads({threads})
from emflow.sta import tempmatch as tm
from emflow.geometry import random_rotations
rng = np.random.default_rng(0)
vol = rng.normal(size={tuple(shape)}).astype(np.float32)
tmpl = rng.normal(size=({box},) * 3).astype(np.float32)
def hwm():  # this process's own peak (ru_maxrss would include the parent's: fork + exec keep it)
    return [float(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
tm.match_template(vol, tmpl, random_rotations(2, rng), workers={threads}, tile_size={tile})
before = hwm()
tm.match_template(vol, tmpl, random_rotations({n_rot}, rng), workers={threads}, tile_size={tile})
print(json.dumps({{"rss_after_warmup_mb": round(before), "peak_rss_mb": round(hwm())}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    return {"shape_zyx": list(shape), "template_box": box, "n_rotations": n_rot, "tile_size": tile,
            "threads": threads, **json.loads(out.stdout.strip().splitlines()[-1])}


def rotation_counts() -> list[dict]:
    from emflow.sta import tempmatch as tm

    rows = []
    for delta in (30.0, 20.0, 15.0, 10.0):
        rows.append({"delta_deg": delta, "n_rotations_c1": len(tm.search_orientations("c1", delta)[1])})
    # pytom-match-pick's auto step for a 250 Å particle at 20.96 Å/px, low-pass 45 Å
    step = tm.search_step_deg("auto", apix=20.96, template_box=16, lowpass_res_a=45.0, particle_diameter_a=250.0)
    rows.append({"delta_deg": round(step, 2), "auto_from": "diameter 250 Å, resolution 45 Å",
                 "n_rotations_c1": len(tm.search_orientations("c1", step)[1])})
    return rows


def accuracy(snrs, threads: int) -> list[dict]:
    sys.path.insert(0, str(REPO / "tests" / "naive"))
    import mrcfile
    from test_tempmatch import _evaluate, _search, make_tomogram

    from emflow.sta import picks as pk
    from emflow.sta import tempmatch as tm

    with mrcfile.open(REPO.parent / "shared/data/ribosome70S_4v5d_10p48A_box32.mrc.gz") as m:
        template = tm.prepare_template(np.asarray(m.data, np.float32), 10.48, 20.96)
    b = template.shape[0]
    _, rots = tm.search_orientations("c1", 30.0)
    rows = []
    for snr in snrs:
        tomo, pos, _ = make_tomogram(template, snr, np.random.default_rng(1234))
        for name, flcf, wedge in (("flcf+wedge", True, True), ("flcf", True, False),
                                  ("cc+wedge", False, True), ("plain_cc", False, False)):
            res = _search(tomo, template, rots, flcf=flcf, wedge=wedge)
            m, _ = _evaluate(res, pos, b)
            top = pk.find_peaks(res.scores, -1.0, min_distance_px=0.75 * b, edge_px=b // 2, max_peaks=len(pos))
            rows.append({"snr": snr, "method": name, "recall": m["recall"], "precision": m["precision"],
                         "f1": m["f1"], "f1_topN": pk.match_picks(top.xyz, pos, 2.0)["f1"]})
            print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    import numba

    out = {"speed": [], "memory": [], "rotations": rotation_counts()}
    for threads in args.threads:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        for shape, box, n_rot in (((64, 128, 128), 32, 64), ((128, 256, 256), 32, 16)):
            row = speed(shape, box, n_rot, threads, args.reps)
            out["speed"].append(row)
            print(f"{threads} thread(s), tile {shape}, template {box}: {row['per_rotation_ms']:.1f} ms per rotation, "
                  f"FFT pair {row['fft_pair_ms']:.1f} ms (bound, same run): {row['ratio_per_rotation_to_fft_pair']:.2f}x "
                  f"(range {row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f}); CPU time "
                  f"{row['per_rotation_cpu_ms']:.1f} vs {row['fft_pair_cpu_ms']:.1f} ms: "
                  f"{row['ratio_per_rotation_to_fft_pair_cpu']:.2f}x (range {row['ratio_cpu_range'][0]:.2f}-"
                  f"{row['ratio_cpu_range'][1]:.2f}); load average {row['load_average_1min']:.1f}",
                  file=sys.stderr)
        if args.no_memory:
            continue
        for tile in (128, 64):  # one tile, several tiles
            for n_rot in (50, 500):  # cached templates of box 32 would add 128 KiB per rotation
                row = memory((64, 128, 128), 32, n_rot, tile, threads)
                out["memory"].append(row)
                print(f"{threads} thread(s), tile {tile}, {n_rot} rotations: peak RSS {row['peak_rss_mb']} MB",
                      file=sys.stderr)
    if args.accuracy:
        out["accuracy"] = accuracy([0.2, 0.1, 0.07, 0.05, 0.03], args.threads[-1])
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
