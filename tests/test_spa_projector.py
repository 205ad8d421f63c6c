"""``spa.projector`` (e2refine ``--projector``, spec §5.4): ``standard`` is EMAN's real-space ray sum,
``fourier`` the central-section projector. Effect test: each name reaches its own kernel through the
stage function the rule calls (:func:`emflow.spa.refine_loop.project3d`), the two agree where both are
exact (low frequencies) and differ where they are known to: trilinear ray sums through a real-space
grid damp the highest frequencies, the gridding-corrected central section keeps them."""

from __future__ import annotations

import numpy as np
import pytest

from emflow import fourier
from emflow.errors import InputError
from emflow.geometry import eman_to_matrix
from emflow.projection import project, project_real
from emflow.spa.refine_loop import STAGE_KEYS, project3d


def _normalised(p: np.ndarray) -> np.ndarray:
    """normalize.circlemean as project3d applies it: ring mean 0, unit standard deviation."""
    b = p.shape[-1]
    yy, xx = np.indices((b, b))
    ring = np.abs(np.hypot(yy - b // 2, xx - b // 2) - (b // 2 - 1)) < 1.0
    p = p - p[:, ring].mean(axis=1)[:, None, None]
    return p / p.reshape(len(p), -1).std(axis=1)[:, None, None]


def _band_power(p: np.ndarray, lo: float, hi: float) -> float:
    F = np.abs(fourier.ft(p, axes=(-2, -1))) ** 2
    r = fourier.radius_grid(p.shape[-2:])
    return float(F[..., (r >= lo) & (r < hi)].sum())


def test_projector_option_selects_its_kernel_and_changes_the_high_frequencies():
    rng = np.random.default_rng(3)
    vol = rng.standard_normal((40, 40, 40)).astype(np.float32)  # white: every frequency present
    eulers = np.array([[10.0, 35.0, 80.0], [200.0, 70.0, 15.0], [123.0, 110.0, 300.0]])
    R = eman_to_matrix(eulers[:, 0], eulers[:, 1], eulers[:, 2])
    std, four = project3d(vol, eulers, "standard"), project3d(vol, eulers, "fourier")
    np.testing.assert_allclose(std, _normalised(project_real(vol, R)), atol=1e-4)
    np.testing.assert_allclose(four, _normalised(project(vol, R)), atol=1e-4)
    ratio_low = _band_power(std, 0.02, 0.12) / _band_power(four, 0.02, 0.12)
    ratio_high = _band_power(std, 0.38, 0.5) / _band_power(four, 0.38, 0.5)
    print(f"standard/fourier power: 0.02-0.12 cycles/px {ratio_low:.3f}, 0.38-0.5 {ratio_high:.3f}")
    r = fourier.radius_grid(std.shape[-2:])
    low = (r > 0) & (r < 0.12)  # the mean (r = 0) is set by the normalisation
    for a, b in zip(fourier.ft(std, axes=(-2, -1)), fourier.ft(four, axes=(-2, -1))):
        cc = np.vdot(a[low], b[low]).real / np.sqrt(np.vdot(a[low], a[low]).real * np.vdot(b[low], b[low]).real)
        assert cc > 0.98, cc  # the same projection where both are exact
    assert ratio_high < 0.7 * ratio_low  # the ray sums' interpolation blur, absent from the central section
    assert "projector" in STAGE_KEYS["project3d"]  # the rule's params carry it: a change reruns the projections
    with pytest.raises(InputError, match="spa.projector"):
        project3d(vol, eulers, "gauss_fft")
