"""Tests for emflow.reconstruct: insertion kernels vs numpy reference, round trips, merging."""

from __future__ import annotations

import naive_fourier as naive
import numpy as np
import pytest

from emflow import fourier, projection
from emflow.fsc import fsc
from emflow.geometry import eman_to_matrix, random_rotations
from emflow.reconstruct import Reconstructor, reconstruct
from emflow.rotate import rotate_volume


def _fsc_at(a, b, frac):
    """Minimum FSC over shells up to ``frac`` of Nyquist (shell 0 excluded)."""
    c = fsc(a, b)
    sel = (c.freq > 0) & (c.freq <= 0.5 * frac + 1e-9)
    return float(c.fsc[sel].min())


@pytest.fixture(scope="module")
def ribo32(shared_data):
    import mrcfile

    with mrcfile.open(shared_data / "ribosome70S_4v5d_10p48A_box32.mrc.gz") as m:
        return np.asarray(m.data, dtype=np.float32).copy()


@pytest.fixture(scope="module")
def dense(ribo32):
    """3000 uniformly random projections of the 32³ ribosome (ground truth known)."""
    R = random_rotations(3000, np.random.default_rng(7))
    return R, projection.project(ribo32, R)


# ---------------------------------------------------------------------------- reference

@pytest.mark.parametrize("kernel", ["trilinear", "gauss_2", "nearest"])
@pytest.mark.parametrize("strategy", ["slab", "private"])
def test_insertion_matches_naive_full_grid(rng, kernel, strategy):
    b, N = 8, 16
    img = rng.standard_normal((2, b, b)).astype(np.float32)
    R = random_rotations(2, rng)
    R[1] = np.eye(3)  # grid-aligned slice: exercises the x=0 plane and the origin
    rec = Reconstructor(b, pad=2, kernel=kernel, strategy=strategy)
    rec.insert(img, R, weights=[1.0, 0.5])
    F, W = rec.hermitian_sums()
    S = rec.slices_from_images(img)
    Ff = np.zeros((N, N, N), complex)
    Wf = np.zeros((N, N, N))
    for i, w in enumerate([1.0, 0.5]):
        a, bw = naive.insert_full(S[i], R[i], N, kernel, w)
        Ff += a
        Wf += bw
    c = N // 2
    # the half volume (x >= 0) of the full-grid reference. Skipped: the x = N/2 plane (outside
    # the full grid) and the ±N/2 rows in y, z, which the periodic half volume identifies with
    # each other while the reference grid does not (both lie beyond the insertion radius).
    sl = (slice(1, None), slice(1, None))
    np.testing.assert_allclose(F[sl][:, :, :c], Ff[sl][:, :, c:], atol=1e-4 * np.abs(Ff).max())
    np.testing.assert_allclose(W[sl][:, :, :c], Wf[sl][:, :, c:], atol=1e-5 * Wf.max())
    assert W.sum() > 0.99 * Wf[:, :, c:].sum()


def test_slab_and_private_strategies_agree(rng):
    img = rng.standard_normal((20, 16, 16)).astype(np.float32)
    R = random_rotations(20, rng)
    a = Reconstructor(16, strategy="slab", sym=eman_to_matrix([0, 120, 240], 0, 0))
    b = Reconstructor(16, strategy="private", sym=eman_to_matrix([0, 120, 240], 0, 0))
    a.insert(img, R)
    b.insert(img, R)
    np.testing.assert_allclose(a.F, b.F, atol=1e-4 * np.abs(a.F).max())
    np.testing.assert_allclose(a.W, b.W, atol=1e-5 * a.W.max())


# ---------------------------------------------------------------------------- physics

@pytest.mark.parametrize("kernel", ["trilinear", "gauss_2", "nearest"])
def test_dense_projections_reconstruct_the_map(ribo32, dense, kernel):
    R, proj = dense
    out = reconstruct(proj, R, kernel=kernel)
    assert out.shape == (32, 32, 32) and out.dtype == np.float32
    assert _fsc_at(out, ribo32, 0.8) > 0.99
    if kernel != "nearest":
        assert _fsc_at(out, ribo32, 0.9) > 0.98
    assert out.sum() == pytest.approx(ribo32.sum(), rel=0.05)  # gridding correction: +4 %
    # real-space agreement after removing what insertion cannot see (|k| > N/2 - 1 → 0.48 cyc/px)
    lp = lambda v: fourier.ift(np.where(fourier.radius_grid(v.shape) < 0.4, fourier.ft(v), 0), v.shape)
    err = np.linalg.norm(lp(out) - lp(ribo32)) / np.linalg.norm(lp(ribo32))
    assert err < (0.05 if kernel != "nearest" else 0.08)


def test_gridding_correction_improves_low_resolution(ribo32, dense):
    R, proj = dense
    rec = Reconstructor(32)
    rec.insert(proj[:1500], R[:1500])
    on = rec.finish(gridding_correct=True)
    off = rec.finish(gridding_correct=False)
    assert _fsc_at(on, ribo32, 0.5) > _fsc_at(off, ribo32, 0.5)
    assert np.linalg.norm(on - ribo32) < np.linalg.norm(off - ribo32)


def test_wiener_shrinks_noise(ribo32, dense):
    R, proj = dense
    R, proj = R[:600], proj[:600]
    rng = np.random.default_rng(3)
    sigma = 2.0 * proj.std()
    noisy = proj + rng.normal(0, sigma, proj.shape).astype(np.float32)
    snr = 0.05  # per-image weight ≈ SNR so that F/(W+1) is the Wiener estimate
    plain = reconstruct(noisy, R, weights=np.full(600, snr))
    wien = reconstruct(noisy, R, weights=np.full(600, snr), wiener=True)
    err = lambda v: np.linalg.norm(v - ribo32)
    assert err(wien) < 0.8 * err(plain)
    # with very high weights (noise-free data), the Wiener form converges to the plain one
    a = reconstruct(proj, R, weights=np.full(600, 1e4), wiener=True)
    b = reconstruct(proj, R, weights=np.full(600, 1e4))
    assert np.linalg.norm(a - b) < 1e-2 * np.linalg.norm(b)


def test_merge_equals_single_and_save_load(ribo32, dense, tmp_path):
    R, proj = dense
    R, proj = R[:200], proj[:200]
    one = Reconstructor(32, kernel="gauss_2")
    one.insert(proj, R)
    h1 = Reconstructor(32, kernel="gauss_2")
    h2 = Reconstructor(32, kernel="gauss_2")
    h1.insert(proj[::2], R[::2])
    h2.insert(proj[1::2], R[1::2])
    path = tmp_path / "part.npz"
    h2.save(path)
    merged = h1.merge(Reconstructor.load(path))
    assert merged.n_inserted == 200
    np.testing.assert_allclose(merged.F, one.F, atol=1e-4 * np.abs(one.F).max())
    np.testing.assert_allclose(merged.finish(), one.finish(), atol=1e-4 * np.abs(one.finish()).max())
    with pytest.raises(ValueError):
        merged.merge(Reconstructor(32, kernel="trilinear"))


def test_symmetry_insertion_cn(ribo32):
    # make an exactly C4-symmetric map (90° turns about z are exact voxel permutations)
    Rz = eman_to_matrix(np.array([0.0, 90.0, 180.0, 270.0]), 0, 0)
    sym_map = np.mean([rotate_volume(ribo32, m) for m in Rz], axis=0)
    # view directions from one quarter of azimuths on the equatorial band only (alt 50-90°):
    # their slices leave a large region of Fourier space empty that the C4 copies fill
    rng = np.random.default_rng(11)
    n = 400
    alt = np.degrees(np.arccos(rng.uniform(0, np.cos(np.radians(50)), n)))
    R = eman_to_matrix(rng.uniform(0, 90, n), alt, rng.uniform(0, 360, n))
    proj = projection.project(sym_map, R)
    c4 = reconstruct(proj, R, sym=Rz)
    c1 = reconstruct(proj, R)
    assert _fsc_at(c4, sym_map, 0.8) > 0.98
    assert _fsc_at(c4, sym_map, 0.8) > _fsc_at(c1, sym_map, 0.8) + 0.02
    # the named group gives the same operators as the explicit matrices
    np.testing.assert_allclose(reconstruct(proj[:50], R[:50], sym="c4"),
                               reconstruct(proj[:50], R[:50], sym=Rz), atol=1e-4)


def test_shifted_images_recover_unshifted_map(ribo32, dense):
    R, proj = dense
    R, proj = R[:1500], proj[:1500]
    t = np.random.default_rng(5).uniform(-3, 3, (1500, 2))
    shifted = fourier.shift(proj, t)  # image content moved by +t (the xform.projection translation)
    good = reconstruct(shifted, R, shifts=t)
    bad = reconstruct(shifted, R)
    assert _fsc_at(good, ribo32, 0.8) > 0.99
    assert _fsc_at(bad, ribo32, 0.8) < 0.9


def test_ctf_weighted_insertion_recovers_map(ribo32, dense):
    # images modulated by a CTF-like function with zeros; CTF-weighted insertion
    # (F += c·D, W += c²) restores the map where the varying defoci cover each other's zeros
    R, proj = dense
    R, proj = R[:1500], proj[:1500]
    rec = Reconstructor(32)
    N = rec.n_pad
    k2 = fourier.radius_grid((N, N)) ** 2
    rng = np.random.default_rng(9)
    a = rng.uniform(10, 30, 1500)  # "defocus" per image (PSF stays inside the padded box)
    ctf = -np.sin(a[:, None, None] * k2[None] + 0.1).astype(np.float32)
    S = rec.slices_from_images(proj) * ctf
    rec.insert_ft(S, R, ctf=ctf)
    out = rec.finish()
    # the weighted average favours large-|c| neighbours, a small bias where c ≈ 0.1 (low k)
    assert _fsc_at(out, ribo32, 0.8) > 0.95
    # inserting the modulated data without the CTF weights does not restore it
    plain = Reconstructor(32)
    plain.insert_ft(S, R)
    assert _fsc_at(plain.finish(), ribo32, 0.8) < 0.9


def test_ctf_insertion_amplitudes_data_c_weights_c2_times_image_weight(ribo32, dense):
    # the FSC test above cannot see amplitudes: with per-pixel CTF c and image weight w the data
    # accumulator must get w·c·S and the weights w·c² (RELION backprojector: data·CTF, weight CTF²),
    # i.e. exactly w·c and w·c² times a plain insertion of the same slices (c = 0.5, w = 2 here)
    R, proj = dense
    plain, weighted = Reconstructor(32), Reconstructor(32)
    S = plain.slices_from_images(proj[:20])
    N = plain.n_pad
    plain.insert_ft(S, R[:20])
    weighted.insert_ft(S, R[:20], weights=np.full(20, 2.0), ctf=np.full((N, N // 2 + 1), 0.5, np.float32))
    np.testing.assert_allclose(weighted.F, 2.0 * 0.5 * plain.F, rtol=1e-4, atol=1e-4 * np.abs(plain.F).max())
    np.testing.assert_allclose(weighted.W, 2.0 * 0.25 * plain.W, rtol=1e-4, atol=1e-6)


def test_reconstructor_rejects_bad_input():
    with pytest.raises(ValueError):
        Reconstructor(31)
    with pytest.raises(ValueError):
        Reconstructor(32, kernel="bicubic")
    rec = Reconstructor(16)
    with pytest.raises(ValueError):
        rec.insert(np.zeros((2, 16, 16)), np.eye(3)[None].repeat(3, 0))
    with pytest.raises(ValueError):
        rec.insert(np.zeros((1, 8, 8)), np.eye(3))
