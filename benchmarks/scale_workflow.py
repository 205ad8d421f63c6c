"""Scale benchmark: the tomography workflow on a user-sized dataset, per-rule time and memory.

Not a timed test: it writes a realistic dataset, runs the workflow on it with Snakemake and
collects every job's benchmark file (Snakemake's ``benchmark:`` tables: wall ``s``, ``max_rss``,
``io_in``/``io_out``, ``cpu_time``) into one JSON, with a per-rule table scaled per 1,000 particles.

Dataset (defaults: issue 13's smallest real size): ``--tomograms`` tilt series of 41 tilts
(−60…60°, 3° steps, dose-symmetric) of ``--size``² px at 5.24 Å/px, each a ``--size`` ×
``--size`` × ``--thickness`` px slab with ``--particles`` 70S ribosomes (box 64, 335 Å) at random
positions and orientations, CTF (3 µm) and dose weighting, noise at SNR ``--snr``. It is simulated
one tilt at a time with :func:`emflow.demo.simulate.simulate_tilt_series` (the same particles in
every call: with no jitter and no alignment errors the generator draws only positions and
rotations from the seed; each call gets its tilt's accumulated dose) and written into a
memory-mapped MRC stack, so generation holds one tilt image, not the series. Written as the
user-data path reads IMOD data: ``TS_XX.st`` (MRC stack), ``TS_XX.tlt`` (IMOD's angles, −tilt),
picks as text (``x y z`` unbinned px from the corner, the true positions; label ``manual``) with
``thickness_unbin_px``; see ``.test/user_tomo/imod_eman2.yaml`` and README "Your own data".

The config (``benchmarks/scale/config.yaml``, written with the data paths into the run folder):
tomography only; the known positions are the picks of the SGD initial model; template matching
on the bin-4 tomogram finds the refinement set; a short ``spt_refine`` schedule.

Usage::

    python benchmarks/scale_workflow.py --workdir /work/scale_run [--size 2048] [--tomograms 1]
        [--particles 1000] [--cores 2] [--generate-only] [--collect-only] [--out scale.json]

``--collect-only`` reads the benchmark files of a run (finished or not) and writes the JSON; run
it again after a partial run to record what completed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ["emflow", "Snakefile", "rules", "workflow", "config", "envs", "report", "profiles"]
APIX = 5.24
TILTS = (-60.0, 60.0, 3.0)


def peak_rss_mb() -> float:
    """Peak RSS (MB) of this process from /proc (VmHWM)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def simulate_one(path_st: pathlib.Path, args, seed: int) -> dict:
    """Simulate one tilt series tilt by tilt into a memory-mapped MRC; returns its truth summary."""
    import mrcfile

    from emflow.demo.data import structure_path
    from emflow.demo.phantom import acquisition_order, footprint_mask
    from emflow.demo.simulate import simulate_tilt_series, tilt_range
    from emflow.io import read_mrc

    ref, apix_ref = read_mrc(structure_path("ribosome70S"))
    tilts = np.array(tilt_range(*TILTS))
    dose = (acquisition_order(tilts, "dose_symmetric") + 0.5) * args.dose_per_tilt
    shape = (args.size, args.size, args.thickness)
    t0 = int(np.argmin(np.abs(tilts)))
    order = [t0] + [t for t in range(tilts.size) if t != t0]
    noise = np.random.default_rng(seed + 1000)
    tmp = path_st.with_suffix(".st.part")
    mrc = mrcfile.new_mmap(tmp, shape=(tilts.size, args.size, args.size), mrc_mode=2, overwrite=True)
    sigma, truth = 0.0, None
    for k, t in enumerate(order):
        # same seed each call -> the same positions and rotations; dose of a lone tilt = 0.5 x dose_per_tilt
        img, truth = simulate_tilt_series(ref, apix_ref, apix=APIX, shape_xyz=shape, tilts_deg=[tilts[t]],
                                          n_particles=args.particles, rng=np.random.default_rng(seed), snr=None,
                                          defocus_um=3.0, dose_per_tilt=2.0 * dose[t], min_dist_px=56,
                                          workers=args.threads)
        if k == 0:  # the simulator's SNR definition: signal variance in the particles' footprints at ~0°
            p = truth.positions_px
            centres = np.stack([p[:, 1] + args.size // 2, p[:, 0] + args.size // 2], axis=1)
            sigma = float(np.sqrt(img[0][footprint_mask(img.shape[1:], centres, truth.radius_px)].var() / args.snr))
        mrc.data[t] = img[0] + noise.normal(0.0, sigma, img.shape[1:]).astype(np.float32)
        print(f"  {path_st.name}: tilt {k + 1}/{tilts.size} ({tilts[t]:+.0f}°)", flush=True)
    mrc.voxel_size = APIX
    mrc.close()
    os.replace(tmp, path_st)
    assert truth is not None
    pathlib.Path(path_st.with_suffix(".tlt")).write_text("".join(f"{-t:.2f}\n" for t in tilts))
    corner = truth.positions_px + np.floor(np.array(shape) / 2.0)
    np.savetxt(path_st.with_suffix(".picks.txt"), corner, fmt="%.2f")
    return {"name": path_st.stem, "n_particles": int(len(corner)), "noise_sigma": sigma, "box": int(truth.box),
            "radius_px": float(truth.radius_px), "positions_px_from_centre": truth.positions_px.tolist(),
            "eman_az_alt_phi": truth.eman_eulers.tolist()}


def generate(work: pathlib.Path, args) -> list[dict]:
    data = work / "user_data"
    data.mkdir(parents=True, exist_ok=True)
    tomos = []
    for i in range(args.tomograms):
        st = data / f"TS_{i + 1:02d}.st"
        t = time.perf_counter()
        truth = simulate_one(st, args, args.seed + i)
        truth["simulate_s"] = time.perf_counter() - t
        (data / f"TS_{i + 1:02d}.truth.json").write_text(json.dumps(truth))
        tomos.append({"name": st.stem, "tilt_series": f"user_data/{st.name}", "tlt": f"user_data/{st.stem}.tlt",
                      "picks": f"user_data/{st.stem}.picks.txt", "thickness_unbin_px": args.thickness,
                      "defocus_um": 3.0})
        print(f"{st}: {truth['simulate_s']:.0f} s, generator peak RSS {peak_rss_mb():.0f} MB", flush=True)
    return tomos


def write_config(work: pathlib.Path, tomos: list[dict], args) -> pathlib.Path:
    """The scale config (benchmarks/scale/config.yaml) plus the data table and size-dependent keys."""
    import yaml

    cfg = yaml.safe_load((REPO / "benchmarks" / "scale" / "config.yaml").read_text())
    cfg["input"]["tomograms"] = tomos
    cfg["tomogram"]["thickness_px"] = args.thickness // cfg["tomogram"]["bin"]
    cfg["picks"]["max_picks"] = int(args.particles * 1.2)
    path = work / "scale_config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def copy_workflow(work: pathlib.Path) -> None:
    for name in WORKFLOW_PARTS:
        src, dst = REPO / name, work / name
        if dst.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            shutil.copy2(src, dst)


def run_workflow(work: pathlib.Path, config: pathlib.Path, cores: int) -> tuple[int, float]:
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", str(cores),
           "--configfile", str(config.name), "--keep-going"]
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONUNBUFFERED="1")
    t = time.perf_counter()
    with open(work / "snakemake.log", "a") as log:
        rc = subprocess.call(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)
    return rc, time.perf_counter() - t


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return float("nan")


def _log_peak_mb(log: pathlib.Path) -> float:
    """The largest peak RSS a job logged (``job peak RSS (VmHWM) N MB``, emflow.pipeline.log; extraction's
    ``peak RSS N MB``): Snakemake's ``max_rss`` is sampled and can miss a short peak."""
    if not log.exists():
        return float("nan")
    found = re.findall(r"peak RSS(?: \(VmHWM\))? (\d+) MB", log.read_text(errors="replace"))
    return max((float(v) for v in found), default=float("nan"))


def collect(work: pathlib.Path) -> dict:
    """Every job's benchmark table under results/benchmarks -> per-rule sums and maxima."""
    jobs = []
    for tsv in sorted((work / "results" / "benchmarks").rglob("*.tsv")):
        with open(tsv) as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            continue
        r = rows[-1]
        rule = tsv.parent.name
        log = work / "results" / "logs" / tsv.relative_to(work / "results" / "benchmarks").with_suffix(".log")
        hwm = _log_peak_mb(log)
        jobs.append({"rule": rule, "file": str(tsv.relative_to(work)), "s": _float(r["s"]),
                     "benchmark_max_rss_mb": _float(r["max_rss"]), "log_peak_rss_mb": hwm,
                     "max_rss_mb": np.nanmax([_float(r["max_rss"]), hwm]), "io_in_mb": _float(r.get("io_in", "nan")),
                     "io_out_mb": _float(r.get("io_out", "nan")), "cpu_time_s": _float(r.get("cpu_time", "nan")),
                     "mean_load": _float(r.get("mean_load", "nan"))})
    rules: dict[str, dict] = {}
    for j in jobs:
        d = rules.setdefault(j["rule"], {"jobs": 0, "total_s": 0.0, "max_rss_mb": 0.0, "cpu_s": 0.0,
                                         "io_out_mb": 0.0, "io_in_mb": 0.0})
        d["jobs"] += 1
        d["total_s"] += j["s"]
        d["cpu_s"] += np.nan_to_num(j["cpu_time_s"])
        d["io_out_mb"] += np.nan_to_num(j["io_out_mb"])
        d["io_in_mb"] += np.nan_to_num(j["io_in_mb"])
        d["max_rss_mb"] = max(d["max_rss_mb"], np.nan_to_num(j["max_rss_mb"]))
    for d in rules.values():
        d["mean_s"] = d["total_s"] / d["jobs"]
    return {"jobs": jobs, "rules": rules}


def du_mb(path: pathlib.Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6 if path.exists() else 0.0


def print_table(res: dict, n_particles: int) -> None:
    per = 1000.0 / max(n_particles, 1)
    print(f"\n{'rule':28s} {'jobs':>5s} {'total s':>9s} {'mean s':>8s} {'s/1000 ptcl':>11s} "
          f"{'CPU s':>8s} {'max RSS MB':>10s}")
    for rule, d in sorted(res["rules"].items(), key=lambda kv: -kv[1]["total_s"]):
        print(f"{rule:28s} {d['jobs']:5d} {d['total_s']:9.1f} {d['mean_s']:8.1f} {d['total_s'] * per:11.1f} "
              f"{d['cpu_s']:8.1f} {d['max_rss_mb']:10.0f}")
    tot = sum(d["total_s"] for d in res["rules"].values())
    print(f"{'sum of job wall times':28s} {'':5s} {tot:9.1f} {'':8s} {tot * per:11.1f}")
    for k, v in res.get("disk_mb", {}).items():
        print(f"disk {k:23s} {v:10.0f} MB  ({v * per:.0f} MB per 1000 particles)")


# How each rule's work scales for the projection: per tomogram (size of its tilt series, fixed here),
# per particle (chunk jobs: jobs ∝ particles, each the same size), or once per run (or per iteration).
PER_TOMOGRAM = ("import_tomogram", "tomogram_reconstruct", "tomogram_slices", "tempmatch_search",
                "tempmatch_extract", "picks_filter", "extract_plan")
PER_PARTICLE = ("extract_chunk", "extract_particles", "spt_refine_align", "spt_refine_make3d")
# the stages in dependency order (a stage starts when the one before it has finished)
STAGES = [("import + tomogram", ("import_tomogram", "tomogram_reconstruct", "tomogram_slices")),
          ("extract (picks)", ("extract_plan", "extract_chunk", "extract_particles", "extract_buildset")),
          ("initial model", ("initial_model_sgd",)),
          ("template matching", ("tempmatch_search", "tempmatch_extract", "picks_filter")),
          ("spt_refine", ("spt_refine_setup", "spt_refine_align", "spt_refine_gather", "spt_refine_make3d",
                          "spt_refine_postprocess", "spt_refine_export"))]


def project(res: dict, measured_tomos: int, measured_particles: int, tomos: int, particles: int,
            node_cores: int, threads: dict[str, int], slurm_jobs: int = 100) -> dict:
    """Projection to ``tomos`` × ``particles`` from the measured jobs (explicit arithmetic, in waves).

    A rule's job count scales with the tomogram count (PER_TOMOGRAM), with the particle count
    (PER_PARTICLE: more chunk jobs of the measured size) or not at all; each job takes its measured
    mean time. On one ``node_cores`` node a rule runs ``node_cores // threads`` jobs at once, so it
    takes ``ceil(jobs / that) × mean job s``; on SLURM ``slurm_jobs`` at once (the profile's
    ``jobs: 100``), ``ceil(jobs / 100) × mean job s``. Stages run one after the other (STAGES).
    """
    import math

    f_tomo = tomos / max(measured_tomos, 1)
    f_ptcl = tomos * particles / max(measured_particles, 1)
    rules = res["rules"]
    out: dict = {"tomograms": tomos, "particles_per_tomogram": particles, "node_cores": node_cores, "stages": []}
    node_s = slurm_s = 0.0
    for stage, names in STAGES:
        job_s = node = slurm = 0.0
        jobs = 0
        for r in names:
            if r not in rules:
                continue
            d = rules[r]
            f = f_ptcl if r in PER_PARTICLE else f_tomo if r in PER_TOMOGRAM else 1.0
            n = max(1, math.ceil(d["jobs"] * f))
            jobs += n
            job_s += n * d["mean_s"]
            node += math.ceil(n / max(1, node_cores // threads.get(r, 1))) * d["mean_s"]
            slurm += math.ceil(n / slurm_jobs) * d["mean_s"]
        out["stages"].append({"stage": stage, "jobs": jobs, "job_hours": job_s / 3600,
                              "node_hours": node / 3600, "slurm_hours": slurm / 3600})
        node_s += node
        slurm_s += slurm
    out["node_hours"] = node_s / 3600
    out["slurm_hours"] = slurm_s / 3600
    return out


def set_counts(work: pathlib.Path) -> dict[str, int]:
    """Particles per extracted set (``results/sets/<label>.lst``: lines after the 3-line header)."""
    out = {}
    for lst in sorted((work / "results" / "sets").glob("*.lst")):
        out[lst.stem] = max(0, len(lst.read_text().splitlines()) - 3)
    return out


def markdown(res: dict) -> str:
    """README table rows: per rule, jobs, wall s (sum), per 1,000 particles processed (chunked rules:
    extraction over both sets, refinement over its set) or per tomogram / run, peak RSS of its largest job."""
    counts = res.get("set_counts", {})
    n_extract = sum(counts.values())
    n_spt = counts.get("tm", n_extract)
    rows = ["| rule | jobs | wall s (sum of jobs) | per | peak RSS (largest job) |", "|---|---|---|---|---|"]
    for rule, d in sorted(res["rules"].items(), key=lambda kv: -kv[1]["total_s"]):
        n = (n_extract if rule.startswith("extract_") else n_spt) if rule in PER_PARTICLE else 0
        per = f"{d['total_s'] * 1000.0 / n:.0f} s per 1,000 particles" if n else "tomogram / run"
        rows.append(f"| `{rule}` | {d['jobs']} | {d['total_s']:.0f} | {per} | {d['max_rss_mb']:.0f} MB |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("scale_run"))
    ap.add_argument("--size", type=int, default=2048, help="tilt image edge (px); 4096 for 4k")
    ap.add_argument("--thickness", type=int, default=256, help="slab and tomogram thickness (unbinned px)")
    ap.add_argument("--tomograms", type=int, default=1)
    ap.add_argument("--particles", type=int, default=1000, help="particles per tomogram")
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--dose-per-tilt", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2, help="FFT threads of the generator")
    ap.add_argument("--cores", type=int, default=2, help="snakemake --cores")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="also print the README table")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="JSON (default <workdir>/scale_benchmark.json)")
    args = ap.parse_args(argv)
    work = args.workdir.resolve()
    out = args.out or work / "scale_benchmark.json"
    info = {"size": args.size, "thickness": args.thickness, "tomograms": args.tomograms,
            "particles_per_tomogram": args.particles, "n_tilts": len(np.arange(*TILTS[:2], TILTS[2])) + 1,
            "apix": APIX, "cores": args.cores, "snr": args.snr}
    if not args.collect_only:
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        tomos = generate(work, args)
        info["generate_s"] = time.perf_counter() - t
        info["generate_peak_rss_mb"] = peak_rss_mb()
        config = write_config(work, tomos, args)
        copy_workflow(work)
        if not args.generate_only:
            rc, wall = run_workflow(work, config, args.cores)
            info.update(snakemake_rc=rc, snakemake_wall_s=wall)
    res = collect(work)
    res["disk_mb"] = {k: du_mb(work / p) for k, p in
                      [("input (tilt series)", "user_data"), ("results/import", "results/import"),
                       ("results/tomograms", "results/tomograms"), ("results/extract", "results/extract"),
                       ("results/tempmatch", "results/tempmatch"), ("results/spt", "results/spt"),
                       ("results (all)", "results")]}
    res["load_avg_at_collect"] = os.getloadavg()
    res["set_counts"] = set_counts(work)
    if out.exists() and args.collect_only:  # the run's own record wins over this call's defaults
        info = {**info, **json.loads(out.read_text()).get("dataset", {})}
    res["dataset"] = info
    threads = {"tempmatch_search": 4, "extract_chunk": 2, "initial_model_sgd": 2, "spt_refine_align": 2,
               "spt_refine_make3d": 2, "spt_refine_postprocess": 2, "tomogram_reconstruct": 2}
    res["projection"] = project(res, args.tomograms, args.particles * args.tomograms, 10, 3000, 64, threads)
    out.write_text(json.dumps(res, indent=1))
    print_table(res, args.particles * args.tomograms)
    pr = res["projection"]
    print(f"\nprojection to {pr['tomograms']} tomograms x {pr['particles_per_tomogram']} particles "
          f"(arithmetic in project()):")
    print(f"{'stage':20s} {'jobs':>6s} {'job h':>8s} {'64-core node h':>15s} {'SLURM h':>8s}")
    for st in pr["stages"]:
        print(f"{st['stage']:20s} {st['jobs']:6d} {st['job_hours']:8.2f} {st['node_hours']:15.2f} "
              f"{st['slurm_hours']:8.2f}")
    print(f"{'total':20s} {'':6s} {'':8s} {pr['node_hours']:15.2f} {pr['slurm_hours']:8.2f}")
    if args.markdown:
        print(markdown(res))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
