"""Subtilt extraction, per-particle reconstruction, picks input and .lst sets against simulated truth."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from emflow.demo.data import structure_path
from emflow.demo.metadata import tilt_series_info
from emflow.demo.phantom import resample_map
from emflow.demo.simulate import simulate_tilt_series
from emflow.errors import InputError
from emflow.fsc import fsc, resolution
from emflow.io import (
    read_hdf_stack,
    read_lst,
    transform_from_dict,
    write_hdf_stack,
    write_info_json,
)
from emflow.projection import project
from emflow.rotate import rotate_volume
from emflow.sta.extract import (
    ExtractParams,
    TiltGeometry,
    check_picks,
    extract_particles,
    extraction_boxes,
    particle_headers,
    prepare_tilt_series,
    read_picks,
    subtilt_headers,
)
from emflow.sta.sets import set_entries, spatial_split, write_set

APIX = 10.48  # ribosome at 10.48 Å/px: box 32, pad2d 64
TILTS = np.linspace(-60.0, 60.0, 21)
SHAPE = (128, 128, 32)


@pytest.fixture(scope="module")
def ribosome():
    from emflow.io import read_mrc

    ref, apix_ref = read_mrc(structure_path("ribosome70S"))
    return ref, apix_ref, resample_map(ref, apix_ref, APIX)


def _simulate(ribosome, shape=SHAPE, seed=3, snr=None, **kw):
    ref, apix_ref, _ = ribosome
    stack, truth = simulate_tilt_series(ref, apix_ref, apix=APIX, shape_xyz=shape, tilts_deg=TILTS, n_particles=5,
                                        rng=np.random.default_rng(seed), snr=snr, dose_per_tilt=0.0, **kw)
    info = tilt_series_info(truth, truth.positions_px, label="initribo")
    geom = TiltGeometry.from_info(info, apix=APIX, voltage_kv=300.0, cs_mm=2.7, ampcont=0.1)
    return stack, truth, info, geom


@pytest.fixture(scope="module")
def clean(ribosome):
    return _simulate(ribosome)


def _params(truth, **kw):
    box, pad2d = extraction_boxes(truth.box, 1, 2.0)
    return ExtractParams(box=box, pad2d=pad2d, **kw)


def _fsc_to_truth(res, truth, vol):
    return [fsc(res.volumes[i], rotate_volume(vol, truth.rotations[i])) for i in range(len(truth.rotations))]


def test_boxes_follow_eman():
    assert extraction_boxes(64, 1, 2.0) == (64, 128)
    assert extraction_boxes(64, 2, 2.0) == (32, 64)
    assert extraction_boxes(50, 1, 2.0) == (52, 104)  # EMAN good sizes: 52, 104
    assert extraction_boxes(100, 4, 2.0) == (32, 64)  # int(100 / 4) = 25 -> 32


def test_particle_reconstructs_the_rotated_reference(ribosome, clean):
    """Noise-free: each particle at its true position reconstructs ref(R_p⁻¹ r) (wedge-limited)."""
    stack, truth, _, geom = clean
    res = extract_particles(prepare_tilt_series(stack), geom, truth.positions_px, _params(truth))
    assert res.volumes.shape == (5, 32, 32, 32) and res.subtilts.shape == (5 * 21, 64, 64)
    assert np.all(res.n_subtilts == 21) and not res.zero_volume.any()
    for curve in _fsc_to_truth(res, truth, ribosome[2]):
        low = curve.freq <= APIX / 30.0
        assert curve.fsc[low].min() > 0.7  # FSC > 0.7 to 30 Å at 10.48 Å/px, ±60° wedge
        assert resolution(curve, APIX, 0.5) < 27.0  # measured 21.5-25.1 Å (Nyquist 21 Å)
    # a wrong orientation must score clearly worse (the test can fail)
    wrong = fsc(res.volumes[0], rotate_volume(ribosome[2], truth.rotations[1]))
    assert resolution(wrong, APIX, 0.5) > 40.0


def test_phase_flip_makes_high_frequencies_positive(ribosome, clean):
    stack, truth, _, geom = clean
    prepared = prepare_tilt_series(stack)
    flipped = _fsc_to_truth(extract_particles(prepared, geom, truth.positions_px, _params(truth)), truth, ribosome[2])
    raw = _fsc_to_truth(extract_particles(prepared, geom, truth.positions_px, _params(truth, phase_flip=False)),
                        truth, ribosome[2])
    beyond_zero = flipped[0].freq / APIX > 1 / 24.0  # first CTF zero at 3 µm, 300 kV is ~24 Å
    assert np.mean([c.fsc[beyond_zero].mean() for c in flipped]) > 0.3
    assert np.mean([c.fsc[beyond_zero].mean() for c in raw]) < -0.2  # contrast reversed past the zero


def test_subtilt_at_zero_tilt_is_centred_on_the_particle(ribosome, clean):
    stack, truth, _, geom = clean
    res = extract_particles(prepare_tilt_series(stack), geom, truth.positions_px, _params(truth, phase_flip=False))
    t0 = int(np.argmin(np.abs(TILTS)))
    for i in range(5):
        k = int(np.flatnonzero((res.particle == i) & (res.tilt_id == t0))[0])
        proj = project(ribosome[2], geom.rotations[t0][None] @ truth.rotations[i][None])[0]
        ref = np.zeros((64, 64), np.float32)
        ref[16:48, 16:48] = proj
        ccf = np.fft.fftshift(np.fft.irfft2(np.fft.rfft2(res.subtilts[k]) * np.conj(np.fft.rfft2(ref)), s=(64, 64)))
        peak = np.array(np.unravel_index(np.argmax(ccf), ccf.shape))[::-1] - 32
        # content sits at the residual (dx, dy) of xform.projection, |d| <= 0.5
        assert np.all(np.abs(peak - res.shifts[k]) <= 1.0), (i, peak, res.shifts[k])
        assert np.all(np.abs(res.shifts[k]) <= 0.5)
        # and the crop centre is the true projected position
        q = geom.rotations[t0] @ truth.positions_px[i]
        np.testing.assert_allclose(res.crop_xy[k] + res.shifts[k], q[:2] + 64, atol=1e-9)


def test_depth_corrected_defocus_beats_midplane_defocus(ribosome):
    """Wide specimen, 100 kV: particles far from the tilt axis have a defocus gradient of ~0.2 µm."""
    stack, truth, _, geom = _simulate(ribosome, shape=(512, 64, 32), seed=5, defocus_um=4.0, voltage_kv=100.0)
    prepared = prepare_tilt_series(stack)
    res = extract_particles(prepared, geom, truth.positions_px, _params(truth))
    mid = extract_particles(prepared, geom, truth.positions_px, _params(truth, depth_defocus=False))
    # the flip used the simulator's per-particle defocus exactly
    q = np.einsum("tij,pj->pti", geom.rotations, truth.positions_px)
    expect = truth.defocus_um[None] - q[..., 2] * APIX / 1e4
    np.testing.assert_allclose(res.defocus_um, expect[res.particle, res.tilt_id], atol=1e-12)
    hi = slice(8, None)  # shells beyond ~40 Å
    good = np.array([c.fsc[hi].mean() for c in _fsc_to_truth(res, truth, ribosome[2])])
    bad = np.array([c.fsc[hi].mean() for c in _fsc_to_truth(mid, truth, ribosome[2])])
    far = int(np.argmax(np.abs(truth.positions_px[:, 0])))
    assert good.mean() > bad.mean()
    assert good[far] > bad[far] + 0.01  # measured 0.566 vs 0.549
    # RELION rlnTomoHand = +1 (tomogram.cpp L280: df += hand · apix · z) turns the gradient around
    flipped = extract_particles(prepared, dataclasses.replace(geom, defocus_hand=1.0), truth.positions_px,
                                _params(truth))
    np.testing.assert_allclose(flipped.defocus_um - truth.defocus_um[flipped.particle],
                               -(res.defocus_um - truth.defocus_um[res.particle]), atol=1e-12)


def test_noisy_extraction_still_finds_the_particle(ribosome):
    stack, truth, _, geom = _simulate(ribosome, snr=1.0)
    res = extract_particles(prepare_tilt_series(stack), geom, truth.positions_px, _params(truth))
    for curve in _fsc_to_truth(res, truth, ribosome[2]):
        assert curve.fsc[curve.freq <= APIX / 40.0].mean() > 0.5
    # without the flip the stored subtilts are the normalised, clamped, masked crops
    raw = extract_particles(prepare_tilt_series(stack), geom, truth.positions_px, _params(truth, phase_flip=False))
    assert np.abs(raw.subtilts).max() <= 8.0 and np.abs(raw.subtilts[:, :3, :3]).max() < 1e-3  # masked corners


def test_too_few_tilts_gives_zero_volume(clean):
    stack, truth, _, geom = clean
    res = extract_particles(prepare_tilt_series(stack), geom, truth.positions_px, _params(truth, maxtilt_deg=10.0))
    assert np.all(res.n_subtilts == 3)  # -6, 0, 6 of 21 < 21/5
    assert res.zero_volume.all() and not res.volumes.any()


def test_picks_from_info_json_only(tmp_path, clean):
    _, truth, info, _ = clean
    shape_unbin = SHAPE
    p_json = tmp_path / "t_info.json"
    write_info_json(p_json, info)
    coords, boxsize, _ = read_picks(p_json, "initribo")
    np.testing.assert_allclose(coords, truth.positions_px)
    assert boxsize == truth.box
    with pytest.raises(InputError, match="no particle class named 'ribo'"):
        read_picks(p_json, "ribo")
    # STAR/text picks are converted once, on import (tests/test_conventions_*.py); extraction
    # refuses them rather than guess their origin
    corner = truth.positions_px + np.array(shape_unbin) // 2
    p_txt = tmp_path / "p.txt"
    np.savetxt(p_txt, corner)
    with pytest.raises(InputError, match="info json"):
        read_picks(p_txt, None)


def test_pick_outside_or_at_edge(tmp_path):
    shape = (128, 128, 32)
    c = np.array([[0.0, 0.0, 0.0], [60.0, 0.0, 0.0]])
    with pytest.raises(InputError, match=r"p\.star: particle 1 .* within half a box") as e:
        check_picks(c, shape, 32, source=tmp_path / "p.star", skip_edge=False)
    assert "extract.skip_edge" in str(e.value)
    keep, excl = check_picks(c, shape, 32, source="p.star", skip_edge=True)
    assert keep.tolist() == [True, False] and excl[0]["index"] == 1
    with pytest.raises(InputError, match=r"t_info\.json: particle 0 .* outside the tomogram"):
        check_picks(np.array([[0.0, 0.0, 40.0]]), shape, 32, source="t_info.json", skip_edge=True)


def test_headers_round_trip_through_hdf(tmp_path, clean):
    stack, truth, _, geom = clean
    res = extract_particles(prepare_tilt_series(stack), geom, truth.positions_px[:2], _params(truth))
    f2, f3 = str(tmp_path / "p2.hdf"), str(tmp_path / "p3.hdf")
    write_hdf_stack(f2, res.subtilts, subtilt_headers(res, truth.positions_px[:2], geom, file_threed=f3))
    write_hdf_stack(f3, res.volumes, particle_headers(res, truth.positions_px[:2], file_twod=f2))
    _, h2 = read_hdf_stack(f2, indices=[25])
    R, t = transform_from_dict(h2[0]["xform.projection"])
    np.testing.assert_allclose(R, geom.rotations[res.tilt_id[25]], atol=1e-6)
    np.testing.assert_allclose(t[:2], res.shifts[25], atol=1e-6)
    assert h2[0]["model_id"] == 1 and h2[0]["ctf"]["defocus"] == pytest.approx(res.defocus_um[25], abs=1e-5)
    _, h3 = read_hdf_stack(f3)
    assert list(h3[1]["class_ptcl_idxs"]) == list(range(21, 42)) and h3[1]["class_ptcl_src"] == f2
    np.testing.assert_allclose(h3[0]["ptcl_source_coord"], truth.positions_px[0], atol=1e-3)


def test_sets_lst_count_and_spatial_split(tmp_path):
    x1 = np.array([5.0, -3.0, 10.0, 0.0, 7.0])
    x2 = np.array([1.0, 1.0, 1.0, 1.0])  # ties: split by order
    assert spatial_split(x1).tolist() == [0, 1, 0, 1, 0]
    assert spatial_split(x2).tolist() == [1, 1, 0, 0]
    groups = [("particles3d/a__l.hdf", np.column_stack([x1, x1, x1])),
              ("particles3d/b__l.hdf", np.column_stack([x2, x2, x2]))]
    path = tmp_path / "sets" / "l.lst"
    path.parent.mkdir()
    write_set(path, set_entries(groups, spliteo=True))
    back = read_lst(path)
    assert len(back) == 9
    assert [e.index for e in back] == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert sum(e.meta["class"] for e in back) == 2 + 2
    assert back[5].path == "particles3d/b__l.hdf"
    write_set(path, set_entries(groups, spliteo=False))
    assert all(e.meta == {} for e in read_lst(path))
    assert json.loads(json.dumps([e.meta for e in back]))  # plain JSON metadata


@pytest.mark.parametrize("shrink", [1, 2])
def test_streamed_chunks_equal_the_in_memory_extraction(tmp_path, clean, shrink):
    """Chunk jobs (lazy memory-mapped tilt series, blocks of particles written as made) joined by the
    gather give the same subtilts, volumes and headers as the all-in-memory path."""
    from emflow.io import write_mrc
    from emflow.sta.extract import TiltSource, chunk_bounds, extract_to_files, gather_extraction, open_tilt_series

    stack, truth, _, geom = clean
    box, pad2d = extraction_boxes(truth.box, shrink, 2.0)
    params = ExtractParams(box=box, pad2d=pad2d, shrink=shrink)
    coords = truth.positions_px
    ref = extract_particles(prepare_tilt_series(stack, shrink), geom, coords, params)
    ts = tmp_path / "ts.mrc"
    write_mrc(ts, stack.astype(np.float32), APIX)
    raw = open_tilt_series(ts)
    assert isinstance(raw, np.memmap) or isinstance(getattr(raw, "base", None), np.memmap)
    source = TiltSource(raw, shrink)
    f2, f3 = str(tmp_path / "sub.hdf"), str(tmp_path / "p3d.hdf")
    chunks = []
    bounds = chunk_bounds(len(coords), 2)
    assert bounds == [(0, 2), (2, 4), (4, 5)]
    for j, (a, b) in enumerate(bounds):
        c2, c3 = str(tmp_path / f"sub_{j}.hdf"), str(tmp_path / f"p3d_{j}.hdf")
        extract_to_files(source, geom, coords[a:b], params, particles_path=c2, particles3d_path=c3,
                         file_threed=f3, file_twod=f2, first_model_id=a, block=1)
        chunks.append((c2, c3))
    gather_extraction(chunks, f2, f3)
    sub, h2 = read_hdf_stack(f2)
    vol, h3 = read_hdf_stack(f3)
    np.testing.assert_allclose(sub, ref.subtilts, atol=2e-5)
    np.testing.assert_allclose(vol, ref.volumes, atol=2e-5)
    r2 = subtilt_headers(ref, coords, geom, file_threed=f3)
    r3 = particle_headers(ref, coords, file_twod=f2)
    for got, want in zip(h2, r2):
        assert got["model_id"] == want["model_id"] and got["tilt_id"] == want["tilt_id"]
        assert got["file_threed"] == f3
        np.testing.assert_allclose(got["ptcl_source_coord"], want["ptcl_source_coord"], atol=1e-4)
        assert got["ctf"]["defocus"] == pytest.approx(want["ctf"]["defocus"], abs=1e-6)
    for got, want in zip(h3, r3):
        assert list(np.atleast_1d(got["class_ptcl_idxs"])) == want["class_ptcl_idxs"]
        assert got["model_id"] == want["model_id"] and got["class_ptcl_src"] == f2
    assert len(h2) == len(r2) and len(h3) == len(r3) == 5


def test_plan_uses_the_declared_thickness_of_the_users_tomogram(tmp_path):
    """Imported picks refer to the user's tomogram: a pick 150 unbinned px above the centre is inside
    a declared 400 px thick tomogram (import: rlnTomoSizeZ / tilt.com THICKNESS) though outside the
    128 px one emflow reconstructs; without the declaration it is refused as outside the tomogram."""
    from emflow.io import write_mrc
    from emflow.sta.extract_steps import plan_extraction

    ts = tmp_path / "ts.mrc"
    write_mrc(ts, np.zeros((3, 256, 256), np.float32), apix=5.0)
    info = {"apix_unbin": 5.0, "class_list": {"0": {"name": "ribo", "boxsize": 32}},
            "boxes_3d": [[0.0, 0.0, 150.0, "manual", 0.0, 0], [10.0, -20.0, 5.0, "manual", 0.0, 0]]}
    extract = {"boxsize_unbin": None, "skip_edge": True, "shrink": 1, "padtwod": 2.0, "chunk_size": 10}
    declared = tmp_path / "declared_info.json"
    declared.write_text(json.dumps(info | {"tomogram_thickness_unbin_px": 400}))
    plan_extraction(tilt_series=str(ts), picks=str(declared), plan_out=str(tmp_path / "plan.json"), tomo="t",
                    label="ribo", extract=extract, thickness_unbin_px=128)
    assert json.loads((tmp_path / "plan.json").read_text())["n_picks"] == 2
    undeclared = tmp_path / "undeclared_info.json"
    undeclared.write_text(json.dumps(info))
    with pytest.raises(InputError, match="outside the tomogram"):
        plan_extraction(tilt_series=str(ts), picks=str(undeclared), plan_out=str(tmp_path / "plan2.json"),
                        tomo="t", label="ribo", extract=extract, thickness_unbin_px=128)


def test_gather_removes_the_chunk_files_only_once_its_outputs_are_complete(tmp_path, clean):
    """The extraction chunks are deleted by their gather (Snakemake keeps ``temp()`` files to the end
    of a run while a checkpoint is pending: snakemake/dag.py ``DAG.finish``), and only after the
    merged files and the summary are complete: a gather that fails leaves every chunk for the retry,
    and the merged files are the same as from a gather that keeps them."""
    import yaml

    from emflow.io import write_mrc
    from emflow.sta.extract_steps import extract_chunk, gather_chunks, plan_extraction

    stack, truth, info, _ = clean
    cfg = yaml.safe_load((pathlib.Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    ts, info_path, plan = tmp_path / "ts.mrc", tmp_path / "info.json", str(tmp_path / "plan.json")
    write_mrc(ts, stack.astype(np.float32), APIX)
    write_info_json(info_path, info)
    extract = {**cfg["extract"], "chunk_size": 2, "boxsize_unbin": truth.box}
    plan_extraction(tilt_series=str(ts), picks=str(info_path), plan_out=plan, tomo="t", label="initribo",
                    extract=extract, thickness_unbin_px=SHAPE[2])
    n_chunks = len(json.loads(pathlib.Path(plan).read_text())["chunks"])
    assert n_chunks == 3  # 5 particles in chunks of 2
    files = {k: [str(tmp_path / f"{k}_{c:03d}.{'json' if k == 'summary' else 'hdf'}") for c in range(n_chunks)]
             for k in ("particles", "particles3d", "summary")}
    for c in range(n_chunks):
        extract_chunk(tilt_series=str(ts), info_path=str(info_path), plan_path=plan, chunk=f"{c:03d}",
                      particles_out=files["particles"][c], particles3d_out=files["particles3d"][c],
                      summary_out=files["summary"][c], extract=extract,
                      microscope={**cfg["microscope"], "apix": APIX}, names={"particles": "p.hdf", "particles3d": "p3.hdf"},
                      threads=1, mem_mb=2000)
    every = [f for v in files.values() for f in v]

    def gather(tag, summaries, **kw):
        out = {k: str(tmp_path / f"{tag}_{k}") for k in ("p.hdf", "p3.hdf", "s.json")}
        gather_chunks(plan_path=plan, chunk_summaries=summaries, subtilts=files["particles"],
                      chunks3d=files["particles3d"], particles_out=out["p.hdf"], particles3d_out=out["p3.hdf"],
                      summary_out=out["s.json"], **kw)
        return out

    with pytest.raises(RuntimeError, match="2 chunk summaries for 3 chunks"):
        gather("failed", files["summary"][:2])
    assert all(pathlib.Path(f).exists() for f in every)  # a failed gather deletes nothing
    kept = gather("kept", files["summary"], remove_chunks=False)
    assert all(pathlib.Path(f).exists() for f in every)
    merged = gather("merged", files["summary"])
    assert not any(pathlib.Path(f).exists() for f in every)
    assert tmp_path.is_dir()  # a folder with other files stays
    for key in ("p.hdf", "p3.hdf"):
        a, ha = read_hdf_stack(kept[key])
        b, hb = read_hdf_stack(merged[key])
        np.testing.assert_array_equal(a, b)
        assert len(ha) == len(hb)
    assert json.loads(pathlib.Path(merged["s.json"]).read_text())["n_particles"] == 5
