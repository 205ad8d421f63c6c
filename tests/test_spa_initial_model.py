"""emflow.spa.initial_model: an SGD initial model from single-particle images reaches the true fold.

The hand. Projections of a map ``V`` at rotations ``R`` equal the projections of its mirror image
``V(x, y, −z)`` at ``M R M`` (``M = diag(1, 1, −1)``): :func:`test_projections_cannot_tell_the_hand`
checks this identity. Single-particle data (no tilt pairs) therefore fix the fold only up to the
hand; every SGD start lands on one hand or the other with the same score. So the accuracy test asks
for the right fold up to hand: after 3D alignment, the FSC against the truth *or* its mirror image
is high, and clearly above the FSC against the other hand (the map has a definite hand, it is not a
hand-averaged blob). Which hand came out is printed as a measured fact, not asserted.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from emflow.errors import InputError
from emflow.fsc import fsc
from emflow.geometry import random_rotations, tilt_matrix
from emflow.projection import VolumeProjector, project
from emflow.rotate import rotate_volume
from emflow.spa import initial_model as im
from emflow.sta import align3d
from emflow.sta.initial_model import align_coarse_to_fine

RES_CHECK_A = 40.0  # resolution (Å) at which the fold is judged


def _ribosome(box):
    """Bundled 70S ribosome (asymmetric) resampled to ``box`` over its 335 Å box."""
    import mrcfile

    from emflow.demo.data import structure_path
    from emflow.demo.phantom import resample_map

    with mrcfile.open(structure_path("ribosome70S")) as m:
        ref, ap = np.asarray(m.data, np.float32), float(m.voxel_size.x)
    apix = ap * ref.shape[0] / box
    return ref, ap, apix, resample_map(ref, ap, apix, box=box)


def align_truth_to(truth, vol, apix, res_a=RES_CHECK_A):
    """``truth`` rotated/shifted onto ``vol`` (3D alignment of ``vol``'s projections over a full
    ±90° tilt range with emflow.sta's coarse-to-fine aligner, shells up to ``res_a``)."""
    P = tilt_matrix(np.arange(-90.0, 90.0, 6.0))
    part = align3d.SubtiltParticle.from_images(project(vol, P), P)
    maxp = int(vol.shape[0] * apix / res_a) + 2
    a = align_coarse_to_fine(VolumeProjector(truth), part, maxp=maxp, delta=15.0, npos=4, fine_deg=2.0)
    return rotate_volume(truth, a.rotation, a.shift)


def fsc_at(a, b, apix, res_a):
    f = fsc(a, b)
    return float(np.interp(apix / res_a, f.freq, f.fsc))


def fold_and_hand(vol, truth, apix):
    """``(FSC at 40 Å vs the truth, vs its mirror image)``, each after aligning it onto ``vol``."""
    from emflow.demo.scores import mirror_map

    good = fsc_at(align_truth_to(truth, vol, apix), vol, apix, RES_CHECK_A)
    mirror = fsc_at(align_truth_to(mirror_map(truth), vol, apix), vol, apix, RES_CHECK_A)
    return good, mirror


def test_projections_cannot_tell_the_hand():
    """``P[V](R) = P[mirror V](M R M)`` exactly: the hand is not in single-particle projections."""
    from emflow.demo.scores import mirror_map

    rng = np.random.default_rng(3)
    b = 24
    vol = np.zeros((b, b, b), np.float32)
    vol[6:14, 9:12, 8:17] = 1.0  # an asymmetric, chiral arrangement of boxes
    vol[10:18, 12:20, 12:14] = 2.0
    vol[14:16, 5:9, 6:12] = 1.5
    M = np.diag([1.0, 1.0, -1.0])
    R = random_rotations(20, rng)
    # emflow's matrices act on (x, y, z); mirror_map flips z (array axis 0) about n//2
    a = project(vol, R)
    b_ = project(mirror_map(vol), M @ R @ M)
    np.testing.assert_allclose(a, b_, atol=1e-3 * np.abs(a).max())
    # … while the two hands are different maps, and a plain projection of the mirror is not the same
    assert np.abs(vol - mirror_map(vol)).max() >= 1.0
    assert np.abs(project(mirror_map(vol), R) - a).max() > 0.1 * np.abs(a).max()


def test_soft_assignment_weights_and_frames():
    """Projections of a known map rotated in-plane, shifted and mirrored: the best projection is the
    right one, its weight is 1, and the returned transform brings the image back onto it."""
    from emflow.spa import align2d
    from emflow.spa.simmx import SimmxOptions

    _, _, apix, truth = _ribosome(32)
    R = im._orientation_set("c1", 15.0, None)
    proj = im._projections(truth, R)
    rng = np.random.default_rng(5)
    pick = rng.choice(len(R), 12, replace=False)
    alpha, tx, ty = rng.uniform(0, 360, 12), rng.uniform(-2, 2, 12), rng.uniform(-2, 2, 12)
    mirror = (np.arange(12) % 2).astype(float)
    imgs = align2d.transform_images(proj, alpha, tx, ty, mirror, index=pick)
    opts = SimmxOptions(cmp="frc:minres=200:maxres=25", apix=apix, maxshift=6)
    best, score, weight, (a, x, y, m) = im._assign(imgs, proj, opts, ntop=4)
    assert best.shape == score.shape == weight.shape == (12, 4)
    np.testing.assert_array_equal(best[:, 0], pick)
    np.testing.assert_allclose(weight[:, 0], 1.0)
    assert np.all(np.diff(score, axis=1) >= 0) and np.all(weight <= 1.0)
    back = align2d.transform_images(imgs, a[:, 0], x[:, 0], y[:, 0], m[:, 0])
    c = [np.corrcoef(back[k].ravel(), proj[pick[k]].ravel())[0, 1] for k in range(12)]
    assert min(c) > 0.9, c


def test_accumulator_shift_and_resolution_schedule():
    from emflow.reconstruct import Reconstructor

    b = 16
    vol = np.zeros((b, b, b), np.float32)
    vol[b // 2, b // 2, b // 2] = 1.0
    vol = im.filters.lowpass_gauss(vol, 1.0, 3.0)
    R = random_rotations(200, np.random.default_rng(0))
    rec = Reconstructor(b, pad=2)
    rec.insert(project(vol, R), R)
    im._shift_accumulator(rec.F, rec.n_pad, np.array([2.0, -1.0, 3.0]))  # (z, y, x)
    assert np.unravel_index(int(rec.finish().argmax()), (b, b, b)) == (10, 7, 11)
    s = im.resolution_schedule(im.SPAInitParams(res_a=30.0, res_start_a=60.0, niter=10))
    assert s[0] == pytest.approx(60.0) and s[-1] == pytest.approx(30.0) and np.all(np.diff(s) <= 1e-9)
    assert np.all(im.resolution_schedule(im.SPAInitParams(res_start_a=None, niter=4)) == 30.0)


def test_bad_parameters_raise_input_error():
    parts = np.zeros((4, 32, 32), np.float32)
    with pytest.raises(InputError, match="lr"):
        im.spa_initial_model(parts, 5.0, im.SPAInitParams(lr=0.0))
    with pytest.raises(InputError, match="Nyquist"):
        im.spa_initial_model(parts, 20.0, im.SPAInitParams(res_a=30.0))
    with pytest.raises(InputError, match="even square"):
        im.spa_initial_model(np.zeros((4, 31, 31), np.float32), 5.0)
    with pytest.raises(InputError, match="blob radius"):
        im.blob_model(32, 5.0, radius_a=100.0)
    np.testing.assert_allclose(im.blob_model(32, 5.0).max(), 1.0)


@pytest.mark.slow
def test_sgd_reaches_ribosome_fold_up_to_hand():
    """400 CTF-modulated, phase-flipped ribosome images (box 32, 10.5 Å/px, SNR 1, c1): the best
    of 2 starts has the true fold (FSC ≥ 0.6 at 40 Å against one hand, ≥ 0.2 above the other)."""
    from emflow.demo.simulate import simulate_spa
    from emflow.spa.refine_loop import phase_flip_particles

    ref, ap, apix, truth = _ribosome(32)
    stack, sim = simulate_spa(ref, ap, apix=apix, box=32, n=400, rng=np.random.default_rng(1), snr=1.0)
    parts = phase_flip_particles(stack, sim.ctfs(), apix)
    t0 = time.perf_counter()
    res = im.spa_initial_model(parts, apix, im.SPAInitParams(ntry=2, niter=24, n_score=200),
                               np.random.default_rng(2))
    seconds = time.perf_counter() - t0
    assert res.map.shape == (32, 32, 32) and res.maps.shape == (2, 32, 32, 32)
    assert np.all(np.diff(res.scores) >= 0)
    good, mirror = fold_and_hand(res.map, truth, apix)
    hand = "true" if good > mirror else "mirror"
    print(f"\nSPA SGD initial model: {seconds:.1f} s, scores {np.round(res.scores, 3)}, "
          f"FSC@40Å vs truth {good:.2f}, vs mirror {mirror:.2f} → {hand} hand (undetermined by SPA data)")
    best, other = max(good, mirror), min(good, mirror)
    assert best >= 0.6, (good, mirror)
    assert best - other >= 0.2, (good, mirror)


def test_symmetry_is_imposed_and_starts_are_ranked():
    """A short run in c4 on noise: every map is c4-symmetric about z (90° about the box centre),
    the maps come best first, and the result is the best map."""
    rng = np.random.default_rng(4)
    parts = rng.normal(size=(60, 24, 24)).astype(np.float32)
    p = im.SPAInitParams(res_a=30.0, res_start_a=None, ntry=2, niter=2, batch=20, sym="c4", n_score=20)
    res = im.spa_initial_model(parts, 10.0, p, rng)
    assert res.maps.shape == (2, 24, 24, 24) and res.batch_scores.shape == res.map_change.shape == (2, 2)
    assert np.all(np.diff(res.scores) >= 0) and sorted(res.start_index.tolist()) == [0, 1]
    np.testing.assert_array_equal(res.map, res.maps[0])
    for m in res.maps:  # [z, y, x]: a 90° turn about z maps the (y, x) plane onto itself about n//2
        turned = np.roll(np.rot90(m, 1, axes=(1, 2)), 1, axis=1)
        assert np.corrcoef(turned.ravel(), m.ravel())[0, 1] > 0.95


def test_blob_radius_is_in_angstrom():
    """`spa.blob_radius_a`: the blob start's radius in Å (null keeps 0.3 × box); outside the box refused."""
    from emflow.errors import InputError
    from emflow.spa.initial_model import blob_model

    blob = blob_model(64, 2.0, radius_a=20.0, width_a=0.5)  # 10 px
    line = blob[32, 32, :]
    assert line[32 + 9] > 0.9 and line[32 + 11] < 0.1
    assert blob_model(64, 2.0).sum() > blob.sum()  # default 0.3 · 64 = 19.2 px
    with pytest.raises(InputError, match="blob radius"):
        blob_model(64, 2.0, radius_a=80.0)


def test_image_weights_and_the_rule_summary():
    """Class averages enter with their counts: weights must be one non-negative number per image;
    a zero-weight image does not change the map. initial_model_run returns the classification in its
    summary (or None when classify2d is disabled)."""
    rng = np.random.default_rng(5)
    parts = rng.normal(size=(30, 24, 24)).astype(np.float32)
    p = im.SPAInitParams(res_a=30.0, res_start_a=None, ntry=1, niter=2, batch=30, n_score=10, ninit=4)
    with pytest.raises(InputError, match="weights"):
        im.spa_initial_model(parts, 10.0, p, weights=np.ones(29))
    with pytest.raises(InputError, match="weights"):
        im.spa_initial_model(parts, 10.0, p, weights=-np.ones(30))
    w = np.ones(30)
    a = im.spa_initial_model(parts, 10.0, p, np.random.default_rng(1), weights=w)
    b = im.spa_initial_model(parts, 10.0, p, np.random.default_rng(1), weights=2 * w)
    np.testing.assert_allclose(a.map, b.map, atol=1e-5)  # only relative weights matter
    res, cls, summary = im.initial_model_run(parts, 10.0, p, {"enabled": False}, np.random.default_rng(1), method="sgd")
    assert cls is None and summary["classify2d"] is None and summary["scores"] == res.scores.tolist()
    res, cls, summary = im.initial_model_run(parts, 10.0, p, {"enabled": True, "ncls": 4, "niter": 1, "minsize": 2,
                                                              "res_a": 30.0}, np.random.default_rng(1), method="sgd")
    assert cls is not None and summary["classify2d"]["n_classes"] == len(cls.averages) >= 2
    assert cls.counts.sum() + summary["classify2d"]["excluded"] == 30
    assert res.map.shape == (24, 24, 24)
    # stochastic_em (the default method): no classification, maps at the particles' box, one per start
    res, cls, summary = im.initial_model_run(parts, 10.0, p, {"enabled": True}, np.random.default_rng(1),
                                             em={"niter": 3, "batch": 10, "res_start_a": 40.0, "res_a": 30.0})
    assert cls is None and summary["method"] == "stochastic_em" and res.maps.shape == (p.ntry, 24, 24, 24)


@pytest.mark.slow
def test_sgd_on_2d_class_averages_reaches_ribosome_fold_up_to_hand():
    """``from_data`` with 2D classes first: 1,000 CTF-modulated, phase-flipped ribosome images (box 32,
    10.5 Å/px, SNR 1, c1) → 40 reference-free classes (3 iterations) → SGD on the averages weighted
    by their counts, 2 starts × 30 iterations: the best map has the true fold up to hand. Measured
    2026-12-04 (same seeds): FSC at 40 Å 0.83 against one hand, 0.34 against the other (second
    start 0.61 / 0.22); bar 0.6, and 0.2 between the hands.

    At SNR 0.08 the classes are at chance (emflow.spa.classify2d) and so is this start: no test
    claims it there."""
    from emflow.demo.simulate import simulate_spa
    from emflow.spa.classify2d import Classify2DParams
    from emflow.spa.refine_loop import phase_flip_particles

    ref, ap, apix, truth = _ribosome(32)
    stack, sim = simulate_spa(ref, ap, apix=apix, box=32, n=1000, rng=np.random.default_rng(1), snr=1.0)
    parts = phase_flip_particles(stack, sim.ctfs(), apix)
    res, cls = im.spa_initial_model_from_classes(parts, apix, im.SPAInitParams(ntry=2, niter=30),
                                                 Classify2DParams(ncls=40, niter=3), np.random.default_rng(2))
    assert cls.averages.shape[1:] == (32, 32) and len(cls.averages) == len(cls.counts) >= 20
    assert res.map.shape == (32, 32, 32)
    good, mirror = fold_and_hand(res.map, truth, apix)
    print(f"\nSGD on {len(cls.counts)} class averages: FSC@40Å vs truth {good:.2f}, vs mirror {mirror:.2f}")
    best, other = max(good, mirror), min(good, mirror)
    assert best >= 0.6, (good, mirror)
    assert best - other >= 0.2, (good, mirror)
