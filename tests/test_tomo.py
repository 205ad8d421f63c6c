"""Tests of emflow.sta.tomo: back-projection kernel, binning, WBP geometry and density scale."""

from __future__ import annotations

import numpy as np
import pytest
from naive_tomo import backproject as naive_backproject

from emflow.geometry import tilt_matrix
from emflow.sta import tomo


def _render_points(points_xyz, amplitudes, tilts_deg, shape_yx, sigma=1.0, axis_rot=0.0):
    """Analytic tilt series of 3D Gaussian blobs (their projections are 2D Gaussians)."""
    ny, nx = shape_yx
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    stack = np.zeros((len(tilts_deg), ny, nx), np.float32)
    for i, R in enumerate(tilt_matrix(np.asarray(tilts_deg), axis_rot)):
        for p, a in zip(points_xyz, amplitudes):
            q = R @ np.asarray(p, float)
            r2 = (x - q[0] - nx // 2) ** 2 + (y - q[1] - ny // 2) ** 2
            stack[i] += a * np.sqrt(2 * np.pi) * sigma * np.exp(-r2 / (2 * sigma**2))
    return stack


def _render_sphere(centre_xyz, radius, tilts_deg, shape_yx, oversample=4):
    """Analytic line integrals (chord lengths, px) of a uniform sphere of density 1."""
    ny, nx = shape_yx
    off = (np.arange(oversample) + 0.5) / oversample - 0.5
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    stack = np.zeros((len(tilts_deg), ny, nx), np.float32)
    for i, R in enumerate(tilt_matrix(np.asarray(tilts_deg))):
        q = R @ np.asarray(centre_xyz, float)
        acc = np.zeros((ny, nx))
        for dy in off:
            for dx in off:
                d2 = (x + dx - q[0] - nx // 2) ** 2 + (y + dy - q[1] - ny // 2) ** 2
                acc += 2 * np.sqrt(np.clip(radius**2 - d2, 0, None))
        stack[i] = acc / oversample**2
    return stack


def test_backprojection_kernel_matches_naive(rng):
    ntilt, img = 5, (20, 24)
    images = rng.standard_normal((ntilt, *img)).astype(np.float32)
    matrices = tilt_matrix(rng.uniform(-60, 60, ntilt), rng.uniform(-10, 10, ntilt), rng.uniform(-3, 3, ntilt))
    shifts = rng.uniform(-2, 2, (ntilt, 2))
    shape = (7, 18, 26)
    rows = tomo.projection_rows(matrices, shifts, shape, img)
    out = np.zeros(shape, np.float32)
    tomo._backproject_slab(images, rows, 0, out[:4])
    tomo._backproject_slab(images, rows, 4, out[4:])
    ref = naive_backproject(images, matrices, shifts, shape)
    np.testing.assert_allclose(out, ref, atol=2e-4)


def test_bin_tilt_series_preserves_mean_and_centre():
    stack = np.zeros((2, 64, 48), np.float32)
    stack[:, 32, 24] = 16.0  # a delta at the centre pixel
    stack[1] += 1.0
    binned = tomo.bin_tilt_series(stack, 4)
    assert binned.shape == (2, 16, 12)
    np.testing.assert_allclose(binned.mean(axis=(1, 2)), stack.mean(axis=(1, 2)), rtol=1e-5)
    assert np.unravel_index(np.argmax(binned[0]), binned[0].shape) == (8, 6)
    # Odd sizes are cropped about the centre to a multiple of the bin first.
    assert tomo.bin_tilt_series(np.ones((1, 67, 50), np.float32), 4).shape == (1, 16, 12)


@pytest.mark.parametrize("axis_rot", [0.0, 12.0])
def test_points_reconstruct_at_their_positions(axis_rot):
    """Off-centre points in x, y and z: a wrong tilt sense or depth sign moves the maxima."""
    tilts = np.arange(-60.0, 60.1, 3.0)
    points = np.array([[22.0, -14.0, 12.0], [-30.0, 26.0, -18.0], [34.0, 30.0, 20.0]])
    stack = _render_points(points, [1.0, 1.0, 1.0], tilts, (128, 128), sigma=1.2, axis_rot=axis_rot)
    vol = tomo.reconstruct_wbp(stack, tilts, bin=2, thickness_px=32, axis_rot_deg=axis_rot)
    assert vol.shape == (32, 64, 64) and vol.dtype == np.float32
    centre = np.array([32, 32, 16])  # x, y, z index of the origin
    for p in points:
        expect = p / 2 + centre
        lo = np.round(expect).astype(int) - 4
        sub = vol[lo[2] : lo[2] + 9, lo[1] : lo[1] + 9, lo[0] : lo[0] + 9]
        # The maximum of a neighbourhood 4 voxels around the truth must be at the truth (±1).
        z, y, x = np.unravel_index(np.argmax(sub), sub.shape)
        found = np.array([x, y, z]) + lo
        assert np.all(np.abs(found - expect) <= 1.0), (p, found, expect)
        # ... and the global maximum of the slab around it is a real peak, not an artefact.
        assert sub.max() > 5 * np.abs(vol).mean()


def test_shifted_tilt_series_with_alignment_shifts():
    """Per-tilt image shifts (tx, ty) are undone by the reconstruction."""
    tilts = np.arange(-45.0, 45.1, 5.0)
    point = np.array([[10.0, -6.0, 8.0]])
    stack = _render_points(point, [1.0], tilts, (64, 64), sigma=1.2)
    rng = np.random.default_rng(3)
    shifts = rng.integers(-5, 6, size=(tilts.size, 2)).astype(float)
    moved = np.stack([np.roll(s, (int(t[1]), int(t[0])), axis=(0, 1)) for s, t in zip(stack, shifts)])
    vol = tomo.reconstruct_wbp(moved, tilts, bin=1, thickness_px=32, shifts=shifts, lowpass="none")
    z, y, x = np.unravel_index(np.argmax(vol), vol.shape)
    assert (x - 32, y - 32, z - 16) == (10, -6, 8)


@pytest.mark.parametrize("tilt_max, covered", [(89.0, 1.0), (60.0, 122.0 / 180.0)])
def test_sphere_size_and_density(tilt_max, covered):
    """A uniform sphere (density 1, radius 20 px) comes back with its radius and density.

    With a full tilt range the Radon inversion is exact: the density is 1. With ±60° the
    missing wedge removes a fraction of every shell of an isotropic object's transform, so
    the density drops to the covered angular fraction (120° + one 2° step of 180°).
    """
    tilts = np.arange(-tilt_max, tilt_max + 0.1, 2.0)
    centre = np.array([8.0, -10.0, 6.0])
    stack = _render_sphere(centre, 20.0, tilts, (128, 128))
    vol = tomo.reconstruct_wbp(stack, tilts, bin=2, thickness_px=48, lowpass="none")
    cx, cy, cz = (centre / 2 + np.array([32, 32, 24])).astype(int)
    xy = vol[cz]
    # In-plane (no missing wedge in x-y): equivalent radius of the half-density region.
    radius = np.sqrt((xy > 0.5 * covered).sum() / np.pi)
    assert abs(radius - 10.0) < 0.6, radius
    z, y, x = np.mgrid[0 : vol.shape[0], 0 : vol.shape[1], 0 : vol.shape[2]]
    inner = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 5**2
    assert abs(vol[inner].mean() - covered) < 0.08 * covered, vol[inner].mean()
    # Outside the sphere, in-plane, the map is flat: no cupping or halo (a full tilt range
    # has no missing-wedge streaks, so this bounds the weighting's own artefacts).
    ring = ((x - cx) ** 2 + (y - cy) ** 2 >= 13**2) & (np.abs(z - cz) <= 2) & ((x - cx) ** 2 + (y - cy) ** 2 <= 20**2)
    assert np.abs(vol[ring]).mean() < (0.03 if tilt_max > 80 else 0.2) * covered, np.abs(vol[ring]).mean()


def test_r_weight_is_perpendicular_to_the_tilt_axis():
    m = tilt_matrix(np.array([0.0]), 90.0)  # tilt axis along image x
    w = tomo.r_weight_filters((32, 32), m, np.array([0.0]), lowpass="none")[0]
    # With the axis along x the weight grows with |ky| and is flat along kx.
    assert w[4, 0] > 3 * w[1, 0]
    np.testing.assert_allclose(w[4, :], w[4, 0], rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="tilts_deg"):
        tomo.reconstruct_wbp(np.zeros((3, 16, 16)), [0, 1], thickness_px=4)
    with pytest.raises(ValueError, match="radial_weight"):
        tomo.reconstruct_wbp(np.zeros((2, 16, 16)), [0, 1], thickness_px=4, radial_weight="shepp")


def test_simulated_particles_reconstruct_at_their_truth_positions():
    """Simulator and WBP share the tilt geometry: the dark blobs of a reconstructed simulated
    tilt series (CTF, noise-free) sit at the true particle centres, off-centre in x, y and z."""
    from emflow.demo.data import structure_path
    from emflow.demo.simulate import simulate_tilt_series
    from emflow.io import read_mrc

    ref, apix_ref = read_mrc(structure_path("proteasome20S"))
    tilts = np.arange(-60.0, 60.1, 4.0)
    stack, truth = simulate_tilt_series(ref, apix_ref, apix=10.48, shape_xyz=(128, 128, 48), tilts_deg=tilts,
                                        n_particles=6, rng=np.random.default_rng(2), defocus_um=4.0, snr=None,
                                        dose_per_tilt=0.0)
    vol = tomo.reconstruct_wbp(stack, tilts, bin=2, thickness_px=24)
    import scipy.ndimage

    smooth = scipy.ndimage.gaussian_filter(vol, 1.5)  # particle-scale blobs (CTF fringes averaged out)
    centre = np.array([32, 32, 12])
    assert np.ptp(truth.positions_px[:, 2]) > 8  # the particles really are at different depths
    for p in truth.positions_px:
        expect = p / 2 + centre
        lo = np.maximum(np.round(expect).astype(int) - 3, 0)
        sub = smooth[lo[2] : lo[2] + 7, lo[1] : lo[1] + 7, lo[0] : lo[0] + 7]
        z, y, x = np.unravel_index(np.argmin(sub), sub.shape)  # protein is dark
        found = np.array([x, y, z]) + lo
        assert np.all(np.abs(found - expect) <= 1.5), (p, found, expect)
