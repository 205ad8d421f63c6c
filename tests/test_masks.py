"""Tests of emflow.masks: soft spheres, soft edges and automasking of real maps."""

from __future__ import annotations

import numpy as np
import pytest

from emflow.errors import InputError
from emflow.masks import (
    auto_mask,
    automask_threshold,
    postprocess_masks,
    radius_grid,
    soft_circle,
    soft_edge,
    soft_sphere,
)


def test_soft_sphere_values():
    n, R, w = 32, 8.0, 3.0
    m = soft_sphere(n, R, w)
    r = radius_grid((n, n, n))
    assert m.shape == (n, n, n) and m.dtype == np.float32
    assert np.all(m[r <= R] == 1.0)
    np.testing.assert_allclose(m[r > R], np.exp(-(((r[r > R] - R) / w) ** 2)), rtol=1e-5)
    assert m[n // 2, n // 2, n // 2 + 10] == pytest.approx(np.exp(-((2 / 3) ** 2)), rel=1e-5)
    assert np.all(m[r >= R + 4 * w] < 2e-7)
    # 0.5 at R + w·√ln2 for the Gaussian; at R + w/2 for the cosine edge, 0 beyond R + w.
    mc = soft_sphere(n, R, 4.0, kind="cosine")
    assert mc[n // 2, n // 2, n // 2 + 10] == pytest.approx(0.5, abs=1e-6)
    assert np.all(mc[r >= R + 4] == 0)
    # EMAN outer_radius = −k means n/2 − k.
    np.testing.assert_array_equal(soft_sphere(n, -4, 2), soft_sphere(n, 12, 2))
    c = soft_circle(n, R, w)
    np.testing.assert_array_equal(c, m[n // 2])


def test_soft_edge():
    n = 24
    binary = radius_grid((n, n, n)) <= 5
    m = soft_edge(binary, 3.0)
    assert np.all(m[binary] == 1)
    r = radius_grid((n, n, n))
    # Outside: exp(−d²/(2σ²)), σ = width/2, d = distance to the nearest inside voxel (brute force).
    inside = np.argwhere(binary)
    for p in [(12, 12, 19), (12, 15, 18), (3, 12, 12), (16, 16, 16), (12, 12, 22)]:
        d = np.sqrt(((inside - np.array(p)) ** 2).sum(1)).min()
        expect = np.exp(-(d**2) / (2 * 1.5**2)) if d <= 6 else 0.0
        assert m[p] == pytest.approx(expect, abs=1e-6)
    assert np.all(m[r > 5 + 6 + 1.8] == 0)
    assert np.all(np.diff(m[n // 2, n // 2, n // 2:]) <= 0)


@pytest.mark.parametrize(
    "name", ["proteasome20S_3j9i_10p48A_box20.mrc.gz", "apoferritin_6z6u_2p62A_box64.mrc.gz"]
)
def test_auto_mask_of_real_map_holds_the_mass(shared_map, name):
    vol, apix = shared_map(name)
    mask = auto_mask(vol, apix)
    assert mask.min() >= 0 and mask.max() <= 1
    assert (mask * vol).sum() / vol.sum() >= 0.99
    assert mask.mean() < 0.6


def test_postprocess_masks_of_real_map(shared_map):
    vol, apix = shared_map("apoferritin_6z6u_2p62A_box64.mrc.gz")
    loose, tight = postprocess_masks(vol, apix, restarget=8.0)
    for m in (loose, tight):
        assert 0 <= m.min() and m.max() <= 1
        assert (m * vol).sum() / vol.sum() >= 0.99
        assert m.mean() < 0.6
    # Apoferritin is a hollow shell: the masks exclude the solvent core and the corners.
    c = vol.shape[0] // 2
    assert loose[c, c, c] < 0.2 and loose[0, 0, 0] < 0.01


def test_auto_mask_flood_fill_excludes_disconnected_density():
    n = 32
    r = radius_grid((n, n, n))
    vol = np.where(r <= 6, 1.0, 0.0).astype(np.float32)
    vol[2:5, 2:5, 2:5] = 0.8  # separate blob above threshold, not connected to the seeds
    m = auto_mask(vol, 2.0, threshold=0.5, nshells=1, nshellsgauss=0, nmaxseed=5)
    assert np.all(m[r <= 6] == 1)
    assert np.all(m[2:5, 2:5, 2:5] == 0)
    assert np.all(m[r > 7.01] == 0)  # dilated by exactly one px
    # Seeding from a central sphere instead of maxima gives the same component.
    m2 = auto_mask(vol, 2.0, threshold=0.5, nshells=1, radius=3)
    np.testing.assert_array_equal(m, m2)
    with pytest.raises(InputError):
        auto_mask(vol, 2.0, threshold=2.0)


def test_automask_threshold_finds_particle_radius():
    n = 48
    r = radius_grid((n, n, n))
    vol = np.where(r <= 10, 1.0, 0.0).astype(np.float32)
    vol[r > 21] = 0.9  # spurious density near the box edge (beyond n/2.2 is ignored)
    choice = automask_threshold(vol, 2.0, restarget=8.0)
    assert 10 <= choice.rmax <= 16
    assert 0.5 < choice.peak <= 1.05  # low-passed unit ball (slight ringing)
    assert np.all(choice.filtered[r > choice.rmax] == 0)
