"""SPA input: RELION STAR (optics groups, astigmatism for any U, V, row order), pixel size and the
declared particle contrast, on files written by tests/foreign/relion_spa.py (no emflow writers)."""

from __future__ import annotations

import numpy as np
import pytest
from foreign import relion_spa

from emflow.errors import InputError

OPTICS = [{"voltage": 300.0, "cs": 2.7, "ampcont": 0.1, "apix": 2.0, "box": 64},
          {"voltage": 200.0, "cs": 1.4, "ampcont": 0.07, "apix": 2.0, "box": 64}]


def _star(tmp_path, u, v, a, groups=None, row_order=None, optics=OPTICS):
    from emflow.io import read_star

    n = len(u)
    stack = tmp_path / "parts.mrcs"
    relion_spa.write_stack(stack, np.zeros((n, 64, 64), np.float32), optics[0]["apix"])
    path = tmp_path / "parts.star"
    relion_spa.write_particles_star(path, stack, defocus_u_a=u, defocus_v_a=v, defocus_angle_deg=a,
                                    optics_group=np.ones(n, int) if groups is None else groups, optics=optics,
                                    row_order=row_order)
    return read_star(path), str(path), str(stack)


# RELION (github 3dem/relion @73f0a3c0) src/ctf.cpp L249-258: A = Qᵀ·diag(−U, −V)·Q, Q = rotation by
# rlnDefocusAngle: U lies along the angle for ANY U, V. src/ctf.h getCTF: CTF = −sin γ with
# γ = −χ_emflow, so RELION's CTF is the negative of emflow's (RELION's particles are protein white).
@pytest.mark.parametrize("u,v,a", [(15000.0, 12000.0, 30.0), (12000.0, 15000.0, 30.0), (20000.0, 18500.0, 125.0),
                                   (18500.0, 20000.0, 125.0), (10000.0, 10000.0, 77.0)])
def test_star_astigmatism_matches_relion_ctf(tmp_path, u, v, a):
    from emflow.ctf import ctf_2d
    from emflow.spa.files import ctfs_from_star

    star, path, stack = _star(tmp_path, [u], [v], [a])
    (c,) = ctfs_from_star(star, 1, path, stack_path=stack)
    ours = ctf_2d(c, (64, 64), 2.0, rfft=False)
    theirs = relion_spa.relion_ctf_2d(64, 2.0, u, v, a)
    np.testing.assert_allclose(ours, -theirs, atol=2e-3)
    assert not np.allclose(ctf_2d(c.__class__(**{**c.__dict__, "dfang_deg": c.dfang_deg + 90}), (64, 64), 2.0,
                                  rfft=False), -theirs, atol=2e-3) or u == v


@pytest.mark.parametrize("u,v,a", [(15000.0, 12000.0, 30.0), (12000.0, 15000.0, 30.0), (18000.0, 21000.0, 160.0)])
def test_power_spectrum_ellipse_axis_follows_star_angle(tmp_path, u, v, a):
    """Physical check: in the CTF power spectrum the first zero comes at the smallest radius along the
    direction of the larger defocus — rlnDefocusAngle when U > V, the angle + 90° when V > U."""
    from emflow.ctf import ctf_1d
    from emflow.spa.files import ctfs_from_star

    star, path, stack = _star(tmp_path, [u], [v], [a])
    (c,) = ctfs_from_star(star, 1, path, stack_path=stack)
    s = np.linspace(0.002, 0.12, 12000)
    angles = np.arange(0.0, 180.0, 0.5)
    first_zero = []
    for ang in angles:  # the 2D CTF along a radial line; power spectrum = CTF²
        ps = ctf_1d(c, s, angle_deg=ang) ** 2
        k = np.argmax((ps[1:-1] < ps[:-2]) & (ps[1:-1] < ps[2:]) & (ps[1:-1] < 1e-3)) + 1
        first_zero.append(s[k])
    # r(θ) ≈ r0 − c·cos(2(θ − major)): the phase of the cos 2θ component of the first-zero radius
    major = np.rad2deg(np.angle(-np.sum(np.asarray(first_zero) * np.exp(2j * np.deg2rad(angles))))) / 2
    expected = a if u > v else a + 90.0
    diff = abs((major - expected + 90.0) % 180.0 - 90.0)
    assert diff <= 0.5, (major, expected)


def test_star_optics_groups_per_particle(tmp_path):
    from emflow.spa.files import ctfs_from_star

    groups = np.array([1, 2, 2, 1])
    star, path, stack = _star(tmp_path, [1e4, 1.1e4, 1.2e4, 1.3e4], [1e4, 1.1e4, 1.2e4, 1.3e4], [0.0] * 4, groups)
    ctfs = ctfs_from_star(star, 4, path, stack_path=stack)
    assert [c.voltage_kv for c in ctfs] == [300.0, 200.0, 200.0, 300.0]
    assert [c.cs_mm for c in ctfs] == [2.7, 1.4, 1.4, 2.7]
    np.testing.assert_allclose([c.ampcont for c in ctfs], [0.1, 0.07, 0.07, 0.1])


def test_star_rows_follow_image_names(tmp_path):
    from emflow.spa.files import ctfs_from_star

    u = np.array([1e4, 1.5e4, 2e4])
    star, path, stack = _star(tmp_path, u, u, [0.0] * 3, row_order=[2, 0, 1])
    ctfs = ctfs_from_star(star, 3, path, stack_path=stack)
    np.testing.assert_allclose([c.defocus_um for c in ctfs], [1.0, 1.5, 2.0])
    with pytest.raises(InputError, match="STAR rows"):
        ctfs_from_star(star, 4, path, stack_path=stack)
    with pytest.raises(InputError, match="not in other.mrcs"):
        ctfs_from_star(star, 3, path, stack_path=str(tmp_path / "other.mrcs"))


def test_star_missing_optics_value_is_refused(tmp_path):
    from emflow.spa.files import ctfs_from_star

    star, path, stack = _star(tmp_path, [1e4], [1e4], [0.0])
    del star["optics"]["rlnVoltage"]
    with pytest.raises(InputError, match="rlnVoltage"):
        ctfs_from_star(star, 1, path, stack_path=stack)


def test_pixel_size_from_star_optics_checked_against_the_stack(tmp_path):
    """emflow.pixel_size.particles_pixel_size (pixel branch) on RELION-layout files: the optics group's
    rlnImagePixelSize is the value, the stack header and spa.apix are checks."""
    from emflow.pixel_size import particles_pixel_size

    _, path, stack = _star(tmp_path, [1e4], [1e4], [0.0], optics=[OPTICS[0]])
    assert particles_pixel_size(stack, path, expected=2.0, key="spa.apix") == 2.0
    with pytest.raises(InputError, match="spa.apix"):
        particles_pixel_size(stack, path, expected=2.5, key="spa.apix")
    relion_spa.write_stack(stack, np.zeros((1, 64, 64), np.float32), 2.6)  # header disagrees with the STAR
    with pytest.raises(InputError, match="2.6"):
        particles_pixel_size(stack, path, key="spa.apix")
    relion_spa.write_stack(stack, np.zeros((1, 64, 64), np.float32), 1.0)  # unset header: the STAR's value
    assert particles_pixel_size(stack, path, key="spa.apix") == 2.0
    with pytest.raises(InputError, match="several pixel sizes"):  # one stack, one pixel size
        _, p2, s2 = _star(tmp_path, [1e4, 1e4], [1e4, 1e4], [0.0, 0.0], groups=np.array([1, 2]),
                          optics=[OPTICS[0], {**OPTICS[1], "apix": 2.5}])
        particles_pixel_size(s2, p2, key="spa.apix")


@pytest.fixture(scope="module")
def bright_particles():
    """300 protein-white particles of the asymmetric 70S ribosome, box 32, SNR 0.08, with CTFs."""
    from emflow.demo.data import structure_path
    from emflow.demo.simulate import simulate_spa
    from emflow.io import read_mrc

    ref, ap = read_mrc(str(structure_path("ribosome70S")))
    apix = ap * ref.shape[0] / 32 * 1.3
    stack, truth = simulate_spa(ref, ap, apix=apix, box=32, n=300, rng=np.random.default_rng(3), snr=0.08)
    return stack, truth.ctfs(), apix


def test_contrast_declared_and_checked(bright_particles):
    """Dark (raw) data declared dark pass; declared bright they are refused (phase-flipped and not)."""
    from emflow.spa.files import check_contrast, to_protein_white
    from emflow.spa.refine_loop import phase_flip_particles

    bright, ctfs, apix = bright_particles
    dark = -bright
    ok = phase_flip_particles(to_protein_white(dark, "dark"), ctfs, apix)
    assert check_contrast(ok, "dark", "input.spa_contrast") > 3
    wrong = phase_flip_particles(to_protein_white(dark, "bright"), ctfs, apix)
    with pytest.raises(InputError, match="declared bright but look dark"):
        check_contrast(wrong, "bright", "input.spa_contrast")
    with pytest.raises(InputError, match="declared dark but look bright"):
        check_contrast(phase_flip_particles(to_protein_white(bright, "dark"), ctfs, apix), "dark", "x")
    with pytest.raises(InputError, match="declared bright"):  # without CTF correction too
        check_contrast(to_protein_white(dark, "bright"), "bright", "x")
    with pytest.raises(InputError):
        to_protein_white(dark, "white")


def test_prepare_streams_blocks_with_the_same_result(bright_particles, tmp_path):
    """spa_prepare reads, converts, phase-flips and writes the stack 12 particles at a time (its memory bound):
    the same particles.hdf (images and CTF headers) as in one block; the contrast check still sees every
    particle, and a refused stack leaves no output (input written by tests/foreign, RELION 3.1 layout)."""
    from emflow.spa.files import prepare_particles, read_particles

    bright, ctfs, apix = bright_particles
    n, box = len(bright), bright.shape[-1]
    relion_spa.write_stack(tmp_path / "p.mrcs", -bright, apix)  # raw contrast: protein dark
    du = np.array([c.defocus_um for c in ctfs]) * 1e4
    relion_spa.write_particles_star(
        tmp_path / "p.star", tmp_path / "p.mrcs", defocus_u_a=du, defocus_v_a=du,
        defocus_angle_deg=np.zeros(n), optics_group=np.ones(n, int),
        optics=[{"voltage": ctfs[0].voltage_kv, "cs": ctfs[0].cs_mm, "ampcont": ctfs[0].ampcont, "apix": apix,
                 "box": box}])
    args = (str(tmp_path / "p.mrcs"), str(tmp_path / "p.star"), "dark", None, "spa.apix", None)
    one = prepare_particles(*args, out=str(tmp_path / "one.hdf"))
    small = prepare_particles(*args, out=str(tmp_path / "blocks.hdf"), block_mb=12 * box * box * 4 / 1e6)
    assert one[:3] == small[:3] == (n, box, one[2]) and abs(one[3] - small[3]) < 1e-6 and one[3] > 3
    a, ca, _ = read_particles(str(tmp_path / "one.hdf"))
    b, cb, _ = read_particles(str(tmp_path / "blocks.hdf"))
    np.testing.assert_array_equal(a, b)
    assert [c.defocus_um for c in ca] == [c.defocus_um for c in cb]
    with pytest.raises(InputError, match="declared bright but look dark"):
        prepare_particles(args[0], args[1], "bright", *args[3:], out=str(tmp_path / "bad.hdf"), block_mb=0.05)
    assert not (tmp_path / "bad.hdf").exists()
