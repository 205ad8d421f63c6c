"""emflow.sta.initial_model: SGD from randomly oriented subtilt particles reaches the true structure."""

from __future__ import annotations

import numpy as np
import pytest
from naive_align3d import blob_phantom, simulate_particles

from emflow.fsc import fsc
from emflow.geometry import angle_between, tilt_matrix
from emflow.projection import VolumeProjector, project
from emflow.rotate import rotate_volume
from emflow.sta import align3d, initial_model

TILTS = np.arange(-60.0, 61.0, 6.0)  # 21 tilts, ±60°
SNR = 0.5                            # signal/noise variance per subtilt


def align_truth_to(truth, vol):
    """Rotate/shift ``truth`` onto ``vol``: align3d of ``vol``'s full-range projections."""
    P = tilt_matrix(np.arange(-90.0, 90.0, 6.0))
    part = align3d.SubtiltParticle.from_images(project(vol, P), P)
    a = initial_model.align_coarse_to_fine(VolumeProjector(truth), part, maxp=10, delta=15.0, npos=4,
                                           fine_deg=1.0)
    return rotate_volume(truth, a.rotation, a.shift)


def invert_hand(vol):
    """Point inversion about the box centre n//2 (the other hand)."""
    return np.roll(vol[::-1, ::-1, ::-1], 1, axis=(0, 1, 2))


def fsc_at(a, b, apix, res_a):
    f = fsc(a, b)
    return float(np.interp(apix / res_a, f.freq, f.fsc))


def run_sgd(truth, apix, seed):
    rng = np.random.default_rng(seed)
    imgs, P, _, _ = simulate_particles(truth, 40, TILTS, SNR, rng, max_shift_px=1.0)
    parts = [align3d.SubtiltParticle.from_images(im, P) for im in imgs]
    params = initial_model.SGDParams(res_a=50.0, batch=6, keep=0.75, niter=5, lr=0.3, delta_deg=22.5, npos=4)
    return initial_model.sgd_initial_model(parts, apix, params, rng)


def check(truth, apix, res):
    m = res.maps[0]
    assert res.history.shape == (6, 1) + truth.shape
    assert res.scores[0].shape == (1, 8)
    good = fsc_at(align_truth_to(truth, m), m, apix, 60.0)
    mirror = fsc_at(align_truth_to(truth, invert_hand(m)), invert_hand(m), apix, 60.0)
    assert good >= 0.5, (good, mirror)
    assert good > mirror + 0.1, (good, mirror)  # the tilt geometry fixes the hand
    assert res.mean_score[-1, 0] < res.mean_score[0, 0]  # alignment improves as the map forms
    return good, mirror


@pytest.mark.slow
def test_sgd_phantom_reaches_truth():
    truth = blob_phantom(32)
    print("phantom FSC@60Å (hand, mirror):", check(truth, 10.0, run_sgd(truth, 10.0, 3)))


@pytest.mark.slow
def test_sgd_ribosome_reaches_truth(shared_map):
    truth, apix = shared_map("ribosome70S_4v5d_10p48A_box32.mrc.gz")
    truth = truth / truth.std()
    print("ribosome FSC@60Å (hand, mirror):", check(truth, apix, run_sgd(truth, apix, 4)))


def test_coarse_to_fine_recovers_orientation_and_shift():
    """Noisy subtilts of a known phantom: R within a few degrees, t within a fraction of a px."""
    rng = np.random.default_rng(11)
    vol = blob_phantom(16)
    imgs, P, R, t = simulate_particles(vol, 4, np.arange(-60.0, 61.0, 3.0), 0.5, rng, max_shift_px=1.0)
    proj = VolumeProjector(vol)
    for im, Rt, tt in zip(imgs, R, t):
        a = initial_model.align_coarse_to_fine(proj, align3d.SubtiltParticle.from_images(im, P), maxp=7)
        assert float(angle_between(a.rotation, Rt)) < 5.0
        assert np.abs(a.shift - tt).max() < 0.5
        assert a.tilt_scores.shape == (41,) and abs(a.score - a.tilt_scores.mean()) < 1e-6


def test_stencil_rotations_are_rotations_by_the_step():
    Rs = initial_model._stencil_rotations(10.0)
    assert np.allclose(Rs @ Rs.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(Rs), 1.0)
    ang = angle_between(Rs, np.eye(3))
    assert np.allclose(ang, 10.0 * np.linalg.norm(initial_model._STENCIL, axis=1), atol=1e-6)


def test_postprocess_and_bad_params():
    v = blob_phantom(32)
    out = initial_model.postprocess_map(v, 10.0, 50.0)
    assert out.dtype == np.float32 and abs(out[0, 0, 0]) < 1e-2 * np.abs(out).max()
    with pytest.raises(ValueError):
        initial_model.sgd_initial_model([], 10.0, initial_model.SGDParams(), np.random.default_rng(0))
