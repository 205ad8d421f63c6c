"""Template matching: kernels vs. numpy references, FLCF exactness, tiling, and picking
accuracy on a synthetic tomogram with known particles, a missing wedge, gold and noise."""

from __future__ import annotations

import naive_tempmatch as naive
import numba
import numpy as np
import pytest
import scipy.fft
import scipy.ndimage

from emflow.filters import bandpass_profile
from emflow.geometry import random_rotations, tilt_matrix
from emflow.masks import soft_sphere
from emflow.sta import picks as pk
from emflow.sta import tempmatch as tm

TILTS = np.arange(-60.0, 60.1, 3.0)
SNR = 0.1  # signal variance inside particles / noise variance, before the wedge


# ----------------------------------------------------------------------------- helpers


def rotate_scipy(vol: np.ndarray, R: np.ndarray) -> np.ndarray:
    """out(r) = in(R⁻¹ r) about the centre n//2, cubic spline (independent of emflow.rotate)."""
    flip = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    m = flip @ R.T @ flip
    c = np.array(vol.shape) // 2
    return scipy.ndimage.affine_transform(vol, m, offset=c - m @ c, order=3, mode="constant").astype(np.float32)


def binary_wedge(shape, tilt_max_deg: float) -> np.ndarray:
    """rfft-layout mask of the Fourier region a ±tilt_max tilt series about y samples:
    |kz| ≤ tan(tilt_max)·|kx| (frequencies in cycles/px)."""
    kz = scipy.fft.fftfreq(shape[0])[:, None, None]
    kx = scipy.fft.rfftfreq(shape[2])[None, None, :]
    keep = np.abs(kz) <= np.tan(np.deg2rad(tilt_max_deg)) * kx + 1e-9
    return np.broadcast_to(keep, (shape[0], shape[1], shape[2] // 2 + 1)).astype(np.float32)


def make_tomogram(template, snr, rng, shape=(48, 64, 64), tilt_max=60.0, gold=True):
    """Particles (positive density) on two jittered layers + gold beads, dark contrast,
    noise at ``snr`` (signal variance inside particles / noise variance), missing wedge."""
    b = template.shape[0]
    nz, ny, nx = shape
    pos = [(x, y, 16) for x in (16, 32, 48) for y in (16, 32, 48)] + [(x, y, 32) for x in (24, 40) for y in (24, 40)]
    pos = np.array(pos) + rng.integers(-1, 2, size=(len(pos), 3))
    rots = random_rotations(len(pos), rng)
    dens = np.zeros(shape, np.float32)
    for p, R in zip(pos, rots):
        part = rotate_scipy(template, R)
        lo = p[::-1] - b // 2
        dens[lo[0]:lo[0] + b, lo[1]:lo[1] + b, lo[2]:lo[2] + b] += part
    inside = dens > 0.1 * dens.max()
    sig_var = dens[inside].var()
    gold_pos = np.array([[24, 8, 24], [8, 40, 24], [56, 24, 40]])  # (x, y, z), between particles
    if gold:
        zz, yy, xx = np.indices(shape)
        for gx, gy, gz in gold_pos:
            dens += 4 * dens.max() * ((xx - gx) ** 2 + (yy - gy) ** 2 + (zz - gz) ** 2 <= 2)
    noisy = -dens + rng.normal(0, np.sqrt(sig_var / snr), shape).astype(np.float32)
    ft = scipy.fft.rfftn(noisy) * binary_wedge(shape, tilt_max)
    return scipy.fft.irfftn(ft, s=shape).astype(np.float32), pos, rots


@pytest.fixture(scope="module")
def template(request):
    try:
        shared_map = request.getfixturevalue("shared_map")
        vol, apix = shared_map("ribosome70S_4v5d_10p48A_box32.mrc.gz")
        return tm.prepare_template(vol, apix, 2 * apix)  # 16³ at 20.96 Å/px
    except pytest.skip.Exception:
        # Fallback phantom: an asymmetric cluster of Gaussian blobs (clear orientation).
        g = np.indices((16, 16, 16)).astype(np.float32) - 8
        vol = np.zeros((16, 16, 16), np.float32)
        for c, a in (((0, 0, 0), 1.0), ((3, 0, 0), 0.8), ((0, 4, 1), 0.7), ((-2, -2, 3), 0.6)):
            vol += a * np.exp(-((g[2] - c[0]) ** 2 + (g[1] - c[1]) ** 2 + (g[0] - c[2]) ** 2) / 4.0)
        return vol


def wedge_weight(box, apix=20.96):
    w = tm.tilt_weight(box, tilt_matrix(TILTS))
    return w * bandpass_profile(tm.radial_frequency((box,) * 3), apix, 2.5 * apix, None, "cosine", 2.0 / box)


# ----------------------------------------------------------------------------- kernels


def test_tilt_weight_matches_numpy_reference(rng):
    rots = tilt_matrix(rng.uniform(-60, 60, 7), axis_rot=rng.uniform(-90, 90), offtilt=3.0)
    radial = rng.uniform(-1, 1, (7, 13)).astype(np.float32)
    got = tm.tilt_weight(8, rots, radial)
    np.testing.assert_allclose(got, naive.tilt_weight(8, rots, radial), atol=1e-5)


def test_tilt_weight_is_the_missing_wedge():
    """Dense ±60° series about y: 1 inside the wedge, 0 in the missing wedge (beyond the slice width)."""
    box = 32
    w = tm.tilt_weight(box, tilt_matrix(TILTS))
    kz = scipy.fft.fftfreq(box, 1 / box)[:, None, None]
    kx = np.arange(box // 2 + 1)[None, None, :]
    r = np.sqrt(kx**2 + kz**2) + 0 * w
    ang = np.degrees(np.arctan2(np.abs(kz), kx)) + 0 * w  # angle of k from the x axis in the xz plane
    inside = (ang < 55) & (r > 1.5) & (r < 12)  # slices 3° apart overlap below r ≈ 19
    # More than one Fourier pixel (the slice half-width) from the ±60° planes.
    outside = (ang > 60) & (r * np.sin(np.deg2rad(ang - 60)) > 1.0)
    assert np.all(w[inside] > 0.99)
    assert np.all(w[outside] == 0)


@pytest.mark.parametrize("shape,b", [((20, 24, 30), 8), ((8, 25, 27), 8), ((16, 16, 45), 16)])
def test_pruned_template_fft_equals_full_rfftn(rng, shape, b):
    """The pruned forward transform (x over the template's rows, y over its planes, then z) is the
    full rfftn of the zero-padded, wrapped template; odd lengths and a tile axis equal to the box
    included. Its correlation is the full-FFT circular cross-correlation."""
    t = rng.normal(size=(b, b, b)).astype(np.float32)
    full = np.zeros(shape, np.float32)
    full[np.ix_(*(tm._wrapped_index(b, n) for n in shape))] = t
    fft = tm._PrunedTemplateFFT(b, shape, 1)
    want = scipy.fft.rfftn(full.astype(np.float64))
    for _ in range(2):  # the second call must not see the first's buffers
        got = fft(t)
        np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())
        t = rng.normal(size=(b, b, b)).astype(np.float32)
        full[np.ix_(*(tm._wrapped_index(b, n) for n in shape))] = t
        want = scipy.fft.rfftn(full.astype(np.float64))
    tile = rng.normal(size=shape).astype(np.float32)
    tile_ft = scipy.fft.rfftn(tile).astype(np.complex64)
    ref = scipy.fft.irfftn(scipy.fft.rfftn(tile.astype(np.float64)) * np.conj(want), s=shape)
    own = tuple(slice(1, n - 2) for n in shape)
    inv = rng.uniform(0.5, 2, ref[own].shape).astype(np.float32)
    best = np.full(inv.shape, -np.inf, np.float32)
    idx = np.zeros(inv.shape, np.int32)
    acc = np.zeros((2, inv.shape[2]))
    fft.z_block = fft.y_block = 3  # several blocks, the last one short
    fft.correlate_update(t, tile_ft, inv, (1, 1, 1), best, idx, 5, acc)
    np.testing.assert_allclose(best, ref[own] * inv, atol=4e-5 * np.abs(ref).max())
    assert np.all(idx == 5)
    # Ready for the next template: planes off the template zero again (the others are rewritten).
    assert not fft.by[b // 2:shape[0] - b // 2].any()


def test_update_best_matches_numpy(rng):
    cc = rng.normal(size=(6, 7, 8)).astype(np.float32)
    inv = rng.uniform(0, 2, (4, 5, 6)).astype(np.float32)
    inv[0, 0, :3] = 0
    best = np.full(inv.shape, 0.5, np.float32)
    idx = np.zeros(inv.shape, np.int32)
    acc = np.zeros((2, 6))
    tm._update_best(cc, inv, 1, 2, 1, best, idx, 7, acc)
    s = cc[1:5, 2:7, 1:7] * inv
    np.testing.assert_allclose(best, np.maximum(s, 0.5), rtol=1e-6)
    assert np.all((idx == 7) == (s > 0.5))
    np.testing.assert_allclose(acc.sum(1), [s.sum(), (s**2).sum()], rtol=1e-5)


def test_merged_streams_equal_one_pass(rng):
    """Rotations split over streams, each keeping its first maximum, merge into the first maximum
    of one pass over all rotations (ties included: scores quantised so that ties occur)."""
    n_rot, shape = 9, (3, 4, 5)
    ccs = np.round(rng.normal(size=(n_rot,) + shape) * 2).astype(np.float32)
    inv = np.ones(shape, np.float32)
    one = (np.full(shape, -np.inf, np.float32), np.full(shape, -1, np.int32), np.zeros((2, 5)))
    for i in range(n_rot):
        tm._update_best(ccs[i], inv, 0, 0, 0, one[0], one[1], i, one[2])
    parts = []
    for k, idx in enumerate(([0, 3, 4, 8], [1, 2, 5, 6, 7])):
        part = (np.full(shape, -np.inf, np.float32), np.full(shape, -1, np.int32), np.zeros((2, 5)))
        for i in idx:
            tm._update_best(ccs[i], inv, 0, 0, 0, part[0], part[1], i, part[2])
        parts.append(part)
    tm._merge_best(parts[0][0], parts[0][1], parts[1][0], parts[1][1])
    np.testing.assert_array_equal(parts[0][0], one[0])
    np.testing.assert_array_equal(parts[0][1], one[1])
    np.testing.assert_array_equal(one[1], np.argmax(ccs, axis=0))  # numpy: first maximum


def test_threads_give_the_one_thread_result(rng):
    """Two streams of rotations give the scores and indices of one (per-rotation arithmetic is the
    same; the merge keeps the first maximum), several tiles included."""
    tomo = scipy.ndimage.gaussian_filter(rng.normal(size=(20, 40, 44)), 1).astype(np.float32)
    tmpl = rng.normal(size=(8, 8, 8)).astype(np.float32)
    rots = random_rotations(7, rng)
    threads = numba.get_num_threads()
    for tile in (64, 24):
        one = tm.match_template(tomo, tmpl, rots, tile_size=tile, workers=1)
        assert numba.get_num_threads() == threads  # the caller's setting is restored
        two = tm.match_template(tomo, tmpl, rots, tile_size=tile, workers=2)
        np.testing.assert_array_equal(two.scores, one.scores)
        np.testing.assert_array_equal(two.best_index, one.best_index)
        assert two.stats.std == pytest.approx(one.stats.std, rel=1e-9)


def test_tile_layout_partitions_axis():
    for n, tile, margin in ((100, 40, 6), (64, 64, 8), (130, 50, 10)):
        lay = tm.tile_layout(n, tile, margin)
        owned = np.concatenate([np.arange(lo, hi) for _, lo, hi in lay])
        assert np.array_equal(owned, np.arange(n))
        for s, lo, hi in lay:
            assert s + tile <= n or len(lay) == 1
            assert lo >= s + (margin if s > 0 else 0) and hi <= s + tile - (margin if s + tile < n else 0)


# ----------------------------------------------------------------------------- FLCF


def test_flcf_equals_brute_force_masked_pearson(rng):
    """One orientation, no weights: the score map is the masked Pearson correlation."""
    tomo = rng.normal(size=(12, 12, 12)).astype(np.float32)
    tomo += scipy.ndimage.gaussian_filter(tomo, 2) * 5  # non-uniform local variance
    tmpl = rng.normal(size=(8, 8, 8)).astype(np.float32)
    res = tm.match_template(tomo, tmpl, np.eye(3)[None], mask_radius_px=2.0, clamp_sigma=None, workers=1)
    mask = soft_sphere(8, 2.0, 2.0, kind="cosine")
    ref = naive.masked_pearson_map(tomo, tmpl, mask)
    np.testing.assert_allclose(res.scores, ref, atol=2e-5)
    assert np.all(res.best_index == 0)


def test_tiles_reproduce_single_tile(rng):
    tomo = scipy.ndimage.gaussian_filter(rng.normal(size=(20, 40, 44)), 1).astype(np.float32)
    tmpl = rng.normal(size=(8, 8, 8)).astype(np.float32)
    rots = random_rotations(3, rng)
    one = tm.match_template(tomo, tmpl, rots, tile_size=64, workers=1)
    many = tm.match_template(tomo, tmpl, rots, tile_size=24, workers=1)
    inner = (slice(4, -4),) * 3
    np.testing.assert_allclose(many.scores[inner], one.scores[inner], atol=2e-5)
    assert np.mean(many.best_index[inner] == one.best_index[inner]) > 0.999
    assert many.stats.n_rotations == 3
    assert abs(many.stats.std - one.stats.std) < 0.05 * one.stats.std


def test_false_alarm_threshold_on_pure_noise(rng, template):
    """Noise only: at the Rickgauer threshold for 1 false alarm, (almost) nothing is picked."""
    noise = scipy.fft.irfftn(scipy.fft.rfftn(rng.normal(size=(32, 48, 48))) * binary_wedge((32, 48, 48), 60),
                             s=(32, 48, 48)).astype(np.float32)
    b = template.shape[0]
    _, rots = tm.search_orientations("c1", 45.0)
    res = tm.match_template(noise, -template, rots, weight=wedge_weight(b), workers=1)
    thr = pk.false_alarm_threshold(res.stats.mean, res.stats.std, res.stats.n_voxels * res.stats.n_rotations, 1.0)
    found = pk.find_peaks(res.scores, thr, min_distance_px=b / 2, edge_px=b // 2)
    assert len(found) <= 2
    assert abs(res.stats.mean) < 0.2 * res.stats.std


# ----------------------------------------------------------------------------- accuracy


def _search(tomo, template, rots, *, flcf, wedge):
    b = template.shape[0]
    weight = wedge_weight(b) if wedge else None
    return tm.match_template(tomo, -template, rots, weight=weight, local_normalisation=flcf, workers=2)


def _evaluate(res, pos, b, threshold=None):
    if threshold is None:
        threshold = pk.false_alarm_threshold(res.stats.mean, res.stats.std,
                                             res.stats.n_voxels * res.stats.n_rotations, 1.0)
    found = pk.find_peaks(res.scores, threshold, min_distance_px=0.75 * b, edge_px=b // 2,
                          best_index=res.best_index)
    return pk.match_picks(found.xyz, pos, 2.0), found


@pytest.mark.slow
def test_recall_precision_and_flcf_wedge_beats_plain_cc(template, rng):
    """13 ribosomes, 3 gold beads, ±60° wedge, SNR 0.1: FLCF + wedge finds ≥ 90 % of the
    particles within 2 voxels at ≥ 90 % precision (automatic false-alarm threshold), and
    beats an EMAN-like plain CC (global normalisation, no wedge) in F1."""
    b = template.shape[0]
    tomo, pos, true_rots = make_tomogram(template, SNR, rng)
    _, rots = tm.search_orientations("c1", 30.0)
    best = _search(tomo, template, rots, flcf=True, wedge=True)
    plain = _search(tomo, template, rots, flcf=False, wedge=False)
    m_best, found = _evaluate(best, pos, b)
    m_plain, _ = _evaluate(plain, pos, b)
    # Same-size comparison: the top-N peaks of each map (N = number of true particles).
    top = {name: pk.match_picks(pk.find_peaks(r.scores, -1.0, min_distance_px=0.75 * b, edge_px=b // 2,
                                               max_peaks=len(pos)).xyz, pos, 2.0).f1
           for name, r in (("best", best), ("plain", plain))}
    print(f"FLCF+wedge: recall {m_best['recall']:.2f} precision {m_best['precision']:.2f} F1 {m_best['f1']:.2f}; "
          f"plain CC: recall {m_plain['recall']:.2f} precision {m_plain['precision']:.2f} F1 {m_plain['f1']:.2f}; "
          f"top-N F1 {top}")
    assert m_best.recall >= 0.9 and m_best.precision >= 0.9
    assert m_best.f1 > m_plain.f1
    assert top["best"] >= top["plain"]
    # Orientation of the found particles: within one search step (30°, plus symmetry-free c1).
    from emflow.geometry import angle_between

    pairs = m_best.pairs
    err = angle_between(best.rotations[found.rot_index[pairs[:, 0]]], true_rots[pairs[:, 1]])
    assert np.median(err) < 30.0


# ----------------------------------------------------------------------------- angular sampling, memory


def test_angular_step_from_diameter_and_resolution():
    # pytom-match-pick src/pytom_tm/tmjob.py L489-493 (commit 27f5d68):
    # angle_increment = rad2deg(max(2 * voxel_size, low_pass) / particle_diameter)
    assert tm.angular_step_deg(290.0, 30.0) == pytest.approx(np.degrees(30.0 / 290.0))  # ribosome, 15 Å/px: 5.93°
    assert tm.search_step_deg(12.5, apix=10.0, template_box=32) == 12.5
    # auto: resolution = max(2·apix, low-pass); diameter = given, else the mask's (box − 4 px)
    assert tm.search_step_deg("auto", apix=10.0, template_box=32, lowpass_res_a=45.0,
                              particle_diameter_a=250.0) == pytest.approx(np.degrees(45.0 / 250.0))
    assert tm.search_step_deg("auto", apix=10.0, template_box=32, lowpass_res_a=None) == \
        pytest.approx(np.degrees(20.0 / 280.0))
    assert tm.search_step_deg("auto", apix=10.0, template_box=32, mask_radius_px=10.0) == \
        pytest.approx(np.degrees(20.0 / 200.0))
    with pytest.raises(ValueError):
        tm.angular_step_deg(0.0, 20.0)


def _angles_to_set(Q, R):
    tr = np.einsum("nij,mij->nm", Q, R)
    return np.degrees(np.arccos(np.clip((tr.max(axis=1) - 1) / 2, -1, 1)))


@pytest.mark.parametrize("delta", [10.0, 15.0, 20.0, 30.0])
def test_orientation_set_covers_so3_at_its_step_without_redundancy(delta, rng):
    """``delta`` is the grid spacing: nearest neighbours ≈ delta and none closer than 0.95·delta (no
    redundant rotations; EMAN's generator had pairs 0.29–0.43·delta apart), and every rotation lies
    within 0.8·delta of the set (covering radius)."""
    _, R = tm.search_orientations("c1", delta)
    far = _angles_to_set(random_rotations(2000, rng), R)
    assert far.max() < 0.8 * delta  # measured 8.06°, 11.69°, 15.41°, 23.53°
    sub = R[:: max(1, len(R) // 400)]
    tr = np.einsum("nij,mij->nm", sub, R)
    tr[tr > 3 - 1e-9] = -10  # itself
    nn = np.degrees(np.arccos(np.clip((tr.max(axis=1) - 1) / 2, -1, 1)))
    assert nn.min() > 0.95 * delta and np.median(nn) == pytest.approx(delta, rel=0.02)


def test_rotation_count_matches_pytme_at_equal_coverage(rng):
    """pyTME samples by covering radius (Karney's sets; tme/data/metadata.yaml, commit 866fd92:
    c48u83 = 1992 rotations, covering 16.29°, its set for --angular-sampling 15). emflow's 20° grid
    covers as well (15.4°) with no more rotations (1908); the 4416 at a nominal 15° are a finer
    coverage (11.7°), not an oversampled one."""
    _, R20 = tm.search_orientations("c1", 20.0)
    assert len(R20) <= 1992 and _angles_to_set(random_rotations(2000, rng), R20).max() < 16.29
    assert len(tm.search_orientations("c1", 15.0)[1]) == 4416


def test_cn_search_covers_the_asymmetric_unit(rng):
    """C4: a quarter of the c1 set, and every rotation is within the c1 covering radius of some
    ``R·S`` (S a C4 operator) of the C4 set."""
    from emflow.geometry import get_symmetry

    _, R1 = tm.search_orientations("c1", 20.0)
    _, R4 = tm.search_orientations("c4", 20.0)
    assert len(R4) == pytest.approx(len(R1) / 4, rel=0.1)
    S = get_symmetry("c4").matrices
    full = np.einsum("nij,sjk->nsik", R4, S).reshape(-1, 3, 3)
    assert _angles_to_set(random_rotations(1000, rng), full).max() < 0.85 * 20.0  # measured 16.0°


def test_search_memory_does_not_grow_with_rotations(rng):
    """One tile: no rotated template is kept (each is used once); several tiles: the cache of
    templates is capped at one tile's FT. Peak traced memory is flat in the rotation count."""
    import tracemalloc

    tomo = rng.normal(size=(24, 32, 32)).astype(np.float32)
    tmpl = rng.normal(size=(16, 16, 16)).astype(np.float32)
    peaks = {}
    for tile in (64, 24):
        for n in (10, 80):
            rots = random_rotations(n, rng)
            tm.match_template(tomo, tmpl, rots[:2], tile_size=tile, workers=1)  # warm-up (numba)
            tracemalloc.start()
            tm.match_template(tomo, tmpl, rots, tile_size=tile, workers=1)
            peaks[tile, n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    template_bytes = 4 * 16**3
    # 70 more templates would be 70 × 16 KiB = 1.1 MiB if they were kept
    assert peaks[64, 80] - peaks[64, 10] < 10 * template_bytes
    tile_ft_bytes = 8 * 24 * 24 * 13
    assert peaks[24, 80] - peaks[24, 10] < tile_ft_bytes + 10 * template_bytes
