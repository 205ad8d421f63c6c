"""Tests for emflow.fourier: FFT conventions, padding, Fourier cropping, binning, shifts."""

from __future__ import annotations

import numpy as np
import pytest

from emflow import fourier


def test_ft_phase_origin_is_box_centre():
    # a delta at the centre voxel n//2 has a real, flat spectrum (phase origin at the centre)
    for shape in [(8, 8), (6, 10, 12), (7, 9)]:
        x = np.zeros(shape, dtype=np.float32)
        x[tuple(s // 2 for s in shape)] = 1
        F = fourier.ft(x)
        assert F.dtype == np.complex64
        assert F.shape == shape[:-1] + (shape[-1] // 2 + 1,)
        np.testing.assert_allclose(F, 1, atol=1e-6)


def test_ft_matches_dft_definition(rng):
    # F(k) = Σ_r x(r) exp(-2πi k·(r - c)), k in cycles/px from freq_grid
    x = rng.standard_normal((6, 8, 10))
    F = fourier.ft(x)
    kz, ky, kx = fourier.freq_grid(x.shape)
    z, y, xx = np.indices(x.shape)
    for idx in [(0, 0, 0), (1, 3, 2), (5, 7, 5), (3, 4, 1)]:
        k = (kz[idx[0], 0, 0], ky[0, idx[1], 0], kx[0, 0, idx[2]])
        ph = np.exp(-2j * np.pi * (k[0] * (z - 3) + k[1] * (y - 4) + k[2] * (xx - 5)))
        assert abs(F[idx] - np.sum(x * ph)) < 1e-9 * np.abs(x).sum()


@pytest.mark.parametrize("shape", [(16, 16), (9, 12), (8, 10, 7)])
def test_ift_inverts_ft(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    y = fourier.ift(fourier.ft(x), shape)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=1e-5)
    # stack of images along the last two axes
    s = rng.standard_normal((3, 8, 8))
    np.testing.assert_allclose(fourier.ift(fourier.ft(s, axes=(-2, -1)), (8, 8)), s, atol=1e-12)


def test_freq_and_radius_grid():
    kz, ky, kx = fourier.freq_grid((4, 6, 8))
    np.testing.assert_allclose(kx.ravel(), [0, 0.125, 0.25, 0.375, 0.5])
    np.testing.assert_allclose(ky.ravel(), [0, 1 / 6, 2 / 6, -3 / 6, -2 / 6, -1 / 6])
    np.testing.assert_allclose(kz.ravel(), [0, 0.25, -0.5, -0.25])
    r = fourier.radius_grid((4, 6, 8))
    assert r.shape == (4, 6, 5)
    assert r[2, 3, 4] == pytest.approx(np.sqrt(0.25 + 0.25 + 0.25))
    full = fourier.freq_grid((4, 4), rfft=False)[1]
    np.testing.assert_allclose(full.ravel(), [0, 0.25, -0.5, -0.25])


def test_one_radius_grid_serves_every_unit():
    """The 1/Å grid of filters, the shells of fsc and tempmatch's grid are all fourier.radius_grid."""
    from emflow import filters, fsc
    from emflow.sta import tempmatch

    shape, apix = (6, 10, 12), 1.7
    r = fourier.radius_grid(shape)
    np.testing.assert_allclose(fourier.radius_grid(shape, apix=apix), r / apix, rtol=1e-12)
    assert filters.freq_grid_inv_a(shape, apix) is fourier.radius_grid(shape, apix=apix)
    # Nyquist along x is 0.5 cycles/px = 1/(2 apix) 1/Å = shell nx/2
    assert fourier.radius_grid(shape, apix=apix)[0, 0, -1] == pytest.approx(1 / (2 * apix))
    shells = fsc.shell_index(shape)
    keep = shells >= 0
    np.testing.assert_array_equal(shells[keep], np.rint(r * shape[-1]).astype(np.int64)[keep])
    np.testing.assert_array_equal(tempmatch.radial_frequency(shape), r.astype(np.float32))
    assert not r.flags.writeable  # cached: callers copy before writing


def test_pad_crop_keep_centre(rng):
    for m, n in [(8, 12), (7, 12), (8, 13), (5, 6)]:
        x = rng.standard_normal((m, m))
        p = fourier.pad(x, n)
        assert p.shape == (n, n)
        assert p[n // 2, n // 2] == x[m // 2, m // 2]
        np.testing.assert_array_equal(fourier.crop(p, m), x)
        assert p.sum() == pytest.approx(x.sum())
    with pytest.raises(ValueError):
        fourier.pad(np.zeros((8, 8)), 4)
    with pytest.raises(ValueError):
        fourier.crop(np.zeros((8, 8)), 10)


def _cosine_field(n, freqs, shape_nd=3):
    g = np.indices((n,) * shape_nd) - n // 2
    out = np.zeros((n,) * shape_nd)
    for amp, k in freqs:  # k in cycles per box, integer → exactly periodic
        out += amp * np.cos(2 * np.pi * sum(ki * gi for ki, gi in zip(k, g)) / n + 0.3)
    return out


def test_fourier_crop_band_limited_is_exact():
    # a field with only |k| < 8 cycles/box is represented exactly at every box >= 16
    freqs = [(1.0, (1, 2, 0)), (0.5, (3, -1, 2)), (0.25, (0, 5, -6)), (2.0, (0, 0, 0))]
    big = _cosine_field(48, freqs)
    small = _cosine_field(24, freqs)
    np.testing.assert_allclose(fourier.fourier_crop(big, 24), small, atol=1e-9)
    np.testing.assert_allclose(fourier.fourier_crop(small, 48), big, atol=1e-9)
    # mean value (density scale) is preserved
    assert fourier.fourier_crop(big, 24).mean() == pytest.approx(big.mean())


def test_fourier_crop_up_down_round_trip_and_nyquist(rng):
    x = rng.standard_normal((16, 16, 16)).astype(np.float32)
    up = fourier.fourier_crop(x, 32)
    assert up.dtype == np.float32
    # up-sampling interpolates: the old samples are kept (centre maps onto centre)
    np.testing.assert_allclose(up[::2, ::2, ::2], x, atol=1e-5)
    np.testing.assert_allclose(fourier.fourier_crop(up, 16), x, atol=1e-5)
    # a pure Nyquist wave (-1)^x survives a 2x up-sampling as a cosine at the new half-Nyquist
    nyq = np.cos(np.pi * (np.arange(16) - 8))[None, :].repeat(16, 0)
    up2 = fourier.fourier_crop(nyq, (16, 32))
    np.testing.assert_allclose(up2, np.cos(np.pi * (np.arange(32) - 16) / 2)[None, :].repeat(16, 0), atol=1e-9)
    # stack: only the image axes change
    s = fourier.fourier_crop(rng.standard_normal((3, 16, 16)), (3, 8, 8))
    assert s.shape == (3, 8, 8)


def test_bin_mean_matches_loops(rng):
    x = rng.standard_normal((9, 8, 10))
    b = fourier.bin_mean(x, 2)
    assert b.shape == (4, 4, 5)
    ref = np.array([[[x[2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2].mean() for k in range(5)]
                     for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(b, ref, atol=1e-12)
    b2 = fourier.bin_mean(x.astype(np.float32), (3, 2, 5))
    assert b2.shape == (3, 4, 2) and b2.dtype == np.float32
    assert b2[1, 2, 1] == pytest.approx(x[3:6, 4:6, 5:10].mean(), rel=1e-5)


def test_bin_mean_reproduces_shared_binned_map(shared_map):
    # README: the 10.48 Å maps are the 4x block average of the 2.62 Å maps on a grid shifted by
    # 1.5 fine voxels (so that the centre stays on voxel N/2). Moving the fine map by +1.5 px
    # (a Fourier shift, so only approximately the voxel-integral shift) and binning must match.
    fine, apix_f = shared_map("ribosome70S_4v5d_2p62A_box128.mrc.gz")
    coarse, apix_c = shared_map("ribosome70S_4v5d_10p48A_box32.mrc.gz")
    assert apix_c == pytest.approx(4 * apix_f, rel=1e-4)
    binned = fourier.bin_mean(fourier.shift(fine, (1.5, 1.5, 1.5)), 4)
    cc = np.corrcoef(binned.ravel(), coarse.ravel())[0, 1]
    assert cc > 0.999
    assert binned.sum() == pytest.approx(coarse.sum(), rel=1e-3)
    # the wrong direction is measurably worse: the test can tell the shift convention
    wrong = fourier.bin_mean(fourier.shift(fine, (-1.5, -1.5, -1.5)), 4)
    assert np.corrcoef(wrong.ravel(), coarse.ravel())[0, 1] < cc - 0.01


def test_shift_moves_content_by_plus_shift(rng):
    x = rng.standard_normal((12, 16)).astype(np.float32)
    np.testing.assert_allclose(fourier.shift(x, (3, -2)), np.roll(x, (-2, 3), axis=(0, 1)), atol=1e-5)
    # a Gaussian's centroid moves by the sub-pixel shift
    n = 32
    z, y, xx = np.indices((n, n, n)) - n // 2
    g = np.exp(-(xx**2 + y**2 + z**2) / (2 * 2.0**2))
    s = np.array([0.3, -1.7, 2.25])
    m = fourier.shift(g, s)
    cen = [np.sum(m * a) / m.sum() for a in (xx, y, z)]
    np.testing.assert_allclose(cen, s, atol=1e-6)
    np.testing.assert_allclose(fourier.shift(m, -s), g, atol=1e-9)
    # per-image shifts of a stack
    st = rng.standard_normal((2, 8, 8))
    out = fourier.shift(st, [[1, 0], [0, 2]])
    np.testing.assert_allclose(out[0], np.roll(st[0], 1, axis=1), atol=1e-12)
    np.testing.assert_allclose(out[1], np.roll(st[1], 2, axis=0), atol=1e-12)
    with pytest.raises(ValueError):
        fourier.shift(x, (1, 2, 3))


def test_good_size():
    assert fourier.good_size(1) == 16
    assert fourier.good_size(64) == 64
    assert fourier.good_size(65) == 72
    assert fourier.good_size(141) == 168
    assert fourier.good_size(257) == 260
    assert fourier.good_size(500) == 512
    for n in [513, 777, 1500]:
        g = fourier.good_size(n)
        assert g >= n and g % 2 == 0
    sizes = np.array(fourier.GOOD_SIZES)
    assert np.all(np.diff(sizes) > 0) and np.all(sizes % 2 == 0)
