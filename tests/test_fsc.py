"""Tests of emflow.fsc: FSC/FRC definition, statistics and resolution estimates."""

from __future__ import annotations

import numpy as np
import pytest
from naive_fsc import naive_fsc

from emflow import filters
from emflow.fsc import FSCCurve, frc_from_ft, frc_per_image, fsc, resolution, resolution_at, shell_index

APOF = "apoferritin_6z6u_2p62A_box64.mrc.gz"


@pytest.mark.parametrize("shape", [(10, 10), (9, 9), (8, 8, 8), (7, 7, 7), (6, 8, 10)])
def test_fsc_matches_naive_reference(rng, shape):
    a = rng.standard_normal(shape).astype(np.float32)
    b = (0.7 * a + rng.standard_normal(shape)).astype(np.float32)
    curve = fsc(a, b)
    ref, cnt = naive_fsc(a, b)
    np.testing.assert_array_equal(curve.nvox, cnt)
    np.testing.assert_allclose(curve.fsc, ref, atol=2e-5)
    nx = shape[-1]
    np.testing.assert_array_equal(curve.shell, np.arange(1, nx // 2 + 1))
    np.testing.assert_allclose(curve.freq, np.arange(1, nx // 2 + 1) / nx)


def test_friedel_pairs_counted_once():
    # In a 2D n×n box the rfft half holds (n/2+1)·n coefficients; n²/2 + 2 independent pairs.
    n = 16
    sh = shell_index((n, n))
    assert (sh >= 0).sum() == n * n // 2 + 2
    # 3D: n³/2 + 4 independent pairs (8 self-conjugate points).
    sh3 = shell_index((n, n, n))
    assert (sh3 >= 0).sum() == n**3 // 2 + 4


def test_fsc_of_map_with_itself_is_one(shared_map):
    vol, _ = shared_map(APOF)
    curve = fsc(vol, vol)
    np.testing.assert_allclose(curve.fsc, 1.0, atol=1e-6)
    assert curve.shell[-1] == 32 and curve.freq[-1] == 0.5


def test_fsc_against_independent_noise_is_zero(shared_map, rng):
    vol, _ = shared_map(APOF)
    noise = rng.standard_normal(vol.shape).astype(np.float32)
    curve = fsc(vol, noise)
    # Each shell: FSC ~ N(0, 1/(2·nvox)) for nvox independent complex pairs.
    assert np.all(np.abs(curve.fsc) < 4.5 / np.sqrt(2 * curve.nvox))
    wmean = np.sum(curve.fsc * curve.nvox) / curve.nvox.sum()
    assert abs(wmean) < 3 / np.sqrt(curve.nvox.sum())


def test_fsc_follows_snr_relation(shared_map, rng):
    """FSC(S, S+N) = √(SNR/(1+SNR)) and FSC(S+N1, S+N2) = SNR/(1+SNR) per shell."""
    vol, _ = shared_map(APOF)
    vol = vol / vol.std()
    sigma = 1.0
    n1 = rng.standard_normal(vol.shape).astype(np.float32) * sigma
    n2 = rng.standard_normal(vol.shape).astype(np.float32) * sigma
    ps = filters.radial_profile(vol, "power")[1:]  # mean |S|² per shell, r = 1..32
    pn = vol.size * sigma**2  # E|N(k)|² of white noise, unnormalised FFT
    snr = ps / pn
    good = (snr > 0.05) & (snr < 20)  # shells where the curve is informative
    assert good.sum() >= 8
    c1 = fsc(vol, vol + n1)
    expect1 = np.sqrt(snr / (1 + snr))
    assert np.mean(np.abs(c1.fsc - expect1)[good]) < 0.03
    c2 = fsc(vol + n1, vol + n2)
    expect2 = snr / (1 + snr)
    assert np.mean(np.abs(c2.fsc - expect2)[good]) < 0.04


def test_resolution_of_known_curve():
    freq = np.arange(1, 33) / 64
    curve = FSCCurve(np.arange(1, 33), freq, 1.0 - 2.0 * freq, np.ones(32, dtype=np.int64))
    s = resolution_at(curve, 0.143)
    assert s == pytest.approx((1 - 0.143) / 2, abs=1e-12)  # linear curve → exact interpolation
    assert resolution(curve, 2.0) == pytest.approx(2.0 / s)
    assert resolution_at(curve, 0.5) == pytest.approx(0.25)
    # A curve that never crosses reports the Nyquist limit and says so.
    flat = FSCCurve(curve.shell, freq, np.full(32, 0.9), curve.nvox)
    assert not flat.crosses(0.143) and curve.crosses(0.143)
    assert resolution(flat, 3.0) == pytest.approx(6.0)
    np.testing.assert_allclose(curve.freq_inv_a(2.0), freq / 2.0)


def test_resolution_of_tophat_filtered_halves(shared_map, rng):
    """Two noisy halves of a map low-passed (tophat) at 20 Å give a 0.143 resolution ≈ 20 Å."""
    vol, apix = shared_map(APOF)
    lp = filters.lowpass_tophat(vol, apix, 20.0)
    sd = lp.std()
    h1 = lp + 0.3 * sd * rng.standard_normal(vol.shape).astype(np.float32)
    h2 = lp + 0.3 * sd * rng.standard_normal(vol.shape).astype(np.float32)
    curve = fsc(h1, h2)
    res = resolution(curve, apix, 0.143)
    # Shell spacing is 1/(64·2.62 Å): 20 Å lies between shells 8 (20.96 Å) and 9 (18.6 Å).
    assert 18.0 < res < 22.5, res
    assert np.all(curve.fsc[curve.freq_inv_a(apix) > 1 / 17.0] < 0.3)


def test_frc_per_image_matches_fsc(rng):
    a = rng.standard_normal((5, 24, 24)).astype(np.float32)
    b = (a + rng.standard_normal((5, 24, 24))).astype(np.float32)
    frc = frc_per_image(a, b)
    assert frc.shape == (5, 13)
    for i in range(5):
        np.testing.assert_allclose(frc[i, 1:], fsc(a[i], b[i]).fsc, atol=1e-6)
    assert np.allclose(frc[:, 0], np.sign(a.sum((1, 2)) * b.sum((1, 2))))
    # A single image broadcasts against a stack; nshells truncates.
    frc1 = frc_per_image(a, a[0], nshells=6)
    assert frc1.shape == (5, 6)
    np.testing.assert_allclose(frc1[0], 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        frc_from_ft(np.zeros((2, 24, 12), complex), np.zeros((2, 24, 12), complex), 24, 5)


def test_fsc_with_mask_and_errors(rng):
    a = rng.standard_normal((16, 16, 16)).astype(np.float32)
    mask = np.zeros_like(a)
    mask[4:12, 4:12, 4:12] = 1
    c = fsc(a, a + 5 * (1 - mask) * rng.standard_normal(a.shape).astype(np.float32), mask=mask)
    np.testing.assert_allclose(c.fsc, 1.0, atol=1e-5)  # the noise lies outside the mask
    with pytest.raises(ValueError):
        fsc(a, a[:8])


def test_fsc_txt_convention_rows_are_shells_1_to_nyquist(tmp_path):
    """Every fsc_*.txt: one row per shell r = 1 … n/2 (no DC row), frequency r / (n·apix) in 1/Å."""
    from emflow.io import read_fsc_txt, write_fsc_curve

    rng = np.random.default_rng(3)
    n, apix = 24, 2.5
    a = rng.standard_normal((n, n, n)).astype(np.float32)
    curve = fsc(a, a + 0.5 * rng.standard_normal((n, n, n)).astype(np.float32))
    write_fsc_curve(tmp_path / "fsc_masked_01.txt", curve, apix)
    freq, values = read_fsc_txt(tmp_path / "fsc_masked_01.txt")
    r = np.arange(1, n // 2 + 1)
    np.testing.assert_allclose(freq, r / (n * apix), rtol=1e-5)
    np.testing.assert_allclose(values, curve.fsc, atol=1e-6)
