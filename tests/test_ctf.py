"""Tests of emflow.ctf against hand-computed optics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.fft

from emflow.ctf import (
    CTF,
    ctf_1d,
    ctf_2d,
    ctf_2d_stack,
    ctf_weighted_average,
    ctf_zeros,
    dose_weight,
    electron_wavelength_a,
    phase_flip,
    wiener_filter,
)
from emflow.errors import InputError


def test_wavelength_known_values():
    assert electron_wavelength_a(300) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength_a(200) == pytest.approx(0.025079, abs=2e-6)
    assert electron_wavelength_a(100) == pytest.approx(0.037014, abs=2e-6)
    # Non-relativistic λ = 12.2643/√V Å is longer than the relativistic value.
    assert electron_wavelength_a(300) < 12.2643 / np.sqrt(300e3)


def _hand_zeros(df_um, kv, cs_mm, amp, n):
    """Zeros of χ(s) = π λ Δf s² − π/2 Cs λ³ s⁴ + asin(A) = kπ, by np.roots per k (rising branch)."""
    lam = 12.2643 / np.sqrt(kv * 1e3 * (1 + 0.978466e-6 * kv * 1e3))
    out = []
    for k in range(1, n + 1):
        roots = np.roots([-np.pi / 2 * cs_mm * 1e7 * lam**3, np.pi * lam * df_um * 1e4, np.arcsin(amp) - k * np.pi])
        u = min(r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 0)
        out.append(np.sqrt(u))
    return np.array(out)


def test_ctf_zeros_at_analytic_positions():
    c = CTF(defocus_um=2.0, voltage_kv=300, cs_mm=2.7, ampcont=0.1)
    z = ctf_zeros(c, 5)
    np.testing.assert_allclose(z, _hand_zeros(2.0, 300, 2.7, 0.1, 5), rtol=1e-5)
    # First zero of 2 µm at 300 kV is near 1/20 Å⁻¹.
    assert 19.5 < 1 / z[0] < 20.5
    np.testing.assert_allclose(ctf_1d(c, z), 0.0, atol=1e-9)
    # Sign changes bracket every zero.
    assert np.all(np.sign(ctf_1d(c, z * 0.995)) != np.sign(ctf_1d(c, z * 1.005)))
    # Without Cs the zeros are √((kπ − asin A)/(π λ Δf)).
    c0 = dataclasses.replace(c, cs_mm=0.0)
    k = np.arange(1, 4)
    np.testing.assert_allclose(
        ctf_zeros(c0, 3), np.sqrt((k * np.pi - np.arcsin(0.1)) / (np.pi * c.wavelength_a * 2e4)), rtol=1e-10
    )


def test_ctf_2d_layout_matches_1d_and_astigmatism():
    apix, n = 1.5, 64
    c = CTF(defocus_um=1.5, bfactor=50.0)
    c2 = ctf_2d(c, (n, n), apix)
    assert c2.shape == (n, n // 2 + 1) and c2.dtype == np.float32
    ky = np.fft.fftfreq(n, apix)[:, None]
    kx = np.fft.rfftfreq(n, apix)[None, :]
    np.testing.assert_allclose(c2, ctf_1d(c, np.sqrt(kx**2 + ky**2)), atol=1e-6)
    full = ctf_2d(c, (n, n), apix, rfft=False)
    assert full.shape == (n, n)
    np.testing.assert_allclose(full[:, : n // 2 + 1], c2, atol=1e-7)
    # B-factor envelope exp(−B s²/4).
    s = np.array([0.05, 0.1, 0.2])
    ratio = ctf_1d(c, s) / ctf_1d(dataclasses.replace(c, bfactor=0.0), s)
    np.testing.assert_allclose(ratio, np.exp(-50.0 * s**2 / 4), rtol=1e-10)
    # Astigmatism: along dfang the defocus is df + dfdiff/2, perpendicular df − dfdiff/2.
    ca = CTF(defocus_um=2.0, dfdiff_um=0.4, dfang_deg=90.0)
    ast = ctf_2d(ca, (n, n), apix)
    along_y = ast[1:12, 0]  # kx = 0, ky > 0: θ = 90°
    along_x = ast[0, 1:12]  # ky = 0: θ = 0°
    sy = np.fft.fftfreq(n, apix)[1:12]
    np.testing.assert_allclose(along_y, ctf_1d(CTF(2.2), sy), atol=1e-6)
    np.testing.assert_allclose(along_x, ctf_1d(CTF(1.8), sy), atol=1e-6)
    np.testing.assert_allclose(ctf_1d(ca, sy, angle_deg=90.0), ctf_1d(CTF(2.2), sy), atol=1e-12)


def _blob(n, sigma_px):
    y, x = np.mgrid[:n, :n] - n // 2
    return np.exp(-(x**2 + y**2) / (2 * sigma_px**2)).astype(np.float32)


def _apply_ctf(img, c, apix):
    ft = scipy.fft.rfft2(scipy.fft.ifftshift(img))
    return scipy.fft.fftshift(scipy.fft.irfft2(ft * ctf_2d(c, img.shape, apix), s=img.shape))


def test_sign_convention_positive_object_is_dark_in_underfocus():
    n, apix = 64, 2.0
    obj = _blob(n, 4.0)
    under = _apply_ctf(obj, CTF(defocus_um=2.0), apix)
    over = _apply_ctf(obj, CTF(defocus_um=-2.0), apix)
    assert under[n // 2, n // 2] < -0.1 * obj.max()  # dark, as in real micrographs
    assert over[n // 2, n // 2] > 0
    assert ctf_1d(CTF(2.0), 0.0) == pytest.approx(-0.1)  # CTF(0) = −A


def test_phase_flip_properties(rng):
    n, apix = 48, 2.0
    c = CTF(defocus_um=1.2)
    img = rng.standard_normal((n, n)).astype(np.float32)
    twice = phase_flip(phase_flip(img, c, apix), c, apix)
    np.testing.assert_allclose(twice, img, atol=1e-5)
    # Flipping a CTF-modulated image leaves |CTF|·F: every coefficient has the object's phase.
    modulated = _apply_ctf(img, c, apix)
    flipped = phase_flip(modulated, c, apix)
    f_obj = scipy.fft.rfft2(scipy.fft.ifftshift(img))
    f_flip = scipy.fft.rfft2(scipy.fft.ifftshift(flipped))
    expect = f_obj * np.abs(ctf_2d(c, (n, n), apix))
    np.testing.assert_allclose(f_flip, expect, atol=2e-3 * np.abs(expect).max())
    # Per-image CTFs on a stack equal single-image calls.
    stack = rng.standard_normal((3, n, n)).astype(np.float32)
    ctfs = [CTF(1.0), CTF(1.5), CTF(2.5)]
    out = phase_flip(stack, ctfs, apix)
    for i in range(3):
        np.testing.assert_allclose(out[i], phase_flip(stack[i], ctfs[i], apix), atol=1e-5)
    np.testing.assert_allclose(ctf_2d_stack(ctfs, (n, n), apix)[1], ctf_2d(ctfs[1], (n, n), apix))


def test_wiener_filter_restores_object_where_ctf_is_strong(rng):
    n, apix = 64, 2.0
    c = CTF(defocus_um=1.0)
    img = rng.standard_normal((n, n)).astype(np.float32)
    restored = wiener_filter(_apply_ctf(img, c, apix), c, apix, snr=1e4)
    f0 = scipy.fft.rfft2(scipy.fft.ifftshift(img))
    fr = scipy.fft.rfft2(scipy.fft.ifftshift(restored))
    strong = np.abs(ctf_2d(c, (n, n), apix)) > 0.3
    np.testing.assert_allclose(fr[strong], f0[strong], atol=1e-2 * np.abs(f0).max())
    # Low SNR shrinks the result.
    weak = wiener_filter(_apply_ctf(img, c, apix), c, apix, snr=lambda s: np.full_like(s, 0.1))
    assert weak.std() < restored.std()


def test_ctf_weighted_average_fills_zeros(rng):
    """Several defoci averaged with CTF weights recover the object, including at single-CTF zeros."""
    n, apix = 64, 2.0
    obj = rng.standard_normal((n, n)).astype(np.float32)
    ctfs = [CTF(d) for d in (0.8, 1.3, 1.9, 2.6)]
    imgs = np.stack([_apply_ctf(obj, c, apix) for c in ctfs])
    avg = ctf_weighted_average(imgs, ctfs, apix, snr=1e4)
    f0 = scipy.fft.rfft2(scipy.fft.ifftshift(obj))
    fa = scipy.fft.rfft2(scipy.fft.ifftshift(avg))
    c2 = (ctf_2d_stack(ctfs, (n, n), apix) ** 2).sum(0)
    ok = c2 > 0.2
    assert ok.mean() > 0.9
    np.testing.assert_allclose(fa[ok], f0[ok], atol=1e-2 * np.abs(f0).max())
    # At the first zero of the 1.3 µm CTF the average still carries the object.
    z = ctf_zeros(ctfs[1], 1)[0]
    k = int(round(z * n * apix))
    assert abs(fa[0, k] - f0[0, k]) < 0.05 * abs(f0[0, k]) + 1e-2 * np.abs(f0).max()


def test_dose_weight_grant_grigorieff():
    n, apix = 64, 1.0
    w = dose_weight((n, n), apix, 20.0)
    assert w.shape == (n, n // 2 + 1) and w[0, 0] == 1.0
    s = np.fft.rfftfreq(n, apix)[10]
    ne = 0.245 * s**-1.665 + 2.81
    assert w[0, 10] == pytest.approx(np.exp(-20.0 / (2 * ne)), rel=1e-5)
    # More exposure attenuates more; 200 kV has 0.8× the critical exposure of 300 kV.
    ws = dose_weight((n, n), apix, np.array([0.0, 10.0, 40.0]))
    assert ws.shape == (3, n, n // 2 + 1)
    assert np.all(ws[0] == 1) and np.all(ws[2] <= ws[1] + 1e-7)
    w200 = dose_weight((n, n), apix, 20.0, voltage_kv=200)
    assert w200[0, 10] == pytest.approx(np.exp(-20.0 / (2 * 0.8 * ne)), rel=1e-5)


def test_bad_input_raises():
    with pytest.raises(InputError):
        CTF(defocus_um=1.0, ampcont=10.0)  # percent instead of fraction
    with pytest.raises(InputError):
        dose_weight((8, 8), 1.0, -1.0)
