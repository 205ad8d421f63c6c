"""Throughput of EMAN2 HDF stacks (``emflow.io.hdf``) against the raw h5py bound.

For each case (``2d``: 128² subtilts, ``3d``: 64³ particles) it measures, in one run on the same
machine and folder:

* ``write_images_per_s`` / ``read_images_per_s``: :func:`write_hdf_stack` and
  :func:`read_hdf_stack` of an EMAN2-layout stack (one group per image, ~16 ``EMAN.*`` header
  attributes each, including a per-image Transform, as the extraction writes them);
* ``stream_write_images_per_s``: :class:`HdfStackWriter` fed in chunks of ``--chunk`` images;
* ``bound_write_images_per_s`` / ``bound_read_images_per_s``: the same bytes written/read as one
  contiguous h5py dataset, which no per-image layout can beat;
* ``*_fraction_of_bound``: ratio of the two (wall time);
* ``*_cpu_s`` / ``*_images_per_cpu_s``: the same from process CPU time, steadier than wall time
  on a shared machine.

Reads come from the page cache (the file was just written), as in a workflow that reads a
stack soon after writing it. Each number is the best of ``--repeat`` runs.

Usage: ``python benchmarks/bench_io.py [--n2d 1500] [--n3d 200] [--out benchmarks/results/io.json]
[--impl path/to/other_hdf.py]`` (``--impl`` times another implementation of the same functions,
e.g. an older ``hdf.py``, for before/after comparisons).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import tempfile
import time

import h5py
import numpy as np

from emflow.io import transform_to_dict

_CPU: dict[int, float] = {}


def _best(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` runs; the CPU time of that run goes to ``_CPU[id(fn)]``
    (on a shared machine CPU time is the steadier number)."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t, time.process_time() - c))
    _CPU[id(fn)] = best[1]
    return best[0]


def _record(r: dict, key: str, n: int, fn, repeat: int) -> None:
    t = _best(fn, repeat)
    r[f"{key}_s"], r[f"{key}_images_per_s"] = t, n / t
    r[f"{key}_cpu_s"], r[f"{key}_images_per_cpu_s"] = _CPU[id(fn)], n / max(_CPU[id(fn)], 1e-9)


def _headers(n: int, rng) -> list[dict]:
    """Subtilt-like headers: a different Transform and coordinate per image."""
    headers = []
    for i in range(n):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        headers.append({
            "xform.projection": transform_to_dict(q, rng.normal(size=3)),
            "tilt_id": i % 41, "model_id": i // 41, "score": float(rng.normal()),
            "ptcl_source_coord": [float(v) for v in rng.uniform(0, 1000, 3)],
            "file_threed": "particles3d/ts_01__ptcl.hdf",
        })
    return headers


def bench_case(name: str, shape: tuple, n: int, hdf, folder: str, repeat: int, chunk: int, rng) -> dict:
    images = rng.standard_normal((n,) + shape).astype(np.float32)
    headers = _headers(n, rng)
    path = os.path.join(folder, f"{name}.hdf")
    raw = os.path.join(folder, f"{name}_raw.h5")
    r = {"case": name, "shape": list(shape), "n": n, "mbytes": images.nbytes / 1e6,
         "attributes_per_image": len(headers[0]) + 10}

    _record(r, "write", n, lambda: hdf.write_hdf_stack(path, images, headers, apix=5.24), repeat)
    _record(r, "read", n, lambda: hdf.read_hdf_stack(path), repeat)
    back, back_headers = hdf.read_hdf_stack(path)
    assert np.array_equal(back, images) and back_headers[-1]["tilt_id"] == headers[-1]["tilt_id"]

    writer = getattr(hdf, "HdfStackWriter", None)
    if writer is not None:
        def stream():
            with writer(path, apix=5.24) as out:
                for s in range(0, n, chunk):
                    out.append(images[s:s + chunk], headers[s:s + chunk])
        _record(r, "stream_write", n, stream, repeat)

    def raw_write():
        with h5py.File(raw, "w") as f:
            f.create_dataset("stack", data=images)

    def raw_read():
        with h5py.File(raw, "r") as f:
            return f["stack"][()]

    _record(r, "bound_write", n, raw_write, repeat)
    _record(r, "bound_read", n, raw_read, repeat)
    r["write_fraction_of_bound"] = r["write_images_per_s"] / r["bound_write_images_per_s"]
    r["read_fraction_of_bound"] = r["read_images_per_s"] / r["bound_read_images_per_s"]
    for p in (path, raw):
        os.remove(p)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n2d", type=int, default=1500, help="number of 128x128 images")
    ap.add_argument("--n3d", type=int, default=200, help="number of 64^3 volumes")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=256, help="images per HdfStackWriter.append")
    ap.add_argument("--dir", default=None, help="folder for the test files (default: a temp folder)")
    ap.add_argument("--impl", default=None, help="time this hdf.py instead of emflow.io.hdf")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    if args.impl:
        spec = importlib.util.spec_from_file_location("emflow.io._bench_impl", args.impl)
        hdf = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(hdf)
    else:
        from emflow.io import hdf
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="bench_io_", dir=args.dir)
    try:
        cases = []
        if args.n2d:
            cases.append(bench_case("2d_128", (128, 128), args.n2d, hdf, folder, args.repeat, args.chunk, rng))
        if args.n3d:
            cases.append(bench_case("3d_64", (64, 64, 64), args.n3d, hdf, folder, args.repeat, args.chunk, rng))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {"impl": args.impl or "emflow.io.hdf", "h5py": h5py.version.version,
              "hdf5": h5py.version.hdf5_version, "machine": platform.node(), "cpus": os.cpu_count(),
              "loadavg": os.getloadavg(), "cases": cases}
    for c in cases:
        line = (f"{c['case']:7s} n={c['n']:5d}  write {c['write_images_per_s']:8.0f} img/s "
                f"(bound {c['bound_write_images_per_s']:8.0f}, {100 * c['write_fraction_of_bound']:4.0f}%)  "
                f"read {c['read_images_per_s']:8.0f} img/s (bound {c['bound_read_images_per_s']:8.0f}, "
                f"{100 * c['read_fraction_of_bound']:4.0f}%)")
        if "stream_write_images_per_s" in c:
            line += f"  stream-write {c['stream_write_images_per_s']:8.0f} img/s"
        print(line)
        print(f"{'':7s} CPU time: write {c['write_images_per_cpu_s']:8.0f} img/cpu-s, read "
              f"{c['read_images_per_cpu_s']:8.0f} img/cpu-s")
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
