"""Same config and seed → same results (issue #7).

The tiny workflow of the session fixture ``tiny_workflow`` is run a second time from scratch, in another
copy of the repository, up to template matching, pick filtering and extraction of the demo's manual picks
(session fixture ``second_tiny_run``, stage ``picks``: made in two steps, the first of which is the local
run that tests/workflow/test_slurm.py compares its SLURM run with), and the outputs are compared:

* simulated tilt series, .tlt, truth and pick files: **byte-identical** (seeded ``numpy`` generator,
  FFTs and per-tilt work with no cross-thread sums);
* tomogram, score map and extracted particles: equal to ``TOL_REL`` relative to the map's standard
  deviation. The numba back-projection and template-matching kernels split work over threads
  (``prange``) and scipy's FFT over ``workers``; float32 sums whose order depends on that split may
  differ in the last bits between runs, so exact equality is not promised there (in practice these runs
  are usually byte-identical too);
* picks (STAR tables) and particle sets (.lst): identical positions and orientations.
"""

from __future__ import annotations

import filecmp

import numpy as np
import pytest

from emflow.io import read_hdf_stack, read_mrc, read_star

TOL_REL = 1e-5
TOMO = "demo_01"
TARGETS = [f"results/picks/{TOMO}__picks.star", "results/sets/initribo.lst",
           f"results/extract/particles3d/{TOMO}__initribo.hdf"]
IDENTICAL = [f"results/demo/tiltseries/{TOMO}.mrc", f"results/demo/tiltseries/{TOMO}.tlt",
             f"results/demo/truth/{TOMO}_truth.json", f"results/demo/info/{TOMO}_info.json",
             "results/demo/truth/reference_tomo.mrc"]
CLOSE_MAPS = [f"results/tomograms/{TOMO}__bin4.mrc", f"results/tempmatch/{TOMO}__scores.mrc"]


@pytest.fixture(scope="module")
def second_run(tiny_workflow, second_tiny_run):
    work = second_tiny_run.upto("picks")
    assert set(TARGETS) <= set(second_tiny_run.stages["picks"]), (TARGETS, second_tiny_run.stages)
    print(f"\n[determinism] second run from scratch: {second_tiny_run.seconds}")
    return tiny_workflow, work


@pytest.mark.slow
def test_simulation_byte_identical(second_run):
    a, b = second_run
    for rel in IDENTICAL:
        assert filecmp.cmp(a / rel, b / rel, shallow=False), f"{rel} differs between two runs with one seed"


@pytest.mark.slow
def test_maps_equal_within_tolerance(second_run):
    a, b = second_run
    for rel in CLOSE_MAPS:
        x, _ = read_mrc(a / rel)
        y, _ = read_mrc(b / rel)
        assert x.shape == y.shape
        scale = float(x.std()) or 1.0
        assert np.max(np.abs(x - y)) <= TOL_REL * scale, f"{rel}: max diff {np.max(np.abs(x - y)):.3g}"
    x, hx = read_hdf_stack(a / TARGETS[2])
    y, hy = read_hdf_stack(b / TARGETS[2])
    assert x.shape == y.shape and len(x) > 0
    assert np.max(np.abs(x - y)) <= TOL_REL * (float(x.std()) or 1.0)


@pytest.mark.slow
def test_picks_and_sets_identical(second_run):
    a, b = second_run
    ta = next(iter(read_star(a / TARGETS[0]).values()), {})
    tb = next(iter(read_star(b / TARGETS[0]).values()), {})
    assert set(ta) == set(tb)
    for key in ta:
        if key == "rlnAutopickFigureOfMerit":
            np.testing.assert_allclose(ta[key], tb[key], rtol=TOL_REL, atol=TOL_REL)
        else:
            assert list(ta[key]) == list(tb[key]), f"picks column {key} differs"
    assert (a / TARGETS[1]).read_text() == (b / TARGETS[1]).read_text()
