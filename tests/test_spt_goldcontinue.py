"""goldcontinue keeps the gold-standard halves independent (issue 12 item 7).

EMAN2's e2spt_refine_new.py (github cryoem/eman2, programs/e2spt_refine_new.py L159-191 at f9e8fc6):
``--goldcontinue`` loads ``<ref>_even.hdf`` and ``<ref>_odd.hdf`` as the two starting references, while
a plain ``--goldstandard`` start tophat-filters one reference at ``--startres`` for both. emflow used
the one unfiltered reference for both halves, so the halves shared everything (their FSC was 1 at
every frequency before any data were seen).

The test: the starting references of a continued run are the previous run's halves (independent
beyond ``startres``), and one p iteration on pure-noise particles — whose halves can only agree
through a shared reference — keeps the gold-standard FSC near 0 beyond ``startres``, while the old
start (one full reference for both halves) drives it up ("Einstein from noise").
"""

from __future__ import annotations

import numpy as np
import pytest

from emflow import filters
from emflow.demo.data import structure_path
from emflow.demo.phantom import resample_map
from emflow.errors import InputError
from emflow.fsc import fsc
from emflow.geometry import tilt_matrix
from emflow.io import read_mrc, write_hdf_stack
from emflow.sta.spt_files import goldcontinue_half_paths, starting_references
from emflow.sta.spt_refine import AlignParams, ParticleTable, RefineState, align_particles_p, reconstruct_halves

APIX, BOX, STARTRES = 10.48, 32, 42.0
BEYOND = slice(int(np.ceil(BOX * APIX / STARTRES)), 13)  # shells 8-12: 42 Å to 26 Å


def _write(path, vol, apix=APIX):
    write_hdf_stack(str(path), np.asarray(vol, np.float32)[None], [{"apix_x": apix, "apix_y": apix, "apix_z": apix}],
                    apix=apix)


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    """A finished gold-standard run on noise: its halves share the map below STARTRES only;
    threed_05.hdf (their mean) plus threed_05_even/odd.hdf, at 2× the particles' pixel size in a 20 box."""
    ref, apix_ref = read_mrc(structure_path("ribosome70S"))
    vol = resample_map(ref, apix_ref, APIX)
    rng = np.random.default_rng(0)

    def highpass_noise():
        n = rng.normal(0, 0.5 * vol.std(), vol.shape).astype(np.float32)
        return n - filters.lowpass_tophat(n, APIX, STARTRES)

    low = filters.lowpass_tophat(vol, APIX, STARTRES)
    even, odd = low + highpass_noise(), low + highpass_noise()
    folder = tmp_path_factory.mktemp("spt_01")
    # stored at another pixel size and box (resampled back by starting_references)
    from emflow.resample import resample_map as fourier_resample
    for name, m in (("threed_05", 0.5 * (even + odd)), ("threed_05_even", even), ("threed_05_odd", odd)):
        _write(folder / f"{name}.hdf", fourier_resample(m, APIX, APIX / 2, 2 * BOX), APIX / 2)
    return folder / "threed_05.hdf", vol


def test_goldcontinue_starts_from_the_independent_halves(previous_run):
    ref, _ = previous_run
    assert goldcontinue_half_paths(str(ref)) == (str(ref)[:-4] + "_even.hdf", str(ref)[:-4] + "_odd.hdf")
    even, odd = starting_references(str(ref), BOX, APIX, startres=STARTRES, goldcontinue=True)
    assert even.shape == odd.shape == (BOX,) * 3
    c = fsc(even, odd).fsc
    assert c[2:6].min() > 0.9  # the shared low resolution
    assert abs(c[BEYOND].mean()) < 0.1  # independent beyond startres (measured −0.01)
    # a plain gold-standard start: one reference, zero beyond startres in both halves
    e2, o2 = starting_references(str(ref), BOX, APIX, startres=STARTRES, goldcontinue=False)
    np.testing.assert_array_equal(e2, o2)
    assert np.abs(np.fft.rfftn(e2)).max() > 0
    # missing halves: an error naming the fix, not a silent shared start
    with pytest.raises(InputError) as e:
        starting_references(str(ref), BOX, APIX, startres=STARTRES, goldcontinue=True,
                            halves=(str(ref), str(ref.parent / "nope_odd.hdf")))
    assert "goldcontinue" in str(e.value)


def _noise_run(refs, n=256, seed=3):
    """One global p iteration of ``n`` pure-noise particles (3 tilts) against ``refs`` (even, odd),
    scores from STARTRES to Nyquist; returns the FSC of the two half reconstructions."""
    rng = np.random.default_rng(seed)
    tilts = np.array([-12.0, 0.0, 12.0])
    k = len(tilts)
    ptcl, tid = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    table = ParticleTable(["p3d"] * n, np.arange(n), np.arange(n) % 2, np.zeros(n, int), rng.uniform(-40, 40, (n, 3)),
                          ["p2d"] * (n * k), np.arange(n * k), ptcl, tid, tilt_matrix(tilts)[tid],
                          np.zeros((n * k, 2)), np.full(n * k, np.nan))
    img = rng.normal(0, 1, (n * k, BOX, BOX)).astype(np.float32)
    state = align_particles_p(table, RefineState.identity(table), np.arange(n), lambda rows: img[rows], refs, APIX,
                              AlignParams(maxres_a=2.2 * APIX, minres_a=STARTRES, mode="global", delta_deg=30.0,
                                          npos=1, maxiter=10, maxshift_px=2.0))
    even, odd = [h.finish() for h in reconstruct_halves(table, state, np.arange(table.n2d), lambda r: img[r], BOX)]
    return fsc(even, odd).fsc


def test_noise_particles_keep_the_gold_fsc_near_zero_beyond_startres(previous_run):
    ref, vol = previous_run
    even, odd = starting_references(str(ref), BOX, APIX, startres=STARTRES, goldcontinue=True)
    fixed = _noise_run([even, odd])[BEYOND].mean()
    shared = starting_references(str(ref), BOX, APIX, startres=1.0, goldstandard=False)[0]  # the old start
    old = _noise_run([shared, shared])[BEYOND].mean()
    print(f"gold FSC of noise particles, 42-26 Å: independent halves {fixed:.3f}, one shared reference {old:.3f}")
    assert abs(fixed) < 0.06
    assert old > fixed + 0.08  # the test would catch the old behaviour
