"""Rule resources (emflow.pipeline.resources): they grow with the input, and real jobs fit in them.

The coefficients were fitted to the scale benchmark (benchmarks/scale_workflow.py, README
"Benchmarks"); here two real jobs at a size the fit never saw (41 tilts of 768², 97 MB) are run in
fresh processes and their peak RSS (VmHWM) is compared with what the rule would declare:

* tomogram reconstruction (``reconstruct_wbp`` on the memory-mapped series, bin 4): declared mem_mb ≥
  measured, and the fitted peak (no margin) within 0.5–2× the measured one;
* an extraction chunk (``extract_to_files``, box 64, 128² subtilts, 60 particles) whose blocks are
  sized from the declared mem_mb, as ``workflow/scripts/extract_chunk.py`` does: measured ≤ declared.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from emflow.pipeline import resources as R

N_TILTS, SIZE, BOX, PAD2D, N_PTCL = 41, 768, 64, 128, 60
INIT_CFG = {"ntry": 4, "niter": 30, "batch": 100, "n_score": 300, "classify2d": {"enabled": False, "niter": 6}}


def test_stochastic_em_start_asks_for_its_minibatches():
    # the from_data default (stochastic_em): 2 starts × 500 minibatches of 200 took 119.8 s quiet on 2 threads
    cfg = INIT_CFG | {"method": "stochastic_em", "ntry": 2, "em": {"niter": 500, "batch": 200}}
    asked = R.spa_initial_model_runtime(4000, 64, cfg)
    assert asked * 60 >= 3 * 119.8, asked
    assert R.spa_initial_model_runtime(4000, 64, cfg | {"ntry": 8}) > asked  # grows with the starts
    assert R.spa_initial_model_runtime(4000, 64, cfg, attempt=2) == 2 * asked


@pytest.mark.parametrize(
    "fn",
    [
        lambda s: R.tomogram_mem_mb(s),
        lambda s: R.tomogram_runtime(s),
        lambda s: R.tempmatch_mem_mb(s, 256, 64),
        lambda s: R.tempmatch_runtime(s, 4416),
        lambda s: R.extract_chunk_mem_mb(41, 128, 64, 250, s),
        lambda s: R.extract_chunk_runtime(41, 128, int(s)),
        lambda s: R.gather_runtime(s),
        lambda s: R.initial_model_mem_mb(s / 100, 12),
        lambda s: R.spt_chunk_mem_mb(250, s / 100),  # by the box (MB per particle)
        lambda s: R.spt_chunk_mem_mb(int(s), 3.9, 800),  # by the chunk
        lambda s: R.spt_chunk_mem_mb(250, 3.9, int(s)),  # by the set (d: whole tilts)
        lambda s: R.spt_chunk_mem_mb(int(s), 3.9, 10**6, neighbours=8),  # t/r: by the chunk's neighbourhoods
        lambda s: R.spt_align_runtime(int(s), 3.8),
        lambda s: R.spt_postprocess_mem_mb(s),
        lambda s: R.spa_stack_mem_mb(s),
        lambda s: R.spa_prepare_runtime(s),
        lambda s: R.spa_prepare_mem_mb(s),  # grows to one block (SPA_PREPARE_BLOCK_MB), then flat
        lambda s: R.spa_simmx_mem_mb(s, 10_000, 500),  # by the stack (chunk share)
        lambda s: R.spa_simmx_runtime(500, int(s), 128),  # by the projections
        lambda s: R.spa_classaverage_mem_mb(s),
        lambda s: R.spa_classaverage_runtime(int(s) * 100, 128),
        lambda s: R.spa_volume_mem_mb(int(s)),  # by the box
        lambda s: R.spa_volume_runtime(128, int(s)),
        lambda s: R.spa_gold_mem_mb(s),
        lambda s: R.spa_gold_runtime(int(s) * 100, 128, [50, 100]),
        lambda s: R.spa_initial_model_mem_mb(s),
        lambda s: R.spa_initial_model_runtime(10_000, int(s), INIT_CFG),  # by the box
        lambda s: R.spa_initial_model_runtime(int(s) * 100, 128, INIT_CFG | {"classify2d": {"enabled": True, "niter": 6}}),
    ],
)
def test_resources_grow_with_input_size(fn):
    sizes = [1, 10, 100, 1000, 10000, 100000]
    vals = [fn(float(s)) for s in sizes]
    assert all(b >= a for a, b in zip(vals, vals[1:])), vals
    assert vals[-1] > vals[0], vals  # not a constant
    assert all(isinstance(v, int) and v > 0 for v in vals)


def test_retry_asks_for_more():
    for fn in (lambda a: R.tomogram_mem_mb(688, attempt=a), lambda a: R.extract_chunk_runtime(41, 128, 250, attempt=a),
               lambda a: R.spa_classaverage_mem_mb(750, attempt=a), lambda a: R.spa_simmx_runtime(500, 4000, 256, attempt=a)):
        assert 2 * fn(1) - 1 <= fn(2) <= 2 * fn(1) + 1  # whole MB / minutes


def test_tempmatch_grows_with_tile_and_rotations():
    assert R.tempmatch_mem_mb(670, 384, 400) > R.tempmatch_mem_mb(670, 256, 400) > R.tempmatch_mem_mb(670, 128, 400)
    assert R.tempmatch_runtime(67, 14832) > R.tempmatch_runtime(67, 552)


def test_rotation_count_matches_the_measured_grid():
    # even SO(3) grid (README "Benchmarks"): 552 / 1908 / 4416 / 14832 rotations at 30 / 20 / 15 / 10°
    for delta, n in [(30, 552), (20, 1908), (15, 4416), (10, 14832)]:
        assert abs(R.n_rotations(delta) - n) / n < 0.03, (delta, R.n_rotations(delta), n)
    assert R.n_rotations("auto") == R.n_rotations(10.0)


def test_extract_chunk_budget_follows_the_plan():
    # bigger boxes / subtilts / more tilts need more; the chunk's block is capped (EXTRACT_BLOCK)
    assert R.extract_chunk_mem_mb(41, 256, 128, 250, 688) > R.extract_chunk_mem_mb(41, 128, 64, 250, 688)
    assert R.extract_chunk_mem_mb(61, 128, 64, 250, 688) > R.extract_chunk_mem_mb(41, 128, 64, 250, 688)
    assert R.extract_chunk_mem_mb(41, 128, 64, 10_000, 688) == R.extract_chunk_mem_mb(41, 128, 64, R.EXTRACT_BLOCK, 688)


WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    kind, path, out, mem_mb = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    from emflow._numba import set_threads
    set_threads(2)
    tilts = np.linspace(-60.0, 60.0, %(n)d)
    if kind == "tomogram":
        from emflow.io.tiltseries import read_tilt_series
        from emflow.sta.tomo import reconstruct_wbp
        stack, _ = read_tilt_series(path, mmap=True, override=5.24)
        vol = reconstruct_wbp(stack, tilts, bin=4, thickness_px=64, threads=2)
        info = {"shape": list(vol.shape)}
    else:
        from emflow.sta.extract import (ExtractParams, TiltGeometry, TiltSource, extract_to_files,
                                        open_tilt_series, particles_per_block)
        params = np.zeros((tilts.size, 5)); params[:, 3] = tilts
        geom = TiltGeometry(params=params, apix_unbin=5.24, defocus_um=np.full(tilts.size, 3.0),
                            phase_deg=np.zeros(tilts.size))
        rng = np.random.default_rng(0)
        half = %(size)d / 2 - %(pad)d
        coords = np.column_stack([rng.uniform(-half / 2, half / 2, %(np)d), rng.uniform(-half, half, %(np)d),
                                  rng.uniform(-100, 100, %(np)d)])
        block = particles_per_block(mem_mb, tilts.size, %(pad)d, %(box)d)
        extract_to_files(TiltSource(open_tilt_series(path, apix=5.24)), geom, coords,
                         ExtractParams(box=%(box)d, pad2d=%(pad)d), particles_path=out + "_2d.hdf",
                         particles3d_path=out + "_3d.hdf", block=block, workers=2)
        info = {"block": block}
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            info["peak_mb"] = int(line.split()[1]) / 1024
    print(json.dumps(info))
    """
    % {"n": N_TILTS, "size": SIZE, "pad": PAD2D, "box": BOX, "np": N_PTCL}
)


@pytest.fixture(scope="module")
def tilt_series(tmp_path_factory):
    from emflow.io import write_mrc

    path = tmp_path_factory.mktemp("res") / "ts.mrc"
    rng = np.random.default_rng(1)
    write_mrc(path, rng.normal(0.0, 1.0, (N_TILTS, SIZE, SIZE)).astype(np.float32), 5.24)
    return path


def _run(kind: str, path, mem_mb: int) -> dict:
    res = subprocess.run([sys.executable, "-c", WORKER, kind, str(path), str(path.with_suffix("")), str(mem_mb)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_tomogram_job_fits_its_declared_memory(tilt_series):
    size_mb = tilt_series.stat().st_size / 1e6
    declared = R.tomogram_mem_mb(size_mb)
    got = _run("tomogram", tilt_series, declared)
    assert got["shape"] == [64, SIZE // 4, SIZE // 4]
    print(f"tomogram ({size_mb:.0f} MB series): peak {got['peak_mb']:.0f} MB, declared {declared} MB")
    assert got["peak_mb"] <= declared, (got, declared)
    fit = R.tomogram_peak_mb(size_mb)  # the fitted line itself, no margin: it predicts this size
    assert 0.5 <= fit / got["peak_mb"] <= 2.0, (fit, got)


def test_extraction_chunk_fits_its_declared_memory(tilt_series):
    size_mb = tilt_series.stat().st_size / 1e6
    declared = R.extract_chunk_mem_mb(N_TILTS, PAD2D, BOX, N_PTCL, size_mb)
    got = _run("extract", tilt_series, declared)
    assert got["block"] >= 1
    print(f"extraction ({N_PTCL} particles, blocks of {got['block']}): peak {got['peak_mb']:.0f} MB, declared {declared} MB")
    assert got["peak_mb"] <= declared, (got, declared)


def test_subtilt_job_memory_is_bounded_by_its_chunk_not_the_set():
    """t/r jobs transform the smoothN nearest particles of each of theirs: a 250-particle chunk asks the
    same for a set of 10,000 as of 100,000 particles (memory per job must not grow with the set)."""
    small, large = (R.spt_chunk_mem_mb(250, 3.9, n, neighbours=8) for n in (10_000, 100_000))
    assert small == large < R.spt_chunk_mem_mb(250, 3.9, 100_000)
    assert R.spt_chunk_mem_mb(250, 3.9, 827, neighbours=8) == R.spt_chunk_mem_mb(250, 3.9, 827)  # set < cap


# --------------------------------------------------------------------------- single particle
# A class-averaging job at a size none of the three SPA fits used (resources.py: 1,000 × 64², 2,000 × 96²,
# 4,000 × 64²): 2,500 CTF-modulated 20S proteasome images at box 48, the stages of one iteration in one
# fresh process as the rules run them one file at a time (project, simmx, classify, class averaging with
# the CTF averager). Its peak (VmHWM) must fit what spa_classaverage declares, the larger of the two
# jobs (simmx with every particle in one chunk: spa_simmx_mem_mb) likewise.
SPA_N, SPA_BOX = 2500, 48
SPA_WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from emflow._numba import set_threads
    set_threads(2)
    from emflow.demo.data import structure_path
    from emflow.demo.simulate import simulate_spa
    from emflow.io import read_mrc
    from emflow.spa.refine_loop import (RefineOptions, phase_flip_particles, stage_classaverage, stage_classify,
                                        stage_project, stage_simmx)
    from emflow.demo.phantom import resample_map
    ref, ap = read_mrc(structure_path("proteasome20S"))
    apix = ap * ref.shape[0] / %(box)d
    stack, truth = simulate_spa(ref, ap, apix=apix, box=%(box)d, n=%(n)d, rng=np.random.default_rng(3), snr=0.08,
                                workers=2)
    ctfs = truth.ctfs()
    particles = phase_flip_particles(stack, ctfs, apix).astype(np.float32)
    del stack
    model = resample_map(ref, ap, apix, box=%(box)d)
    opts = RefineOptions(sym="d7", apix=apix, orientgen="eman:delta=9:inc_mirror=0", classaverager="ctf")
    _, proj, _ = stage_project(model, opts)
    mx, _ = stage_simmx(particles, proj, opts, ctfs=ctfs)
    cls = stage_classify(mx, opts)
    avgs, info = stage_classaverage(particles, cls, proj, opts, ctfs=ctfs)
    out = {"n_proj": int(len(proj)), "stack_mb": float(particles.nbytes / 1e6)}
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            out["peak_mb"] = int(line.split()[1]) / 1024
    print(json.dumps(out))
    """
    % {"n": SPA_N, "box": SPA_BOX}
)


def test_spa_class_averaging_fits_its_declared_memory():
    res = subprocess.run([sys.executable, "-c", SPA_WORKER], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    # the rule sizes by the stack file: the images plus EMAN headers (about 2.3 kB each in the fitted runs)
    stack_mb = got["stack_mb"] + SPA_N * 2.3e-3
    declared = R.spa_classaverage_mem_mb(stack_mb)
    fit = R.SPA_CLASSAVG_BASE_MB + R.SPA_CLASSAVG_SLOPE * stack_mb
    print(f"SPA {SPA_N} x {SPA_BOX}² ({stack_mb:.0f} MB stack, {got['n_proj']} projections): peak "
          f"{got['peak_mb']:.0f} MB, class averaging declares {declared} MB (fit {fit:.0f} MB), simmx "
          f"{R.spa_simmx_mem_mb(stack_mb, SPA_N, SPA_N)} MB")
    assert got["peak_mb"] <= declared, (got, declared)
    assert 0.5 <= fit / got["peak_mb"] <= 2.0, (fit, got)
