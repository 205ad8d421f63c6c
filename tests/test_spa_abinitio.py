"""emflow.spa.abinitio: the Gaussian likelihood over all poses finds the true poses of an asymmetric
particle at SNR 0.08, and the stochastic-EM update keeps the true map (a fixed point, the right hand).

Case: the bundled 70S ribosome (asymmetric), c1, CTF 1–2.5 µm, simulated at box 64 (5.24 Å/px) with
SNR 0.08 (signal variance over the particle disc / noise variance, :func:`emflow.demo.simulate.simulate_spa`,
issue #15's definition), shifts ≤ 2 px, phase-flipped, Fourier-cropped to box 32 (10.48 Å/px). The hand of a map from projections is undetermined
(tests/test_spa_initial_model.py::test_projections_cannot_tell_the_hand), so maps are judged against the
truth and its mirror image.

Not tested here because it does not work yet (measured, /work/wt/notes/s6-abinitio.md): reaching the
fold from a *random* start at SNR 0.08 (or reliably at 0.3–1 on this box-32 case). Dark-contrast input
is refused elsewhere (tests/test_spa_star.py::test_contrast_declared_and_checked,
tests/workflow/test_user_spa.py::test_user_spa_dark_declared_bright_is_refused).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_spa_initial_model import align_truth_to, fsc_at

from emflow.spa import abinitio
from emflow.spa import initial_model as im

SNR = 0.08
N = 600
BOX = 32


@pytest.fixture(scope="module")
def case():
    import mrcfile

    from emflow import fourier
    from emflow.demo.data import structure_path
    from emflow.demo.phantom import resample_map
    from emflow.demo.simulate import simulate_spa
    from emflow.spa.refine_loop import phase_flip_particles

    with mrcfile.open(structure_path("ribosome70S")) as m:
        ref, ap = np.asarray(m.data, np.float32), float(m.voxel_size.x)
    # simulated at box 64 (5.24 Å/px, SNR over the particle disc as in issue #15 and the benchmark), then
    # Fourier-cropped to the working box 32 (10.48 Å/px) as spa_initial_model_em does
    apix0 = ap * ref.shape[0] / (2 * BOX)
    stack, truth = simulate_spa(ref, ap, apix=apix0, box=2 * BOX, n=N, rng=np.random.default_rng(11), snr=SNR)
    ctfs = truth.ctfs()
    parts = fourier.fourier_crop(phase_flip_particles(stack, ctfs, apix0), (N, BOX, BOX))
    apix = 2 * apix0
    return parts, ctfs, apix, resample_map(ref, ap, apix, box=BOX), truth.rotations


def _data(case):
    """Particle FTs, |CTF| and the truth in the particles' units (least-squares amplitude at the true poses)."""
    from emflow import fourier
    from emflow.ctf import ctf_2d_stack
    from emflow.projection import VolumeProjector

    parts, ctfs, apix, truth, rots = case
    X = fourier.ft(parts, axes=(-2, -1)).astype(np.complex64)
    C = np.abs(ctf_2d_stack(ctfs, (BOX, BOX), apix)).astype(np.float32)
    P = VolumeProjector(truth, pad=2).slices_ft(rots, size=BOX) * C
    scale = float(np.sum((np.conj(X) * P).real) / np.sum(np.abs(P) ** 2))
    return X, C, truth * np.float32(scale)


def _hands(vol, truth, apix):
    from emflow.demo.scores import mirror_map

    return (fsc_at(align_truth_to(truth, vol, apix), vol, apix, 40.0),
            fsc_at(align_truth_to(mirror_map(truth), vol, apix), vol, apix, 40.0))


def test_grids_and_noise():
    R = abinitio.pose_grid(15.0)
    assert R.shape[0] == 185 * 24
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", R, R), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    T = abinitio.shift_grid(1.0)
    assert T.shape == (5, 2) and np.all(T[0] == 0)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2.0, (2000, 16, 16)).astype(np.float32)
    from emflow import fourier

    pw = abinitio.noise_power(fourier.ft(x, axes=(-2, -1)), 16)
    np.testing.assert_allclose(pw[1:8], 4.0 * 256, rtol=0.05)  # white noise: σ²·b² per pixel


def test_em_params_refused():
    with pytest.raises(im.InputError, match="em.beta0"):
        abinitio.EMParams(beta0=0.0).check()
    with pytest.raises(im.InputError, match="method"):
        im.initial_model_run(np.zeros((4, 8, 8), np.float32), 5.0, im.SPAInitParams(), {}, np.random.default_rng(0),
                             method="common_lines")


def test_likelihood_finds_the_true_poses_at_snr_008(case):
    """With the true map, the best pose of the Gaussian likelihood over ALL poses (15° SO(3) grid, 5 shifts,
    Fourier pixels to 40 Å, |CTF| modelled) is the true one for most particles at SNR 0.08: the signal a
    start from the data needs is in the images. A wrong map (the mirror image) gives chance-level poses."""
    from emflow.demo.scores import mirror_map

    parts, ctfs, apix, truth, rots = case
    X, C, tw = _data(case)
    R = abinitio.pose_grid(15.0)

    def errors(vol):
        br, _, neff = abinitio.best_poses(vol, X, BOX, apix, 40.0, R, ctf=C)
        cosang = (np.einsum("nij,nij->n", R[br], rots) - 1) / 2
        return np.degrees(np.arccos(np.clip(cosang, -1, 1))), neff

    err, neff = errors(tw)
    err_m, _ = errors(mirror_map(tw))
    print(f"SNR {SNR}: best pose within 20° of the truth for {np.mean(err < 20):.0%} (median {np.median(err):.1f}°, "
          f"posterior n_eff {neff:.1f}); with the mirror map {np.mean(err_m < 20):.0%} (median {np.median(err_m):.0f}°)")
    assert np.mean(err < 20) >= 0.6 and np.median(err) < 15
    assert np.mean(err_m < 20) < 0.2


def test_true_map_is_a_fixed_point_of_the_em(case):
    """Stochastic EM started from the truth (10 minibatches of 200, β = 1, SNR 0.08) stays on it with its hand:
    the update (posterior-weighted |CTF|·X over the poses, F/(W+λ)) does not drift or blur the fold."""
    parts, ctfs, apix, truth, rots = case
    X, C, tw = _data(case)
    p = abinitio.EMParams(res_start_a=40.0, res_a=40.0, niter=10, batch=200, delta_start_deg=15.0,
                          delta_deg=15.0, beta0=1.0, ntry=1, n_score=100)
    r = abinitio.stochastic_em(X, BOX, apix, p, ctf=C, rng=np.random.default_rng(4), init=tw)
    good, mirror = _hands(r.maps[0], truth, apix)
    print(f"from the truth after 10 minibatches: FSC at 40 Å vs truth {good:.2f}, vs mirror {mirror:.2f}; "
          f"n_eff {np.round(r.neff[0], 1)}")
    assert good >= 0.7 and good - mirror >= 0.3
