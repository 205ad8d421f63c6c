"""Tests of the demo simulator against its own ground truth (emflow.demo.simulate, _phantom, demo_metadata)."""

from __future__ import annotations

import mrcfile
import naive_simulate
import numpy as np
import pytest

from emflow import fourier
from emflow.ctf import CTF, ctf_2d, ctf_zeros
from emflow.demo.data import structure_path
from emflow.demo.metadata import spa_image_names, spa_particle_columns, tilt_series_info, tomo_truth_star
from emflow.demo.phantom import (
    acquisition_order,
    footprint_mask,
    particle_radius_px,
    paste_patches,
    place_particles,
    resample_map,
)
from emflow.demo.simulate import noisy_picks, simulate_spa, simulate_tilt_series, tilt_range
from emflow.errors import InputError
from emflow.geometry import tilt_matrix
from emflow.io import read_info_json, read_mrc, read_star, write_info_json, write_mrc, write_particles_star, write_star
from emflow.projection import project, project_real

APIX_TOMO = 10.48  # 20S proteasome, box 20: five particles fit a 128 x 128 x 32 slab
TILTS = np.arange(-50.0, 50.1, 10.0)  # 11 tilts, includes 0


@pytest.fixture(scope="module")
def proteasome():
    return read_mrc(structure_path("proteasome20S"))


@pytest.fixture(scope="module")
def tilt_series(proteasome):
    """Noise-free and noisy versions of one tilt series (same seed: same specimen)."""
    ref, apix_ref = proteasome
    kwargs = dict(apix=APIX_TOMO, shape_xyz=(128, 128, 32), tilts_deg=TILTS, n_particles=5, defocus_um=5.0,
                  dose_per_tilt=0.0)
    clean, truth = simulate_tilt_series(ref, apix_ref, rng=np.random.default_rng(7), snr=None, **kwargs)
    noisy, truth_n = simulate_tilt_series(ref, apix_ref, rng=np.random.default_rng(7), snr=0.1, **kwargs)
    return clean, noisy, truth, truth_n


def test_bundled_maps_are_the_documented_files(proteasome):
    ref, apix = proteasome
    assert ref.shape == (80, 80, 80) and apix == pytest.approx(2.62, abs=1e-4)
    # README: integral = sum of Z of the model (304,976 e) for 3J9I.
    assert ref.sum() * apix**3 == pytest.approx(304976.0, rel=1e-3)
    with pytest.raises(InputError, match="unknown demo structure"):
        structure_path("groel")


@pytest.mark.parametrize("apix_out, box", [(10.48, 20), (4.0, 52)])
def test_resample_map_keeps_mass_and_centre(proteasome, apix_out, box):
    ref, apix = proteasome
    vol = resample_map(ref, apix, apix_out)
    assert vol.shape == (box,) * 3
    assert vol.sum() * apix_out**3 == pytest.approx(304976.0, rel=0.02)
    com = np.array([np.sum(vol.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(box))
                    for ax in range(3)]) / vol.sum()
    np.testing.assert_allclose(com, box // 2, atol=0.3)
    # The 20S proteasome is 150 Å long: the 99 % mass radius is ~85 Å at any pixel size.
    assert particle_radius_px(vol) * apix_out == pytest.approx(86.0, abs=6.0)


def test_placement_is_inside_and_non_overlapping(rng):
    pos = place_particles(30, (200, 160, 40), radius_px=10.0, min_dist_px=22.0, rng=rng)
    assert np.all(np.abs(pos) <= np.array([100, 80, 20]) - 10.0)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(30) * 1e9
    assert d.min() >= 22.0
    with pytest.raises(InputError, match="does not fit"):
        place_particles(3, (100, 100, 16), radius_px=10.0, min_dist_px=20.0, rng=rng)
    with pytest.raises(InputError, match="could place only"):
        place_particles(200, (64, 64, 24), radius_px=10.0, min_dist_px=20.0, rng=rng)


def test_paste_and_footprint_kernels_match_naive(rng):
    image = rng.standard_normal((30, 40)).astype(np.float32)
    patches = rng.standard_normal((4, 10, 10)).astype(np.float32)
    centres = np.array([[15, 20], [1, 2], [29, 39], [-3, 42]])  # inside, corners, partly outside
    expect = naive_simulate.paste_patches(image, patches, centres)
    paste_patches(image, patches, centres)
    np.testing.assert_allclose(image, expect, atol=1e-5)
    sub = np.array([[10.3, 12.7], [0.0, 39.5], [25.0, -2.0]])
    np.testing.assert_array_equal(footprint_mask((30, 40), sub, 4.5), naive_simulate.footprint_mask((30, 40), sub, 4.5))


def test_acquisition_orders():
    tilts = np.arange(-9.0, 9.1, 3.0)  # -9 -6 -3 0 3 6 9
    sym = acquisition_order(tilts, "dose_symmetric")
    assert [tilts[i] for i in np.argsort(sym)] == [0, 3, 6, -3, -6, 9, -9]
    seq = acquisition_order(tilts, "sequential")
    assert [tilts[i] for i in np.argsort(seq)] == sorted(tilts)


def test_truth_positions_inside_slab(tilt_series):
    _, _, truth, _ = tilt_series
    r = truth.radius_px
    assert np.all(np.abs(truth.positions_px) <= np.array([64, 64, 16]) - r)
    d = np.linalg.norm(truth.positions_px[:, None] - truth.positions_px[None], axis=-1) + np.eye(5) * 1e9
    assert d.min() >= 2 * r - 1e-9
    np.testing.assert_allclose(np.linalg.det(truth.rotations), 1.0, atol=1e-9)


def _template(vol, R, df, apix, frac_xy, size, projector=project_real):
    """Independent forward model of one particle: real-space ray sum, CTF, sub-pixel shift."""
    proj = fourier.pad(projector(vol, R[None])[0], size)
    proj = fourier.shift(proj, frac_xy)
    F = fourier.ft(proj) * ctf_2d(CTF(defocus_um=df), (size, size), apix) * apix
    return fourier.ift(F, (size, size))


@pytest.mark.parametrize("tilt", [0.0, 40.0])
def test_particles_land_at_their_projected_positions(tilt_series, proteasome, tilt):
    """The tilt image equals an independent forward model of every particle at its truth."""
    clean, _, truth, _ = tilt_series
    vol = resample_map(*proteasome, APIX_TOMO)
    t = int(np.flatnonzero(TILTS == tilt)[0])
    Rt = tilt_matrix(tilt)
    m = 30  # zero margin so windows near the edge stay whole
    image = np.pad(clean[t], m)
    model, wrong_model = np.zeros_like(image), np.zeros_like(image)
    for p, Rp in zip(truth.positions_px, truth.rotations):
        q = Rt @ p
        u, v = q[0] + 64, q[1] + 64
        iu, iv = int(np.round(u)), int(np.round(v))
        df = truth.defocus_um[t] - q[2] * APIX_TOMO / 1e4
        tmpl = _template(vol, Rt @ Rp, df, APIX_TOMO, (u - iu, v - iv), 40)
        # Cross-correlate in a ±8 px window around the truth: the peak must be at the truth.
        best, best_off = -np.inf, None
        for dy in range(-8, 9):
            for dx in range(-8, 9):
                win = image[m + iv + dy - 20 : m + iv + dy + 20, m + iu + dx - 20 : m + iu + dx + 20]
                c = np.sum(win * tmpl)
                if c > best:
                    best, best_off = c, (dx, dy)
        assert max(abs(best_off[0]), abs(best_off[1])) <= 1, best_off
        model[m + iv - 20 : m + iv + 20, m + iu - 20 : m + iu + 20] += tmpl
        # The inverse orientation (a convention error R_p <-> R_p^T) must fit worse.
        wrong = _template(vol, Rt @ Rp.T, df, APIX_TOMO, (u - iu, v - iv), 40)
        wrong_model[m + iv - 20 : m + iv + 20, m + iu - 20 : m + iu + 20] += wrong
    cc = np.corrcoef(image.ravel(), model.ravel())[0, 1]
    assert cc > 0.97, cc
    assert cc > np.corrcoef(image.ravel(), wrong_model.ravel())[0, 1] + 0.1


def test_protein_is_dark_in_tilt_images(tilt_series):
    clean, _, truth, _ = tilt_series
    t0 = int(np.flatnonzero(TILTS == 0)[0])
    low = fourier.ift(fourier.ft(clean[t0]) * (fourier.radius_grid((128, 128)) < 0.03), (128, 128))
    centres = truth.positions_px[:, 1::-1] + 64
    mask = footprint_mask((128, 128), centres, truth.radius_px * 0.6)
    assert low[mask].mean() < -3 * np.abs(low[~mask]).mean()


def test_measured_snr_matches_request(tilt_series):
    clean, noisy, truth, truth_n = tilt_series
    noise = noisy - clean
    assert noise.std() == pytest.approx(truth_n.noise_sigma, rel=0.02)
    t0 = int(np.flatnonzero(TILTS == 0)[0])
    centres = truth.positions_px[:, 1::-1] + 64  # (y, x) at 0° tilt
    mask = footprint_mask((128, 128), centres, truth.radius_px)
    snr = clean[t0][mask].var() / noise[t0].var()
    assert snr == pytest.approx(0.1, rel=0.2)


def test_ctf_zeros_in_power_spectrum(tilt_series):
    """Thon rings of the noise-free 0° image sit at the zeros of the set defocus (5 µm)."""
    clean, _, truth, _ = tilt_series
    t0 = int(np.flatnonzero(TILTS == 0)[0])
    ps = np.abs(fourier.ft(clean[t0])) ** 2
    s = fourier.radius_grid((128, 128)) / APIX_TOMO  # 1/Å

    def zero_to_peak(df):
        c = CTF(defocus_um=df)
        zeros = ctf_zeros(c, 2)
        peaks = np.sqrt(zeros[:-1] * zeros[1:])  # roughly between the two zeros
        at_zero = np.mean([ps[np.abs(s - z) < 0.4 / (128 * APIX_TOMO)].mean() for z in zeros])
        at_peak = np.mean([ps[np.abs(s - z) < 0.4 / (128 * APIX_TOMO)].mean() for z in peaks])
        return at_zero / at_peak

    assert ctf_zeros(CTF(defocus_um=5.0), 2)[-1] < 0.5 / APIX_TOMO  # both zeros below Nyquist
    ratio = zero_to_peak(truth.defocus_um[t0])
    assert ratio < 0.1, ratio
    assert ratio < 0.3 * min(zero_to_peak(4.4), zero_to_peak(5.6))


def test_depth_changes_defocus_with_the_extraction_sign(proteasome):
    """A particle at depth z (px) at 0° tilt has defocus df − z·apix/1e4 (spec §3.2), not df + z·apix/1e4."""
    ref, apix_ref = proteasome
    common = dict(apix=APIX_TOMO, shape_xyz=(64, 64, 640), tilts_deg=[0.0], n_particles=1, snr=None,
                  defocus_um=3.0, dose_per_tilt=0.0)
    img, truth = simulate_tilt_series(ref, apix_ref, rng=np.random.default_rng(0), **common)
    z = truth.positions_px[0, 2]
    assert abs(z) > 200  # 0.2 µm or more away from the mid-plane
    vol = resample_map(ref, apix_ref, APIX_TOMO)
    u, v = truth.positions_px[0, :2] + 32
    iu, iv = int(np.round(u)), int(np.round(v))
    patch = img[0, iv - 20 : iv + 20, iu - 20 : iu + 20]
    cc = {}
    for sign in (-1, 1):
        # Same (Fourier) projector as the simulator, so only the CTF can differ.
        tmpl = _template(vol, truth.rotations[0], 3.0 + sign * z * APIX_TOMO / 1e4, APIX_TOMO, (u - iu, v - iv), 40,
                         projector=project)
        cc[sign] = np.corrcoef(patch.ravel(), tmpl.ravel())[0, 1]
    assert cc[-1] > 0.995 and cc[-1] > cc[1] + 0.01, cc


def test_picks_and_info_json(tilt_series, tmp_path):
    _, _, truth, _ = tilt_series
    picks = noisy_picks(truth.positions_px, 2.0, np.random.default_rng(0))
    err = picks - truth.positions_px
    assert 0.5 < err.std() < 4.0
    info = tilt_series_info(truth, picks, label="initribo", tlt_file="tiltseries/demo_01.mrc")
    path = tmp_path / "demo_01_info.json"
    write_info_json(path, info)
    back = read_info_json(path)
    assert back["apix_unbin"] == truth.apix
    np.testing.assert_allclose(np.array(back["tlt_params"])[:, 3], TILTS)
    np.testing.assert_allclose(back["defocus"], truth.defocus_um)
    boxes = np.array([b[:3] for b in back["boxes_3d"]], float)
    np.testing.assert_allclose(boxes, picks)
    assert {b[3] for b in back["boxes_3d"]} == {"manual"}
    assert back["class_list"]["0"] == {"name": "initribo", "boxsize": truth.box}
    star = tomo_truth_star(truth, "demo_01")
    write_star(tmp_path / "t.star", star)
    got = read_star(tmp_path / "t.star")["particles"]
    np.testing.assert_allclose(got["rlnCoordinateZ"], truth.positions_px[:, 2] + 16)


def test_files_open_in_mrcfile(tilt_series, tmp_path):
    _, noisy, truth, _ = tilt_series
    write_mrc(tmp_path / "ts.mrc", noisy, truth.apix)
    with mrcfile.open(tmp_path / "ts.mrc") as m:
        assert m.data.shape == noisy.shape
        assert float(m.voxel_size.x) == pytest.approx(truth.apix, rel=1e-5)
        np.testing.assert_array_equal(m.data, noisy)


@pytest.fixture(scope="module")
def spa(proteasome):
    ref, apix_ref = proteasome
    kwargs = dict(apix=6.55, box=40, n=40, defocus_range_um=(1.0, 2.5), max_shift_px=2.0)
    clean, truth = simulate_spa(ref, apix_ref, rng=np.random.default_rng(5), snr=None, **kwargs)
    noisy, truth_n = simulate_spa(ref, apix_ref, rng=np.random.default_rng(5), snr=0.08, **kwargs)
    return clean, noisy, truth, truth_n


def test_spa_particle_is_ctf_modulated_projection(spa, proteasome):
    clean, _, truth, _ = spa
    vol = resample_map(*proteasome, 6.55, box=40)
    for i in range(5):
        for projector in (project_real, project):
            proj = fourier.shift(fourier.pad(projector(vol, truth.rotations[i][None])[0], 80), truth.shifts_px[i])
            F = fourier.ft(proj) * -ctf_2d(truth.ctfs()[i], (80, 80), 6.55) * 6.55
            expect = fourier.crop(fourier.ift(F, (80, 80)), 40)
            cc = np.corrcoef(clean[i].ravel(), expect.ravel())[0, 1]
            assert cc > 0.98, cc
        # Scale against the Fourier projector (the real-space ray sum's trilinear
        # interpolation damps high frequencies by ~8 % at this sampling).
        assert np.sum(clean[i] * expect) / np.sum(expect * expect) == pytest.approx(1.0, abs=0.02)
    # Protein white: the low-passed particle is positive in its disc.
    low = fourier.ift(fourier.ft(clean, axes=(-2, -1)) * (fourier.radius_grid((40, 40)) < 0.05), (40, 40))
    disc = footprint_mask((40, 40), np.array([[20.0, 20.0]]), truth.radius_px * 0.5)
    assert low[:, disc].mean() > 0


def test_spa_truth_ranges_and_snr(spa):
    clean, noisy, truth, truth_n = spa
    assert np.all((truth.defocus_um >= 1.0) & (truth.defocus_um <= 2.5))
    assert np.all(np.linalg.norm(truth.shifts_px, axis=1) <= 2.0)
    disc = footprint_mask((40, 40), np.array([[20.0, 20.0]]), truth.radius_px)
    snr = clean[:, disc].var(axis=1).mean() / (noisy - clean).var()
    assert snr == pytest.approx(0.08, rel=0.2)


def test_spa_star_round_trip(spa, tmp_path):
    _, noisy, truth, _ = spa
    write_mrc(tmp_path / "particles.mrcs", noisy, truth.apix)
    names = spa_image_names(len(noisy), "particles.mrcs")
    write_particles_star(tmp_path / "particles.star", names, **spa_particle_columns(truth))
    star = read_star(tmp_path / "particles.star")
    p, o = star["particles"], star["optics"]
    assert p["rlnImageName"][0] == "000001@particles.mrcs"
    np.testing.assert_allclose(p["rlnDefocusU"], truth.defocus_um * 1e4, rtol=1e-9)
    np.testing.assert_allclose(p["rlnOriginXAngst"], -truth.shifts_px[:, 0] * truth.apix, rtol=1e-9)
    np.testing.assert_allclose(np.c_[p["emanAz"], p["emanAlt"], p["emanPhi"]], truth.eman_eulers, atol=1e-9)
    assert o["rlnImagePixelSize"][0] == pytest.approx(truth.apix)
    from emflow.geometry import relion_to_matrix

    R = relion_to_matrix(p["rlnAngleRot"], p["rlnAngleTilt"], p["rlnAnglePsi"])
    np.testing.assert_allclose(R, truth.rotations, atol=1e-9)
    with mrcfile.open(tmp_path / "particles.mrcs") as m:
        assert m.data.shape == (40, 40, 40)


def test_bad_inputs(proteasome):
    ref, apix_ref = proteasome
    with pytest.raises(InputError, match="does not fit"):
        simulate_spa(ref, apix_ref, apix=3.275, box=32, n=4, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="snr"):
        simulate_tilt_series(ref, apix_ref, apix=10.48, shape_xyz=(64, 64, 32), tilts_deg=[0.0], n_particles=1,
                             rng=np.random.default_rng(0), snr=-1.0)


def test_tilt_range():
    tilts = tilt_range(-60.0, 60.0, 3.0)
    assert len(tilts) == 41 and tilts[0] == -60.0 and tilts[-1] == 60.0 and 0.0 in tilts
    assert tilt_range(-50, 51, 10)[-1] == 50
    with pytest.raises(InputError):
        tilt_range(10, -10, 3)


def test_residual_alignment_errors_move_the_whole_tilt_image(proteasome):
    """Tilt-series misalignment (what subtilt t/r/d refine away): each tilt image is the aligned
    image rotated about the centre by that tilt's axis error and shifted by its shift error; the
    recorded defocus differs from the true one by the defocus error; the 0° tilt is the frame."""
    import scipy.ndimage

    from emflow.geometry import rot_z

    ref, apix_ref = proteasome
    kwargs = dict(apix=APIX_TOMO, shape_xyz=(128, 128, 32), tilts_deg=[-30.0, 0.0, 30.0], n_particles=5,
                  defocus_um=5.0, dose_per_tilt=0.0, snr=None)
    aligned, t0 = simulate_tilt_series(ref, apix_ref, rng=np.random.default_rng(3), **kwargs)
    moved, t1 = simulate_tilt_series(ref, apix_ref, rng=np.random.default_rng(3), tilt_shift_error_px=3.0,
                                     tilt_axis_error_deg=3.0, defocus_error_um=0.3, **kwargs)
    np.testing.assert_allclose(t1.positions_px, t0.positions_px)
    assert np.all(t1.tilt_shift_px[1] == 0) and t1.tilt_axis_error_deg[1] == 0
    np.testing.assert_array_equal(moved[1], aligned[1])
    assert np.all(np.abs(t1.tilt_axis_error_deg[[0, 2]]) > 0.2)
    np.testing.assert_allclose(t1.defocus_um, t0.defocus_um)
    assert 0.01 < np.abs(t1.defocus_recorded_um - t1.defocus_um).max() < 1.5
    c = np.array([64.0, 64.0])  # image centre (x, y)
    for t in (0, 2):
        A = rot_z(t1.tilt_axis_error_deg[t])[:2, :2]  # (x, y) of the aligned image → moved image
        s = t1.tilt_shift_px[t]
        # output (y, x) → input (y, x): x_in = A⁻¹ (x_out − c − s) + c, in (row, col) order
        Ainv = np.linalg.inv(A)[::-1, ::-1]
        offset = c[::-1] - Ainv @ (c + s)[::-1]
        predicted = scipy.ndimage.affine_transform(aligned[t], Ainv, offset=offset, order=3)
        unmoved = np.corrcoef(moved[t][16:-16, 16:-16].ravel(), aligned[t][16:-16, 16:-16].ravel())[0, 1]
        cc = np.corrcoef(moved[t][16:-16, 16:-16].ravel(), predicted[16:-16, 16:-16].ravel())[0, 1]
        assert cc > 0.98 and cc > unmoved + 0.1, (t, cc, unmoved)
