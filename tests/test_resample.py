"""emflow.resample: Fourier (band-limited) resampling of a map to a new pixel size and box,
checked on analytic Gaussians whose width and position are known in Å."""

from __future__ import annotations

import numpy as np
import pytest

from emflow import fourier
from emflow.errors import InputError
from emflow.resample import default_box, read_user_map, resample_map


def gaussian(shape, apix, sigma_a, centre_a=(0.0, 0.0, 0.0)):
    """exp(-r²/2σ²) on a [z, y, x] grid, r in Å from voxel n//2 + centre_a/apix."""
    g = np.meshgrid(*[(np.arange(n) - n // 2) * apix - c for n, c in zip(shape, centre_a)], indexing="ij")
    return np.exp(-sum(x * x for x in g) / (2 * sigma_a ** 2)).astype(np.float32)


def moments(vol, apix):
    """Centroid (Å from voxel n//2, [z, y, x]) and rms width σ (Å, per axis) of a positive blob."""
    w = np.clip(vol, 0, None).astype(np.float64)
    grids = np.meshgrid(*[(np.arange(n) - n // 2) * apix for n in vol.shape], indexing="ij")
    c = [float((w * g).sum() / w.sum()) for g in grids]
    s = [float(np.sqrt((w * (g - ci) ** 2).sum() / w.sum())) for g, ci in zip(grids, c)]
    return np.array(c), np.array(s)


@pytest.mark.parametrize("apix_in, apix_out, n, box", [
    (1.7, 5.24, 96, 40),    # EMDB-like map onto a binned tomogram: non-integer ratio 3.08, crop
    (5.24, 3.3, 24, 48),    # up-sampling (pad) into a bigger box
    (2.0, 4.0, 64, 32),     # integer ratio
])
def test_gaussian_keeps_its_width_and_centre_in_angstrom(apix_in, apix_out, n, box):
    sigma = 14.0
    vol = gaussian((n,) * 3, apix_in, sigma)
    out = resample_map(vol, apix_in, apix_out, box)
    assert out.shape == (box,) * 3 and out.dtype == np.float32
    assert np.unravel_index(np.argmax(out), out.shape) == (box // 2,) * 3  # centre n//2 -> box//2
    c, s = moments(out, apix_out)
    np.testing.assert_allclose(c, 0.0, atol=0.02 * apix_out)
    np.testing.assert_allclose(s, sigma, rtol=0.01)  # σ in Å kept to 1 %
    # the analytic Gaussian sampled on the new grid (band-limited: well below both Nyquists)
    ref = gaussian((box,) * 3, apix_out, sigma)
    assert np.abs(out - ref).max() < 0.01


def test_off_centre_blob_moves_by_the_right_distance_per_axis():
    """A blob 20 Å off centre in x, −12 Å in z lands 20 Å / −12 Å off centre after resampling; non-cubic box."""
    vol = gaussian((80, 72, 64), 2.1, 10.0, centre_a=(-12.0, 0.0, 20.0))
    out = resample_map(vol, 2.1, 4.5, (30, 34, 36))
    assert out.shape == (30, 34, 36)
    c, s = moments(out, 4.5)
    np.testing.assert_allclose(c, [-12.0, 0.0, 20.0], atol=0.1)
    np.testing.assert_allclose(s, 10.0, rtol=0.01)


def test_integer_ratio_equals_fourier_crop():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(32, 32, 32)).astype(np.float32)
    # band-limited below the new Nyquist (0.25 cycles/px): the two differ only in how a frequency on
    # the band edge is shared (fourier_crop aliases ±Nyquist into one bin; here it gets half weight)
    F = fourier.ft(noise) * (fourier.radius_grid(noise.shape) < 0.22)
    vol = fourier.ift(F, noise.shape).astype(np.float32)
    a = resample_map(vol, 1.0, 2.0, 16)
    b = fourier.fourier_crop(vol, 16)
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())
    # up-sampling (a Fourier pad) is the same for any map, white noise included
    up = resample_map(noise, 4.0, 1.0, 128)
    np.testing.assert_allclose(up, fourier.fourier_crop(noise, 128), atol=1e-4 * np.abs(up).max())
    # identity when nothing changes
    np.testing.assert_allclose(resample_map(vol, 3.0, 3.0, 32), vol, atol=1e-4)


def test_default_box_and_bad_input():
    assert default_box((100, 100, 100), 1.0, 5.0) == (20, 20, 20)
    with pytest.raises(ValueError):
        resample_map(np.zeros((4, 4)), 1.0, 2.0)


def test_user_map_without_pixel_size_is_refused(tmp_path):
    import mrcfile

    p = tmp_path / "emd_map.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((16, 16, 16), np.float32))
        m.voxel_size = 1.0  # what many programs write when they do not know it
    with pytest.raises(InputError) as e:
        read_user_map(p, "tempmatch.template")
    assert "emd_map.mrc" in str(e.value) and "voxel_size" in str(e.value)
    vol, apix = read_user_map(p, "tempmatch.template", override=3.5)  # input.apix_override
    assert apix == 3.5
    with mrcfile.open(p, "r+") as m:
        m.voxel_size = 4.2
    vol, apix = read_user_map(p, "tempmatch.template")
    assert vol.shape == (16, 16, 16) and apix == pytest.approx(4.2)
    with pytest.raises(InputError) as e:
        read_user_map(tmp_path / "missing.mrc", "tempmatch.template")
    assert "tempmatch.template" in str(e.value)
