"""Comparators and 2D aligners of the e2refine loop (emflow.spa.cmp, emflow.spa.align2d, emflow.spa.refine2d)."""

from __future__ import annotations

import numpy as np
import pytest
from naive_spa import frc_score, transform_image

from emflow.errors import InputError
from emflow.spa import align2d, cmp, refine2d


def _test_image(n=48):
    """An asymmetric 2D density (no rotational or mirror symmetry)."""
    yy, xx = np.indices((n, n)) - n // 2

    def blob(cx, cy, s, a):
        return a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))

    return (blob(0, 0, 6, 1) + blob(8, 3, 3, 1.5) + blob(-5, -9, 2.5, 2) + blob(3, -6, 2, 1)).astype(np.float32)


def test_parse_cmp_defaults_and_errors():
    name, opts = cmp.parse_cmp("frc:zeromask=1:snrweight=1")
    assert name == "frc" and opts["zeromask"] == 1 and opts["snrweight"] == 1 and opts["maxres"] == 8.0
    with pytest.raises(InputError, match="no option"):
        cmp.parse_cmp("ccc:bogus=1", "spa.simcmp")
    with pytest.raises(InputError, match="unknown comparator"):
        cmp.parse_cmp("nope")


@pytest.mark.parametrize("spec", ["ccc", "dot", "dot:normalize=1", "sqeuclidean", "sqeuclidean:normto=1",
                                  "frc", "frc:zeromask=1:snrweight=1", "phase"])
def test_comparators_prefer_matching_pair(spec, rng):
    img = _test_image()
    noisy = img + rng.normal(0, img.std(), (20,) + img.shape).astype(np.float32)
    other = np.roll(img, 7, axis=1)[None].repeat(20, 0)
    match = cmp.compare(noisy, np.broadcast_to(img, noisy.shape), spec, snr=np.ones(24), apix=4.0)
    wrong = cmp.compare(noisy, other, spec, snr=np.ones(24), apix=4.0)
    assert match.shape == (20,) and np.all(match < wrong)


def test_ccc_and_frc_values_against_numpy(rng):
    a = rng.normal(size=(3, 32, 32)).astype(np.float32)
    b = (a + rng.normal(size=a.shape)).astype(np.float32)
    ref = [-np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    np.testing.assert_allclose(cmp.ccc(a, b), ref, rtol=1e-5)
    np.testing.assert_allclose(cmp.frc(a, b), [frc_score(x, y) for x, y in zip(a, b)], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cmp.ccc(a, a), -1.0, atol=1e-6)


def test_transform_kernel_matches_naive_and_composition(rng):
    img = _test_image(32)
    params = (37.0, 2.5, -1.25, 1.0)
    out = align2d.transform_images(img[None], *[np.array([p]) for p in params])[0]
    np.testing.assert_allclose(out, transform_image(img, *params), atol=1e-5)
    # T2∘T1 applied at once equals applying T1 then T2 (away from interpolation-blurred edges)
    t1, t2 = (30.0, 1.0, 2.0, 0.0), (-50.0, -2.0, 1.0, 1.0)
    both = align2d.transform_images(img[None], *align2d.compose_params(t2, t1))[0]
    inv = align2d.transform_images(both[None], *align2d.invert_params(*align2d.compose_params(t2, t1)))[0]
    assert -cmp.ccc(inv, img) > 0.99


def test_rotate_translate_flip_recovers_known_transforms(rng):
    """At SNR 1 (signal variance = noise variance) the footprint aligner finds α within 4°,
    the exact integer shift and the mirror flag; refine brings α within 2.5° and t within 0.35 px."""
    img = _test_image()
    n = 30
    alpha = rng.uniform(0, 360, n)
    tx, ty = rng.integers(-4, 5, n).astype(float), rng.integers(-4, 5, n).astype(float)
    mirror = rng.integers(0, 2, n).astype(float)
    targets = align2d.transform_images(img[None], alpha, tx, ty, mirror, index=np.zeros(n, int))
    targets += rng.normal(0, img.std(), targets.shape).astype(np.float32)
    res = align2d.rotate_translate_flip(img[None], targets, np.zeros(n, int), np.arange(n))
    dalpha = (res["alpha"] - alpha + 180) % 360 - 180
    assert np.all(res["mirror"] == mirror)
    assert np.max(np.abs(dalpha)) < 4.0
    assert np.all(res["tx"] == tx) and np.all(res["ty"] == ty)
    ref = refine2d.refine(img[None], targets, np.zeros(n, int), np.arange(n), res)
    dalpha = (ref["alpha"] - alpha + 180) % 360 - 180
    assert np.sqrt(np.mean(dalpha**2)) < 1.5 and np.max(np.abs(dalpha)) < 2.5
    assert np.max(np.abs(ref["tx"] - tx)) < 0.35 and np.max(np.abs(ref["ty"] - ty)) < 0.35


@pytest.mark.parametrize("kind, normalize", [(0, 0), (1, 0), (1, 1), (2, 0)])
def test_refine_kernel_takes_the_lockstep_nelder_mead_steps(kind, normalize, rng):
    """The fused kernel (each pair's simplex to convergence in one call) and the lockstep rounds
    (one batched objective call per simplex move) are the same algorithm: equal results, bit for bit,
    for ccc, dot, dot:normalize=1 and sqeuclidean."""
    img = _test_image()
    n = 40
    truth = (rng.uniform(-8, 8, n), rng.uniform(-2, 2, n), rng.uniform(-2, 2, n))
    targets = align2d.transform_images(img[None], *truth, np.zeros(n), index=np.zeros(n, int))
    targets += rng.normal(0, 0.5 * img.std(), targets.shape).astype(np.float32)
    start = np.stack([truth[0] + rng.normal(0, 3, n), truth[1] + rng.normal(0, 0.7, n),
                      truth[2] + rng.normal(0, 0.7, n)], axis=1)
    mi, ti = np.zeros(n, np.int64), np.arange(n)
    tsum, tsq = refine2d.target_sums(targets)

    def objective(idx, pts):
        out = np.empty(len(idx))
        refine2d._objective_batch(img[None], targets, tsum, tsq, mi[idx], ti[idx], np.ascontiguousarray(pts), kind,
                                  normalize, out)
        return out

    best, fbest, fstart = refine2d.nm_minimize(objective, start, 60)
    kbest, kfbest, kfstart, nevals = refine2d.refine_kernel(img[None], targets, mi, ti, start, kind, normalize, 60)
    np.testing.assert_array_equal(kbest, best)
    np.testing.assert_array_equal(kfbest, fbest)
    np.testing.assert_array_equal(kfstart, fstart)
    assert np.all(nevals >= 4) and np.all(kfbest <= kfstart)
    if kind == 0:  # ccc: the simplex lands on the true transform (SNR 4)
        assert np.max(np.abs(kbest[:, 0] - truth[0])) < 1.5
        assert np.max(np.abs(kbest[:, 1] - truth[1])) < 0.3 and np.max(np.abs(kbest[:, 2] - truth[2])) < 0.3


def test_refine_objective_matches_numpy(rng):
    """The real-space objective (incremental sampling, precomputed target sums) equals ccc, dot and
    sqeuclidean of the image transformed by transform_images, computed with numpy."""
    img = _test_image()
    tgt = (img + rng.normal(0, img.std(), img.shape)).astype(np.float32)
    tsum, tsq = refine2d.target_sums(tgt[None])
    for p in ([17.0, 1.3, -0.7], [200.0, -2.2, 0.4], [0.0, 0.0, 0.0]):
        moved = align2d.transform_images(img[None], *p, 0.0)[0].astype(np.float64)
        t = tgt.astype(np.float64)
        a, b = moved - moved.mean(), t - t.mean()
        want = {0: -(a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()), 1: -(moved * t).sum() / t.size,
                2: ((moved - t) ** 2).sum() / t.size}
        for kind, value in want.items():
            got = refine2d._objective(img, tgt, np.array(p), kind, 0, tsum[0], tsq[0])
            assert got == pytest.approx(value, rel=1e-5, abs=1e-6)


@pytest.fixture(scope="module")
def proteasome_view():
    """``(image, apix)``: an oblique projection (az 30°, alt 55°, phi 10°) of the bundled 20S
    proteasome map, box 48 at 4.37 Å/px, normalised like e2refine's reference projections."""
    import mrcfile

    from emflow.demo.data import __file__ as data_init
    from emflow.demo.simulate import resample_map
    from emflow.spa.refine_loop import project3d

    with mrcfile.open(data_init.replace("__init__.py", "proteasome20S_3j9i_2p62A_box80.mrc.gz")) as m:
        vol, ap = np.asarray(m.data, np.float32), float(m.voxel_size.x)
    apix = ap * vol.shape[-1] / 48
    return project3d(resample_map(vol, ap, apix, box=48), np.array([[30.0, 55.0, 10.0]]))[0], apix


def _misaligned_copies(img, rng, n, noise):
    """``n`` noisy copies of ``img`` rotated by ±4°, shifted 1.3 px in random directions, every
    second one x-mirrored; returns the copies and the true ``(alpha, tx, ty, mirror)``."""
    alpha = rng.choice([-4.0, 4.0], n)
    phi = rng.uniform(0, 2 * np.pi, n)
    truth = (alpha, 1.3 * np.cos(phi), 1.3 * np.sin(phi), (np.arange(n) % 2).astype(float))
    copies = align2d.transform_images(img[None], *truth, index=np.zeros(n, int))
    return copies + rng.normal(0, noise * img.std(), copies.shape).astype(np.float32), truth


@pytest.mark.parametrize("spec", ["frc", "phase", "frc:zeromask=1:snrweight=1"])
def test_refine_with_fourier_comparators_recovers_small_misalignment(spec, proteasome_view, rng):
    """refine with frc/phase from the unaligned start (mirror flag given) against 8 copies of a
    projection (noise σ = 0.35 × image σ) rotated 4° and shifted 1.3 px: every α within 2° and t
    within 0.5 px of the truth (rms 1.2° / 0.3 px), and every score better than the start's."""
    img, apix = proteasome_view
    n = 8
    targets, (alpha, tx, ty, mirror) = _misaligned_copies(img, rng, n, 0.35)
    zero = np.zeros(n)
    snr = np.broadcast_to(10.0 * np.exp(-np.arange(24) / 8.0), (n, 24))  # a CTF-like falling SNR
    mi, ti = np.zeros(n, int), np.arange(n)
    res = refine2d.refine(img[None], targets, mi, ti, {"alpha": zero, "tx": zero, "ty": zero, "mirror": mirror},
                          cmp=spec, snr=snr, apix=apix)
    dalpha = np.abs((res["alpha"] - alpha + 180) % 360 - 180)
    dt = np.hypot(res["tx"] - tx, res["ty"] - ty)
    assert np.all(res["mirror"] == mirror)
    assert np.max(dalpha) < 2.0 and np.sqrt(np.mean(dalpha**2)) < 1.2, dalpha
    assert np.max(dt) < 0.5 and np.sqrt(np.mean(dt**2)) < 0.3, dt
    start = cmp.compare(align2d.transform_images(img[None], zero, zero, zero, mirror, index=mi), targets, spec,
                        snr=snr, apix=apix)
    assert np.all(res["score"] < start), (res["score"], start)


def test_refine_score_is_the_comparator_of_its_result(proteasome_view, rng):
    """The score refine returns is cmp.compare of the refined image against the target with the
    caller's snr and apix (they reach the objective: without them the score would differ)."""
    img, apix = proteasome_view
    n = 4
    targets, truth = _misaligned_copies(img, rng, n, 0.5)
    spec = "frc:snrweight=1:maxres=12"
    snr = np.broadcast_to(10.0 * np.exp(-np.arange(24) / 4.0), (n, 24))
    init = {"alpha": truth[0] + 1.0, "tx": np.round(truth[1]), "ty": np.round(truth[2]), "mirror": truth[3]}
    res = refine2d.refine(img[None], targets, np.zeros(n, int), np.arange(n), init, cmp=spec, snr=snr, apix=apix)
    moved = align2d.transform_images(img[None], res["alpha"], res["tx"], res["ty"], res["mirror"],
                                     index=np.zeros(n, int))
    np.testing.assert_allclose(res["score"], cmp.compare(moved, targets, spec, snr=snr, apix=apix), rtol=1e-6)
    assert np.all(np.abs(res["score"] - cmp.compare(moved, targets, spec, apix=apix)) > 1e-3)
    assert np.all(np.abs(res["score"] - cmp.compare(moved, targets, spec, snr=snr)) > 1e-3)


def test_refine_comparator_errors_name_the_key():
    from emflow.spa.classaverage import ClassAverageOptions
    from emflow.spa.simmx import SimmxOptions

    img = _test_image(32)
    init = {"alpha": np.zeros(1), "tx": np.zeros(1), "ty": np.zeros(1), "mirror": np.zeros(1)}
    with pytest.raises(InputError, match="unknown comparator"):
        refine2d.refine(img[None], img[None], [0], [0], init, cmp="fsc")
    with pytest.raises(InputError, match="no option") as err:
        SimmxOptions(ralign="refine", raligncmp="frc:bogus=1")
    assert err.value.source == "spa.simraligncmp"
    with pytest.raises(InputError, match="unknown comparator") as err:
        ClassAverageOptions(raligncmp="fsc")
    assert err.value.source == "spa.classraligncmp"


def test_fourier_align_recovers_known_transforms(rng):
    """The Fourier-space aligner (simmx/classaverage fast path) at SNR 1: mirror always right,
    α within 4° (rms < 2°), sub-pixel shifts within 0.5 px of the true non-integer shifts."""
    from emflow.spa import fourier_align as fa

    img = _test_image()
    n = 30
    alpha = rng.uniform(0, 360, n)
    tx, ty = rng.uniform(-4, 4, n), rng.uniform(-4, 4, n)
    mirror = rng.integers(0, 2, n).astype(float)
    targets = align2d.transform_images(img[None], alpha, tx, ty, mirror, index=np.zeros(n, int))
    targets += rng.normal(0, img.std(), targets.shape).astype(np.float32)
    tgt = fa.PreparedTargets(targets)
    res = fa.align_pairs(fa.PreparedMoving(img[None], tgt.nang), tgt, np.zeros(n, int), np.arange(n))
    dalpha = (res["alpha"] - alpha + 180) % 360 - 180
    assert np.all(res["mirror"] == mirror)
    assert np.max(np.abs(dalpha)) < 4.0 and np.sqrt(np.mean(dalpha**2)) < 2.0
    assert np.max(np.abs(res["tx"] - tx)) < 0.5 and np.max(np.abs(res["ty"] - ty)) < 0.5
    # without flip the mirrored pairs must be solved worse than the plain ones
    plain = fa.align_pairs(fa.PreparedMoving(img[None], tgt.nang), tgt, np.zeros(n, int), np.arange(n), flip=False)
    assert np.all(plain["mirror"] == 0)


def test_fourier_ring_sums_match_real_space_frc(rng):
    """Ring sums of the rotated, shifted moving FT (bilinear on the 2× padded grid, gridding
    corrected) give the FRC of the real-space transformed image (naive bilinear) against a noisy
    target, over the rings that hold signal (≤ 0.27 cycles/px): within 0.03 for a grid-exact
    transform (90°, integer shift), 0.05 for a general one; total ring power stays rotation invariant (8 %)."""
    from emflow.spa import fourier_align as fa

    img = _test_image(48)
    mov = fa.PreparedMoving(img[None], align2d.n_angles(48))
    zero = np.zeros(1, np.int64)

    def frc_curve(x):
        return x[0] / np.sqrt(x[1] * x[2])

    for params, rings, tol in (((90.0, 2.0, -3.0, 0.0), slice(1, 13), 0.03),
                               ((33.0, 1.5, -2.25, 1.0), slice(1, 14), 0.05)):
        moved = transform_image(img, *params).astype(np.float32)
        tgt_img = (moved + rng.normal(0, 0.5 * img.std(), img.shape)).astype(np.float32)
        tgt = fa.PreparedTargets(tgt_img[None])
        got = np.zeros((1, 5, 24))
        a, t1, t2, m = (np.array([p], np.float64) for p in params)
        fa._ring_sums(tgt.ft, tgt.ft_m, mov.ft_pad, zero, zero, a, t1, t2, m, cmp.ring_index(48, 48), 24, True, got)
        ref = cmp.frc_curves(tgt_img, moved)[0]
        np.testing.assert_allclose(frc_curve(got[0])[rings], frc_curve(ref)[rings], atol=tol)
        np.testing.assert_array_equal(got[0, 4], ref[4])
        power = cmp.frc_curves(img, img)[0, 2]
        np.testing.assert_allclose(got[0, 2, 1:13].sum(), power[1:13].sum(), rtol=0.08)  # per ring: pixel binning varies


@pytest.mark.parametrize("ralign, max_da, max_dt", [(None, 4.0, 0.6), ("refine", 5.0, 1.0)])
def test_simmx_finds_true_projection(ralign, max_da, max_dt, rng):
    """Noisy copies of transformed projections: simmx picks the right projection and stores the
    inverse transform (particle → projection frame) — on the fast Fourier path within 4° and
    0.6 px; on the real-space path with refine(frc, falling particle SNR) within 5° and 1 px,
    because frc's per-ring normalisation lets the noise-only rings of these smooth blobs (signal
    below ring ~8 of 24) pull the optimum by a few degrees (EMAN's frc does the same)."""
    from emflow.spa.simmx import SimmxOptions, simmx, use_fourier_path

    n = 12
    yy, xx = np.indices((48, 48)) - 24
    base = np.zeros((3, 48, 48), np.float32)
    for k in range(3):  # three unrelated blob images (not rotations/mirrors of each other)
        for cx, cy, s in zip(rng.uniform(-10, 10, 5), rng.uniform(-10, 10, 5), rng.uniform(2, 5, 5)):
            base[k] += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)).astype(np.float32)
    which = rng.integers(0, 3, n)
    alpha, tx, ty = rng.uniform(0, 360, n), rng.uniform(-3, 3, n), rng.uniform(-3, 3, n)
    mirror = rng.integers(0, 2, n).astype(float)
    ptcl = align2d.transform_images(base, alpha, tx, ty, mirror, index=which)
    ptcl += rng.normal(0, 0.5 * base.std(), ptcl.shape).astype(np.float32)
    opts = SimmxOptions(apix=4.0, ralign=ralign, raligncmp="frc:zeromask=1:snrweight=1")
    assert use_fourier_path(opts, None) == (ralign is None)
    mx = simmx(ptcl, base, opts, particle_snr=np.broadcast_to(10.0 * np.exp(-np.arange(24) / 4.0), (n, 24)))
    assert np.all(np.argmin(mx[0], axis=1) == which)
    inv = align2d.invert_params(alpha, tx, ty, mirror)
    rows = np.arange(n)
    da = (mx[3, rows, which] - inv[0] + 180) % 360 - 180
    assert np.max(np.abs(da)) < max_da and np.all(mx[4, rows, which] == mirror)
    assert np.max(np.abs(mx[1, rows, which] - inv[1])) < max_dt and np.max(np.abs(mx[2, rows, which] - inv[2])) < max_dt
