"""Comparators and 2D aligners of the e2refine loop (emflow.spa.cmp, emflow.spa.align2d)."""

from __future__ import annotations

import numpy as np
import pytest

from emflow.errors import InputError
from emflow.spa import align2d, cmp
from tests.naive_spa import frc_score, transform_image


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
    ref = align2d.refine(img[None], targets, np.zeros(n, int), np.arange(n), res)
    dalpha = (ref["alpha"] - alpha + 180) % 360 - 180
    assert np.sqrt(np.mean(dalpha**2)) < 1.5 and np.max(np.abs(dalpha)) < 2.5
    assert np.max(np.abs(ref["tx"] - tx)) < 0.35 and np.max(np.abs(ref["ty"] - ty)) < 0.35


def test_refine_rejects_unsupported_comparator():
    img = _test_image(32)
    init = {"alpha": np.zeros(1), "tx": np.zeros(1), "ty": np.zeros(1), "mirror": np.zeros(1)}
    with pytest.raises(InputError, match="refine aligner"):
        align2d.refine(img[None], img[None], [0], [0], init, cmp="frc")
