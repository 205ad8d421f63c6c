"""Local likelihood refinement (emflow.spa.local_refine) against known poses and maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from emflow.fsc import fsc
from emflow.geometry import random_rotations
from emflow.projection import VolumeProjector
from emflow.reconstruct import Reconstructor
from emflow.spa.local_refine import local_rotations, local_shifts, poses_from_classes, refine_half


def _phantom(b: int = 40) -> np.ndarray:
    """An asymmetric map: six anisotropic Gaussians of different heights at fixed places (no symmetry, a hand)."""
    zz, yy, xx = np.indices((b,) * 3) - b // 2
    blobs = [((0, 0, 0), (5, 3, 4), 1.0), ((7, -3, 2), (2, 2, 3), 0.8), ((-6, 5, -1), (3, 2, 2), 0.7),
             ((2, 8, -5), (2, 3, 2), 0.9), ((-3, -7, 6), (2, 2, 2), 0.6), ((5, 4, 8), (2, 2, 2), 0.5)]
    v = np.zeros((b,) * 3)
    for (x, y, z), (sx, sy, sz), a in blobs:
        v += a * np.exp(-((xx - x) ** 2 / (2 * sx * sx) + (yy - y) ** 2 / (2 * sy * sy) + (zz - z) ** 2 / (2 * sz * sz)))
    return v.astype(np.float32)


def _projections(n: int, max_shift: float, rng: np.random.Generator):
    """``(phantom, n noise-free projections at random poses and shifts ≤ max_shift px, rotations, shifts, rng)``."""
    vol = _phantom()
    Q = random_rotations(n, rng)
    t = rng.uniform(-max_shift, max_shift, (n, 2))
    return vol, VolumeProjector(vol).project(Q, shifts=t), Q, t, rng


def _angles(R1, R2) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((np.einsum("nij,nij->n", R1, R2) - 1) / 2, -1, 1)))


def test_local_grids_cover_the_ball_identity_first():
    dR = local_rotations(2.0, 3)
    assert dR.shape == (123, 3, 3)
    np.testing.assert_allclose(dR[0], np.eye(3), atol=1e-12)
    ang = _angles(dR, np.broadcast_to(np.eye(3), dR.shape))
    assert ang.max() == pytest.approx(6.0, abs=1e-6) and np.sort(ang)[1] == pytest.approx(2.0, abs=1e-6)
    t = local_shifts(0.5)
    assert t.shape == (13, 2) and np.all(t[0] == 0) and np.hypot(*t.T).max() == pytest.approx(1.0)


def test_insert_ft_undoes_shifts_as_insert_does(rng):
    """The slab kernel's in-flight ramps (insert_ft shifts) give the map of insert(images, shifts)."""
    b = 24
    imgs = rng.normal(size=(6, b, b)).astype(np.float32)
    R = random_rotations(6, rng)
    t = rng.uniform(-2, 2, (6, 2))
    a = Reconstructor(b)
    a.insert(imgs, R, shifts=t)
    c = Reconstructor(b)
    c.insert_ft(c.slices_from_images(imgs), R, shifts=t)
    np.testing.assert_allclose(c.F, a.F, atol=1e-4 * np.abs(a.F).max())


def test_poses_from_classes_are_the_true_poses():
    """The e2refine result (class projection + the class averager's 2D alignment, mirrors included) composed by
    poses_from_classes reproduces each particle's true pose to the grid's resolution; a transposed composition, a
    wrong mirror axis or a wrong shift sign would miss by tens of degrees or pixels."""
    from emflow.spa.refine_loop import RefineOptions, run_iteration

    vol, parts, Q, t, _ = _projections(80, 1.5, np.random.default_rng(3))
    opts = RefineOptions(sym="c1", orientgen="eman:delta=5:inc_mirror=0:perturb=0", apix=4.0, classiter=1,
                         classkeep=1.0, m3dkeep=1.0)
    r = run_iteration(vol, parts, opts, rng=np.random.default_rng(0))
    res = r["class_info"]["result"]
    R, shifts = poses_from_classes(res, r["make3d_R"])
    err = _angles(R, Q)
    mirrored = res[5, :, 0] > 0.5
    assert 0.2 < mirrored.mean() < 0.8  # half of the views are seen from the grid's other side
    for sel in (mirrored, ~mirrored):
        assert np.median(err[sel]) < 3.5 and np.percentile(err[sel], 90) < 6.0
    assert np.median(np.hypot(*(shifts - t).T)) < 0.6


@pytest.fixture(scope="module")
def noisy_half():
    """500 noisy projections (SNR 5 over the box) of the phantom at known poses, no CTF, and start poses
    perturbed by 3° per axis and 0.6 px."""
    n = 500
    vol, clean, Q, t, rng = _projections(n, 1.0, np.random.default_rng(5))
    parts = (clean + rng.normal(0, np.sqrt(clean.var() / 5.0), clean.shape)).astype(np.float32)
    R0 = np.einsum("nij,njk->nik", Rotation.from_rotvec(rng.normal(0, np.radians(3.0), (n, 3))).as_matrix(), Q)
    t0 = t + rng.normal(0, 0.6, (n, 2))
    return vol, parts, Q, t, R0, t0


def test_local_refinement_moves_poses_to_the_truth_and_sharpens_the_map(noisy_half):
    from emflow.filters import lowpass_gauss

    vol, parts, Q, t, R0, t0 = noisy_half
    b = vol.shape[-1]
    start = Reconstructor(b)
    start.insert(parts, R0, shifts=t0)
    start_map = start.finish()
    ref = lowpass_gauss(vol, 1.0, 5.0)  # a reference that knows the structure to 5 px only
    r = refine_half(ref, parts, R0, t0, step_deg=1.5, shift_step_px=0.4, kmax_px=b / 2)
    e0, e1 = _angles(R0, Q), _angles(r.rotations, Q)
    assert np.median(e1) < 0.6 * np.median(e0)
    assert np.median(np.hypot(*(r.shifts - t).T)) < 0.7 * np.median(np.hypot(*(t0 - t).T))
    k = int(0.35 * b)
    assert fsc(r.map, vol).fsc[4:k].mean() > fsc(start_map, vol).fsc[4:k].mean() + 0.02
    assert 0.5 < r.stats["scale"] < 2.0 and r.stats["inserted_per_particle"] > 1


def test_a_mirrored_reference_does_not_fit_the_particles(noisy_half):
    """The likelihood sees the hand only through the poses: against the mirror image of the truth the MAP poses
    stay as far from the truth as they started (no false convergence onto the true poses)."""
    vol, parts, Q, t, R0, t0 = noisy_half
    b = vol.shape[-1]
    good = refine_half(vol, parts, R0, t0, step_deg=1.5, shift_step_px=0.4, kmax_px=b / 2)
    bad = refine_half(vol[::-1].copy(), parts, R0, t0, step_deg=1.5, shift_step_px=0.4, kmax_px=b / 2)
    assert np.median(_angles(good.rotations, Q)) < 0.5 * np.median(_angles(bad.rotations, Q))


def test_global_search_recovers_particles_far_from_their_pose(noisy_half):
    """A third of the start poses replaced by random rotations with shifts up to 2 px: the local search alone cannot
    reach them (its radius is 4.5°); the global search first (10° grid over SO(3), shifts near the current one and
    the box centre) brings them back, and the fit in noise units tells the misplaced particles from the others."""
    vol, parts, Q, t, R0, t0 = noisy_half
    b, n = vol.shape[-1], len(parts)
    rng = np.random.default_rng(11)
    lost = rng.random(n) < 1 / 3
    R1, t1 = R0.copy(), t0.copy()
    R1[lost] = random_rotations(int(lost.sum()), rng)
    t1[lost] = rng.uniform(-2, 2, (int(lost.sum()), 2))
    local = refine_half(vol, parts, R1, t1, step_deg=1.5, shift_step_px=0.4, kmax_px=b / 2)
    far_local = _angles(local.rotations, Q) > 30
    assert far_local.mean() > 0.25
    # the misplaced particles fit the reference worse (ranking, in noise units)
    right, wrong = local.fit[~far_local], local.fit[far_local]
    assert (right[:, None] > wrong[None, :]).mean() > 0.9
    glob = refine_half(vol, parts, R1, t1, step_deg=1.5, shift_step_px=0.4, kmax_px=b / 2, global_deg=10.0)
    assert (_angles(glob.rotations, Q) > 30).mean() < 0.05 and glob.stats["global_moved"] > lost.sum() * 0.9
    kept = refine_half(vol, parts, R1, t1, step_deg=1.5, shift_step_px=0.4, kmax_px=b / 2, keep=0.6)
    assert kept.stats["kept"] == pytest.approx(0.6, abs=0.01)
    k = int(0.35 * b)
    assert fsc(kept.map, vol).fsc[4:k].mean() > fsc(local.map, vol).fsc[4:k].mean()
