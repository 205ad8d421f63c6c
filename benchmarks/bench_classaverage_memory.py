"""Peak memory of class averaging against the number of particles, in blocks and all in memory.

Each measurement runs in a fresh process (its VmHWM is the peak) and performs what the spa_classaverage job
does after reading its inputs: :func:`emflow.spa.refine_loop.stage_classaverage` with the CTF averager over
``--classes`` reference projections (20S proteasome, D7, ``--box``), ``classiter`` 1, members assigned at
random (the class averaging's cost does not depend on the assignment's quality), the particles produced by a
reader ``block`` rows at a time (CTF-modulated projections plus noise at SNR 0.08, generated per block from
the row index: nothing of the stack is held outside the block). The bound printed beside each peak is what
the job declares (:func:`emflow.pipeline.resources.spa_classaverage_mem_mb`) for a stack of that size.

Usage: ``python benchmarks/bench_classaverage_memory.py [--n 2000 8000] [--box 48] [--block 1000] [--out f.json]``
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from emflow._numba import set_threads
    set_threads(2)
    from emflow.ctf import CTF
    from emflow.demo.data import structure_path
    from emflow.demo.phantom import resample_map
    from emflow.geometry import random_rotations
    from emflow.io import read_mrc
    from emflow.projection import project
    from emflow.spa.refine_loop import RefineOptions, phase_flip_particles, stage_classaverage, stage_project
    n, box, block, ncls = %(n)d, %(box)d, %(block)d, %(ncls)d
    ref, ap = read_mrc(structure_path("proteasome20S"))
    apix = ap * ref.shape[0] / box
    model = resample_map(ref, ap, apix, box=box)
    opts = RefineOptions(sym="d7", apix=apix, orientgen="eman:n=%%d:inc_mirror=0" %% ncls, classaverager="ctf",
                         classiter=1)
    _, proj, _ = stage_project(model, opts)
    rng = np.random.default_rng(0)
    assign = rng.integers(0, len(proj), n)
    classmx = np.zeros((7, n, 1), np.float32)
    classmx[0, :, 0], classmx[1, :, 0] = assign, 1.0
    def read(rows):
        g = np.random.default_rng(int(rows[0]))
        ctfs = [CTF(defocus_um=float(d)) for d in g.uniform(1.0, 2.5, len(rows))]
        img = project(model, random_rotations(len(rows), g))
        sig = float(img.std())
        img = img + g.normal(0, sig / np.sqrt(0.08), img.shape).astype(np.float32)
        return phase_flip_particles(img, ctfs, apix).astype(np.float32), ctfs, None
    t = time.perf_counter()
    if block > 0:
        avgs, info = stage_classaverage((n, read), classmx, proj, opts, block=block)
    else:
        parts, ctfs, _ = read(np.arange(n))
        avgs, info = stage_classaverage(parts, classmx, proj, opts, ctfs=ctfs)
    out = {"n": n, "box": box, "block": block, "n_proj": int(len(proj)), "seconds": time.perf_counter() - t,
           "stack_mb": n * box * box * 4 / 1e6}
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            out["peak_mb"] = int(line.split()[1]) / 1024
    print(json.dumps(out))
    """
)


def measure(n: int, box: int, block: int, ncls: int) -> dict:
    code = WORKER % {"n": n, "box": box, "block": block, "ncls": ncls}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    from emflow.pipeline import resources as R

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--box", type=int, default=48)
    ap.add_argument("--block", type=int, default=1000, help="particles per block (0: all in memory, as before)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--in-memory", action="store_true", help="also measure every n with the whole stack in memory")
    ap.add_argument("--out", default="results/benchmarks/bench_classaverage_memory.json")
    a = ap.parse_args(argv)
    rows = []
    for n in a.n:
        for block in ([a.block, 0] if a.in_memory else [a.block]):
            r = measure(n, a.box, block, a.classes)
            r["declared_mb"] = R.spa_classaverage_mem_mb(r["stack_mb"], 1, r["n_proj"], a.box)
            rows.append(r)
            print(f"n {n:6d} box {a.box} block {block or 'all':>5}: peak {r['peak_mb']:7.0f} MB, stack "
                  f"{r['stack_mb']:6.0f} MB, declared {r['declared_mb']} MB; {r['seconds']:.0f} s", file=sys.stderr)
    text = json.dumps(rows, indent=1)
    print(text)
    path = pathlib.Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
