"""Tests of emflow.filters: EMAN filter semantics, normalisation, FSC Wiener filter, symmetry."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
from naive_fsc import naive_radial_power

from emflow import filters, fourier
from emflow.errors import InputError
from emflow.fsc import FSCCurve, fsc


def _cosine(n, k, ndim=3):
    """cos(2π k x / n) along x in an n^ndim box: a single frequency k/n cycles/px."""
    x = np.arange(n)
    wave = np.cos(2 * np.pi * k * x / n).astype(np.float32)
    return np.broadcast_to(wave, (n,) * ndim).copy()


def test_gauss_lowpass_amplitude_at_sigma_is_exp_minus_half():
    n, apix, k = 32, 2.0, 5
    s = k / (n * apix)  # 1/Å
    x = _cosine(n, k)
    out = filters.lowpass_gauss(x, apix, res_a=1 / s)
    np.testing.assert_allclose(out, np.exp(-0.5) * x, atol=1e-5)
    hp = filters.highpass_gauss(x, apix, res_a=1 / s)
    np.testing.assert_allclose(out + hp, x, atol=1e-5)


def test_tophat_keeps_below_and_removes_above():
    n, apix = 32, 1.0
    lo, hi = _cosine(n, 3, 2), _cosine(n, 9, 2)
    out = filters.lowpass_tophat(lo + hi, apix, res_a=n * apix / 6)  # cutoff at shell 6
    np.testing.assert_allclose(out, lo, atol=1e-5)
    band = filters.bandpass(lo + hi, apix, lowpass_res_a=n * apix / 12, highpass_res_a=n * apix / 6, kind="tophat")
    np.testing.assert_allclose(band, hi, atol=1e-5)
    with pytest.raises(InputError):
        filters.bandpass(lo, apix, lowpass_res_a=10.0, highpass_res_a=5.0)


@pytest.mark.parametrize("kind", ["cosine", "gauss", "tophat"])
def test_one_bandpass_vocabulary(kind):
    """lowpass_res_a = finest detail kept, highpass_res_a = coarsest, for every kind: a shell well inside
    the band passes, shells well outside are removed; either side can be switched off."""
    n, apix = 64, 2.0
    f = fourier.radius_grid((n, n))
    prof = filters.bandpass_profile(f, apix, lowpass_res_a=8.0, highpass_res_a=40.0, kind=kind, edge=2.0 / n)
    assert prof.dtype == np.float32 and prof.shape == f.shape

    def at(res_a):  # value at the shell of resolution res_a
        return prof[0, int(round(n * apix / res_a))]

    assert at(16.0) > 0.5 and at(4.0) < 0.2 and at(128.0) < 0.2
    low_only = filters.bandpass_profile(f, apix, lowpass_res_a=8.0, kind=kind, edge=2.0 / n)
    assert low_only[0, 0] == pytest.approx(1.0) and low_only[0, int(n * apix / 4.0)] < 0.2
    with pytest.raises(InputError):
        filters.bandpass_profile(f, apix, lowpass_res_a=40.0, highpass_res_a=8.0, kind=kind, edge=2.0 / n)


def test_filters_on_a_stack_work_per_image(rng):
    stack = rng.standard_normal((4, 24, 24)).astype(np.float32)
    out = filters.lowpass_gauss(stack, 2.0, 10.0, ndim=2)
    for i in range(4):
        np.testing.assert_allclose(out[i], filters.lowpass_gauss(stack[i], 2.0, 10.0), atol=1e-5)


def test_phase_randomize(rng):
    n, apix, res = 32, 2.0, 12.0
    x = rng.standard_normal((n, n, n)).astype(np.float32)
    x = filters.lowpass_gauss(x, apix, 6.0)
    y = filters.phase_randomize(x, apix, res, np.random.default_rng(7))
    fx, fy = scipy.fft.rfftn(x), scipy.fft.rfftn(y)
    # Amplitudes are kept everywhere (this also proves the new phases are Hermitian-consistent).
    np.testing.assert_allclose(np.abs(fy), np.abs(fx), rtol=1e-3, atol=1e-3 * np.abs(fx).max())
    s = filters.freq_grid_inv_a((n, n, n), apix)
    np.testing.assert_allclose(fy[s <= 1 / res], fx[s <= 1 / res], atol=1e-3 * np.abs(fx).max())
    dphi = np.abs(np.angle(fy[s > 1 / res] / fx[s > 1 / res]))
    assert dphi.mean() > 1.2  # uniform random phase differences average π/2
    c = fsc(x, y)
    below = c.freq / apix < 1 / res - 1 / (n * apix)
    np.testing.assert_allclose(c.fsc[below], 1.0, atol=1e-4)
    assert np.all(np.abs(c.fsc[c.freq / apix > 1 / res + 1 / (n * apix)]) < 0.35)


def test_normalizations(rng):
    x = (3 + 2 * rng.standard_normal((16, 16, 16))).astype(np.float32)
    nx = filters.normalize(x)
    assert abs(nx.mean()) < 1e-5 and nx.std() == pytest.approx(1, abs=1e-5)
    mask = np.zeros_like(x)
    mask[4:12] = 1
    nm = filters.normalize(x, mask)
    assert abs(nm[4:12].mean()) < 1e-5 and nm[4:12].std() == pytest.approx(1, abs=1e-5)
    img = (rng.standard_normal((20, 20)) + 5).astype(np.float32)
    e = filters.normalize_edgemean(img)
    border = np.concatenate([e[0], e[-1], e[1:-1, 0], e[1:-1, -1]])
    assert abs(border.mean()) < 1e-5 and e.std() == pytest.approx(1, abs=1e-5)
    e3 = filters.normalize_edgemean(x)
    faces = np.ones(x.shape, bool)
    faces[1:-1, 1:-1, 1:-1] = False
    assert abs(e3[faces].mean()) < 1e-5
    es = filters.normalize_edgemean(np.stack([img, 2 * img]), ndim=2)
    np.testing.assert_allclose(es[1], e, atol=1e-5)
    cm = filters.normalize_circlemean(img, radius=8)
    assert cm.std() == pytest.approx(1, abs=1e-5)


def test_radial_profile_and_structure_factor(rng):
    x = rng.standard_normal((12, 12, 12)).astype(np.float32)
    prof = filters.radial_profile(x)
    ref = naive_radial_power(x)
    np.testing.assert_allclose(prof[:-1], ref[:-1], rtol=1e-5)
    assert np.allclose(filters.radial_profile(x, "amplitude"), np.sqrt(prof))
    target = np.linspace(1.0, 0.01, 7) * x.size
    y = filters.set_structure_factor(x, target)
    np.testing.assert_allclose(filters.radial_profile(y)[1:], target[1:], rtol=1e-3)
    # Phases unchanged: FSC with the input is 1.
    np.testing.assert_allclose(fsc(x, y).fsc, 1.0, atol=1e-5)


def test_fsc_to_wiener_rules():
    freq = np.arange(1, 17) / 32.0
    w = filters.fsc_to_wiener(np.full(16, 0.5), freq, snrmult=2)
    np.testing.assert_allclose(w, 0.8)  # SNR = 2 → 4/5
    assert np.all(filters.fsc_to_wiener(np.ones(16), freq) > 0.9999)
    np.testing.assert_allclose(filters.fsc_to_wiener(np.zeros(16), freq), 0.001)  # floor
    # Negative FSC: once the 5-point mean is negative, everything after is floored.
    f = np.array([1, 0.95, 0.9, 0.7, 0.4, 0.1, -0.05, -0.1, -0.2, -0.1, 0.4, 0.6, 0.5, 0.6, 0.7, 0.8])
    w = filters.fsc_to_wiener(f, freq)
    snr6 = 2 * 0.03 / 0.97  # shell 6 uses the 5-point mean (0.4 + 0.1 − 0.05 − 0.1 − 0.2)/5
    assert w[6] == pytest.approx(max(snr6**2 / (snr6**2 + 1), 0.001))
    assert np.all(w[7:] == 0.001)  # mean of shells 5..9 is negative: dead from shell 7 on
    assert w[3] == pytest.approx((2 * 0.7 / 0.3) ** 2 / ((2 * 0.7 / 0.3) ** 2 + 1))
    # Beyond maxfreq a rising FSC is forced to decay by 0.9 per shell.
    f2 = np.array([0.9, 0.8, 0.85, 0.9, 0.95] + [0.95] * 11)
    w2 = filters.fsc_to_wiener(f2, freq, maxfreq=freq[1])
    fexp = 0.8 * 0.9 ** np.arange(1, 4)
    snr = 2 * fexp / (1 - fexp)
    np.testing.assert_allclose(w2[2:5], snr**2 / (snr**2 + 1))


def test_fsc_weight_filter_limits(rng):
    x = rng.standard_normal((16, 16, 16)).astype(np.float32)
    shells = np.arange(1, 9)
    one = FSCCurve(shells, shells / 16, np.ones(8), np.ones(8, dtype=np.int64))
    np.testing.assert_allclose(filters.fsc_weight_filter(x, one, 2.0), x, atol=1e-4)
    zero = FSCCurve(shells, shells / 16, np.zeros(8), np.ones(8, dtype=np.int64))
    out = filters.fsc_weight_filter(x - x.mean(), zero, 2.0)
    # Only the DC term (kept at 1, here 0) and the first half shell (interpolated) survive.
    hi = filters.highpass_gauss(x - x.mean(), 2.0, 16.0)
    assert np.abs(filters.highpass_gauss(out, 2.0, 16.0)).max() < 0.01 * np.abs(hi).max()


def test_apply_symmetry_direction_and_invariance(rng):
    n = 16
    c = n // 2
    vol = np.zeros((n, n, n), np.float32)
    vol[c, c, c + 3] = 1.0  # at (x, y, z) = (+3, 0, 0)
    rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # +90° about z: x → y
    out = filters.apply_symmetry(vol, np.stack([np.eye(3), rz90]))
    assert out[c, c, c + 3] == pytest.approx(0.5)
    assert out[c, c + 3, c] == pytest.approx(0.5)  # moved to (0, +3, 0)
    blob = filters.lowpass_gauss(rng.standard_normal((n, n, n)).astype(np.float32), 1.0, 4.0)
    c4 = np.stack([np.linalg.matrix_power(rz90, k) for k in range(4)])
    sym = filters.apply_symmetry(blob, c4)
    # The result is invariant under +90° about z: rotated[z, y, x] = sym[z, 2c − x, y] (x ≥ 1).
    Z, Y, X = np.indices(sym.shape)
    rotated = sym[Z, (2 * c - X) % n, Y]
    np.testing.assert_allclose(rotated[:, :, 1:], sym[:, :, 1:], atol=1e-5)
    assert np.abs(sym[:, :, 1:] - blob[:, :, 1:]).max() > 0.1  # and it did change the map


def test_apply_symmetry_keeps_symmetric_real_map(shared_map):
    vol, _ = shared_map("proteasome20S_3j9i_10p48A_box20.mrc.gz")
    ang = 2 * np.pi / 7 * np.arange(7)
    c7 = np.array([[[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]] for a in ang])
    sym = filters.apply_symmetry(vol, c7)
    cc = np.corrcoef(sym.ravel(), vol.ravel())[0, 1]
    assert cc > 0.97  # D7 map: C7 averaging changes it only by interpolation blur
    asym = np.roll(vol, 3, axis=2)
    assert np.corrcoef(filters.apply_symmetry(asym, c7).ravel(), asym.ravel())[0, 1] < cc - 0.1


def test_normalize_by_mass():
    n, apix = 32, 2.0
    from emflow.masks import soft_sphere

    rng = np.random.default_rng(3)
    vol = 3.0 * soft_sphere(n, 6, 4) * (1 + 1e-3 * rng.random((n, n, n))).astype(np.float32)  # no ties
    nvox = 2000
    mass_kda = nvox * filters.PROTEIN_DA_PER_A3 * apix**3 / 1000
    out = filters.normalize_by_mass(vol, apix, mass_kda)
    assert abs(int((out >= 1.0 - 1e-6).sum()) - nvox) <= 1
    assert abs(int((vol >= np.sort(vol.ravel())[-nvox]).sum()) - nvox) == 0
    with pytest.raises(InputError):
        filters.normalize_by_mass(vol, apix, 1e9)
    with pytest.raises(InputError):
        filters.normalize_by_mass(vol, -1.0, 100)
