"""The template of template matching from a user's map: resampling, contrast, hand and mask
(emflow.sta.tempmatch_template)."""

from __future__ import annotations

import numpy as np
import pytest
from test_resample import gaussian, moments

from emflow.sta.tempmatch_template import contrast_sign, mask_radius_px, mirror_z, prepare_template


def test_contrast_sign():
    assert contrast_sign("bright", "dark") == -1.0  # EMDB map on a raw tomogram
    assert contrast_sign("bright", "bright") == 1.0
    assert contrast_sign("dark", "dark") == 1.0
    with pytest.raises(ValueError):
        contrast_sign("positive", "dark")


def test_mirror_flips_z_about_the_centre_voxel():
    for n in (8, 9):
        vol = np.zeros((n, n, n), np.float32)
        c = n // 2
        vol[c + 2, c, c + 1] = 1.0  # above the centre in z
        vol[c, c, c] = 5.0
        out = mirror_z(vol)
        assert out[c - 2, c, c + 1] == 1.0 and out[c, c, c] == 5.0 and out.sum() == 6.0
        np.testing.assert_array_equal(mirror_z(out), vol)


def test_user_map_at_another_pixel_size_becomes_the_template():
    """A 96³ map at 1.7 Å/px (EMDB-like) with a blob 25 Å above the centre, onto a 20.96 Å/px
    tomogram: box from the extent (96·1.7/20.96 → 8), negated for a dark tomogram; mirror flips it."""
    vol = gaussian((96,) * 3, 1.7, 20.0, centre_a=(25.0, 0.0, 0.0))
    g = prepare_template(vol, 1.7, 20.96, template_contrast="bright", tomogram_contrast="dark")
    assert g.box == 8 and g.template.shape == (8, 8, 8) and g.mask is None
    assert g.template.min() < -0.5 and g.template.max() < 0.01  # negated (small ringing of the low-pass)
    c, _ = moments(-g.template, 20.96)
    assert c[0] == pytest.approx(25.0, abs=3.0) and abs(c[1]) < 1 and abs(c[2]) < 1
    c_m, _ = moments(-prepare_template(vol, 1.7, 20.96, box=16, mirror=True).template, 20.96)
    assert c_m[0] == pytest.approx(-25.0, abs=3.0)  # the hand (z) is flipped


def test_user_mask_is_resampled_with_the_template_and_sets_the_sphere():
    vol = gaussian((64,) * 3, 2.0, 8.0)
    z, y, x = np.meshgrid(*[(np.arange(64) - 32) * 2.0] * 3, indexing="ij")
    mask = (np.sqrt(x ** 2 + y ** 2 + z ** 2) < 30.0).astype(np.float32)  # 30 Å sphere
    g = prepare_template(vol, 2.0, 5.0, box=24, mask=mask, tomogram_contrast="bright")
    assert g.mask.shape == (24, 24, 24) and 0 <= g.mask.min() and g.mask.max() <= 1
    assert np.all(g.template[g.mask == 0] == 0)
    assert mask_radius_px(g.mask) == pytest.approx(30.0 / 5.0 + 1.0, abs=1.0)
    with pytest.raises(ValueError):
        prepare_template(vol, 2.0, 5.0, mask=mask[:10])
