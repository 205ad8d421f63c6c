"""Tomography-only workflow runs on user data in foreign formats, with real bars.

Two datasets (``kind``), the same simulated tilt series:

* ``relion5``: a RELION 5 project (``.test/user_tomo/config.yaml``, ``input.source: relion5``);
* ``imod_eman2``: an IMOD stack + ``.tlt`` in IMOD's tilt sense + ctfplotter ``.defocus``
  (``tests/foreign/imod.py``) with EMAN2 picks (an ``e2spt_boxer`` info json, class ``ribo``, box 64,
  ``tests/foreign/eman2.py``) (``.test/user_tomo/imod_eman2.yaml``, ``input.source: table``).

The data: one tilt series simulated with :mod:`emflow.demo.simulate` (a chiral 70S ribosome, the
tiny sizes of ``.test/config.yaml``), but every FILE the workflow reads is written by
``tests/foreign/relion.py`` in RELION 5's layout: ``tomograms.star`` (``rlnTomoSizeZ``, pixel size,
optics), the per-tilt-series STAR (``rlnTomoXTilt/YTilt/ZRot``, ``rlnTomoX/YShiftAngst``,
``rlnDefocusU/V/Angle``, ``rlnMicrographPreExposure``), the ``.mrcs`` stack its
``rlnMicrographName`` rows index, and a particles STAR with ``rlnCenteredCoordinate*Angst``,
non-zero ``rlnOrigin*Angst`` and the picks of a second tomogram mixed in.

The RELION angles are derived from RELION's definition, not from emflow: the test checks that
RELION's projection matrix (``tomogram.cpp`` L17-62, transcribed in ``tests/foreign/relion.py``)
puts every true particle where the simulator put it, before writing the files.

Bars (the run is ``input.source: relion5``, ``workflows.single_particle: false``):

* the imported picks are the true particles (F1 = 1 within the particle radius, z included);
* template matching with the SGD model finds them (F1 ≥ 0.8);
* the refined map agrees with the true map better than with its mirror image (the hand), and
  reaches FSC 0.5 vs the truth at ≤ 45 Å.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from foreign import eman2 as fe
from foreign import imod as fimod
from foreign import relion as frel
from workflow_runner import copy_workflow, run_snakemake

from emflow.demo import scores
from emflow.demo.data import structure_path
from emflow.demo.simulate import noisy_picks, resample_map, simulate_tilt_series, tilt_range
from emflow.geometry import relion_to_matrix, tilt_matrix
from emflow.io import read_mrc, read_star

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

APIX = 5.24
SHAPE = (256, 256, 128)
NAME = "TS_01"


def simulate():
    """One tilt series of the chiral 70S ribosome at the tiny sizes of .test/config.yaml."""
    ref, apix_ref = read_mrc(structure_path("ribosome70S"))
    vol = resample_map(ref, apix_ref, APIX)
    rng = np.random.default_rng(7)
    tilts = np.array(tilt_range(-60.0, 60.0, 6.0))
    stack, truth = simulate_tilt_series(vol, APIX, apix=APIX, shape_xyz=SHAPE, tilts_deg=tilts, n_particles=12,
                                        rng=rng, snr=0.5, defocus_um=3.0, dose_per_tilt=3.0, min_dist_px=56,
                                        defocus_jitter_um=0.1, workers=2)
    return stack, truth, noisy_picks(truth.positions_px, 2.0, rng), rng


def simulated_position(truth, i, p):
    """Where the simulator put point ``p`` (px from the volume centre) in tilt image ``i`` (px from
    the image centre): its definition, ``(tilt_matrix(tilt, axis) p)_xy``."""
    return (tilt_matrix(truth.tilts_deg[i], truth.tilt_axis_deg) @ p)[:2]


def write_imod_eman2(root: pathlib.Path) -> dict:
    """IMOD stack, .tlt (IMOD's angles) and .defocus + EMAN2 picks json under ``root``."""
    stack, truth, picks, _ = simulate()
    # IMOD's angle for this geometry: a view of IMOD angle θ is u = x cos θ + z sin θ (tilt.f90,
    # tests/foreign/imod.py aligned_position); the simulator's is x cos t − z sin t, so θ = −t
    # (checked point by point below, before any file is written).
    theta = -truth.tilts_deg
    assert truth.tilt_axis_deg == 0
    for i in range(len(theta)):
        np.testing.assert_allclose(fimod.aligned_position(truth.positions_px, theta[i]),
                                   [simulated_position(truth, i, p) for p in truth.positions_px], atol=1e-6)
    (root / "imod").mkdir(parents=True)
    fimod.write_mrc(root / "imod" / f"{NAME}.st", stack, APIX, stack=True)
    fimod.write_tlt(root / "imod" / f"{NAME}.tlt", theta)
    df_nm = np.asarray(truth.defocus_recorded_um) * 1000
    fimod.write_defocus_v2(root / "imod" / f"{NAME}.defocus",
                           [(i + 1, i + 1, a, a, d) for i, (a, d) in enumerate(zip(theta, df_nm))])
    # e2spt_boxer's json: boxes_3d from the tomogram centre (e2spt_extract.py L370-378), tlt_params
    # with EMAN's ytilt (= the simulator's t, e2tomogram.py get_xf_pos)
    fe.write_info_json(root / "eman2" / "info" / f"{NAME}_info.json",
                       tlt_params=[[0, 0, 0, t, 0] for t in truth.tilts_deg], apix_unbin=APIX,
                       boxes=[[*p, "manual", 0.0, 0] for p in picks], class_list={0: {"name": "ribo", "boxsize": 64}})
    return truth.to_dict() | {"tomogram": NAME, "picks_px": picks.tolist()}


def write_relion5(root: pathlib.Path) -> dict:
    """Simulate one tilt series and write it as a RELION 5 project under ``root``; returns the truth."""
    stack, truth, picks, rng = simulate()
    tilts = truth.tilts_deg
    # RELION's angles for this geometry: the simulator projects p (px from the centre) to
    # (tilt_matrix(tilt, axis) p)_xy + n//2. RELION's Ry is active (t3Matrix.h L478-495), so its
    # rlnTomoYTilt is −tilt and rlnTomoZRot −axis; checked point by point against RELION's matrix.
    ytilt, zrot = -truth.tilts_deg, np.full(len(tilts), -truth.tilt_axis_deg)
    for i in range(len(tilts)):
        P = frel.projection_matrix(0.0, ytilt[i], zrot[i], 0.0, 0.0, APIX, SHAPE, SHAPE[:2])
        for p in truth.positions_px:
            sim = simulated_position(truth, i, p) + np.array(SHAPE[:2]) // 2
            relion = (P @ np.append(p + np.array(SHAPE) // 2, 1.0))[:2]
            np.testing.assert_allclose(relion, sim, atol=1e-6)
    df = np.asarray(truth.defocus_recorded_um) * 1e4
    star = frel.write_project(root, {NAME: {
        "stack": stack, "size_xyz": SHAPE, "xtilt": np.zeros(len(tilts)), "ytilt": ytilt, "zrot": zrot,
        "xshift_angst": np.zeros(len(tilts)), "yshift_angst": np.zeros(len(tilts)), "defocus_u": df,
        "defocus_v": df, "defocus_angle": np.zeros(len(tilts)), "pre_exposure": truth.dose_e_per_a2}}, apix=APIX)
    origins_a = rng.uniform(-10, 10, picks.shape)  # RELION: position = coordinate − origin
    centred_a = (picks + np.array(SHAPE) / 2 - np.array(SHAPE) // 2) * APIX + origins_a
    decoy = rng.uniform(-100, 100, (5, 3)) * [1, 1, 0.4] * APIX  # another tomogram's particles, same file
    frel.write_particles_star(root / "particles.star", tomo_names=[NAME] * len(picks) + ["TS_99"] * 5, apix=APIX,
                              centred_angst=np.vstack([centred_a, decoy]),
                              origins_angst=np.vstack([origins_a, np.zeros((5, 3))]))
    assert star.name == "tomograms.star"
    return truth.to_dict() | {"tomogram": NAME, "picks_px": picks.tolist()}


def spa_stack_workaround(work: pathlib.Path) -> list[str]:
    """While rules/spa.smk reads the SPA stack's header at parse time even with
    ``workflows.single_particle: false`` (issue 12, fixed on the spa branch), point
    ``input.spa_particles`` at a placeholder stack; nothing reads it otherwise. Returns the extra
    config files (none once spa.smk no longer does that)."""
    if "SPA_ON" in (work / "rules" / "spa.smk").read_text():  # the spa branch's fix is in
        return []
    frel.write_mrc(work / "user_data" / "spa_placeholder.mrcs", np.zeros((1, 8, 8), np.float32), APIX)
    (work / "user_data" / "spa_placeholder.yaml").write_text("input:\n  spa_particles: user_data/spa_placeholder.mrcs\n")
    return ["user_data/spa_placeholder.yaml"]


KINDS = {"relion5": (write_relion5, "relion", ".test/user_tomo/config.yaml", "manual"),
         "imod_eman2": (write_imod_eman2, "", ".test/user_tomo/imod_eman2.yaml", "ribo")}


@pytest.fixture(scope="module", params=list(KINDS))
def user_tomo_run(request, tmp_path_factory):
    writer, sub, config, label = KINDS[request.param]
    work = copy_workflow(tmp_path_factory.mktemp(f"user_tomo_{request.param}") / "wf")
    truth = writer(work / "user_data" / sub) | {"label": label}
    extra = spa_stack_workaround(work)
    out, seconds = run_snakemake(work, None, ["--cores", "2", "--configfile", ".test/config.yaml", config, *extra],
                                 timeout=1500)
    print(f"user_tomo workflow ({request.param}): {seconds:.0f} s")
    return work, truth, out


def _picks(path: pathlib.Path, apix: float):
    table = next(iter(read_star(path).values()), {})
    xyz = np.stack([np.asarray(table[f"rlnCenteredCoordinate{a}Angst"], float) for a in "XYZ"], 1) / apix
    rots = relion_to_matrix(*(np.asarray(table[k], float) for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    return xyz, rots.reshape(-1, 3, 3)


def test_user_tomo_runs_without_demo_files(user_tomo_run):
    work, _, _ = user_tomo_run
    assert not (work / "results" / "demo").exists()
    assert not (work / "results" / "spa").exists()


def test_imported_picks_are_the_true_particles(user_tomo_run):
    work, truth, _ = user_tomo_run
    info = json.loads((work / "results" / "import" / "info" / f"{NAME}_info.json").read_text())
    (cid,) = [int(k) for k, v in info["class_list"].items() if v["name"] == truth["label"]]
    xyz = np.array([b[:3] for b in info["boxes_3d"] if b[5] == cid])
    assert len(xyz) == len(truth["particles"])  # (relion5) the decoy tomogram's rows were left out
    s, _ = scores.score_tomogram_picks(xyz, None, truth)
    assert s["f1"] == 1.0, s
    np.testing.assert_allclose(xyz, truth["picks_px"], atol=1e-3)  # origins applied, z from the centre
    np.testing.assert_allclose(np.array(info["tlt_params"])[:, 3], truth["tilts_deg"], atol=1e-6)  # the tilt sense
    np.testing.assert_allclose(info["defocus"], truth["defocus_recorded_um"], atol=2e-3)


def test_template_matching_finds_the_particles(user_tomo_run):
    work, truth, _ = user_tomo_run
    xyz, rots = _picks(work / "results" / "picks" / f"{NAME}__picks.star", APIX)
    s, _ = scores.score_tomogram_picks(xyz, None, truth)
    print("template matching on user data:", s)
    assert s["f1"] >= 0.8, s


def test_refined_map_has_the_hand_of_the_truth(user_tomo_run):
    from emflow.sta.postprocess import truth_in_map_frame
    from emflow.sta.spt_eval import evaluate_iteration, match_truth
    from emflow.sta.spt_files import read_map, read_state, read_tables

    work, truth, _ = user_tomo_run
    runs = sorted((work / "results").glob("spt*/**/particle_info_3d.lst"))
    assert runs, "no subtomogram refinement ran"
    run = runs[0].parent
    last = sorted(run.glob("threed_[0-9][0-9].hdf"))[-1]
    it = last.stem.split("_")[1]
    table = read_tables(str(run / "particle_info_3d.lst"), str(run / "particle_info_2d.lst"))
    state = read_state(table, str(run / f"aliptcls3d_{it}.lst"), str(run / f"aliptcls2d_{it}.lst"))
    final, apix = read_map(str(last))
    t = {NAME: {"picks": np.asarray(truth["picks_px"]),
                "positions": np.array([p["xyz_px"] for p in truth["particles"]]),
                "rotations": np.array([p["matrix"] for p in truth["particles"]])}}
    import yaml

    shrink = yaml.safe_load((work / ".test" / "config.yaml").read_text()).get("extract", {}).get("shrink", 1)
    rot, pos = match_truth(table, t, shrink=shrink)
    ref, ref_apix = read_mrc(structure_path("ribosome70S"))
    truth_map = resample_map(ref, ref_apix, apix, box=final.shape[0])
    ev = evaluate_iteration(table, state, final, np.asarray(truth_map, np.float32), apix, rot, pos)
    framed = truth_in_map_frame(truth_map, np.array(ev["frame_rotation"]), np.array(ev["frame_shift_px"]))
    hand = scores.map_vs_truth(final, framed, apix)
    print("refined map vs truth:", {k: ev[k] for k in ("fsc_truth_05_a", "median_orientation_deg", "n_particles")},
          {k: hand[k] for k in ("hand_fsc_true", "hand_fsc_mirror")})
    assert hand["hand_fsc_true"] > hand["hand_fsc_mirror"] + 0.05, hand
    assert ev["fsc_truth_05_a"] is not None and ev["fsc_truth_05_a"] <= 45.0, ev["fsc_truth_05_a"]


def test_exported_particles_read_back_as_relion5(user_tomo_run):
    """particles_final.star is RELION 5's layout: it reads back (rlnTomoName, centred Å, optics pixel
    size) onto the true particles."""
    from emflow.io.relion_tomo import particles_by_tomogram, relion_particles

    work, truth, _ = user_tomo_run
    (star,) = (work / "results").glob("spt*/**/particles_final.star")
    table, optics, groups = particles_by_tomogram(star)
    assert list(groups) == [NAME] and optics["rlnTomoTiltSeriesPixelSize"][0] == pytest.approx(APIX)
    p = relion_particles(table, optics, groups[NAME], apix=APIX, size_xyz=SHAPE, source=star)
    s, _ = scores.score_tomogram_picks(p.coords, None, truth)
    # every exported particle lands on a true one (recall is template matching's, tested above;
    # picks whose box crosses the image edge are skipped by extraction)
    assert s["precision"] == 1.0 and s["true_positives"] == len(p.coords) >= len(truth["particles"]) // 2, s
    assert p.eulers_eman is not None and np.isfinite(p.eulers_eman).all()


def test_exported_tomograms_star_carries_the_input_geometry(user_tomo_run):
    """tomograms.star beside particles_final.star (RELION 5 layout) holds each tilt's projection
    geometry and CTF as imported, and the particles read through it land on the true ones."""
    import json

    from emflow.io.relion_tomo import (
        particles_by_tomogram,
        read_relion_tomograms,
        relion_particles,
        relion_tilt_series_info,
    )

    work, truth, _ = user_tomo_run
    (star,) = (work / "results").glob("spt*/**/particles_final.star")
    tomo = read_relion_tomograms(star.parent / "tomograms.star")[NAME]
    exported = relion_tilt_series_info(tomo)
    imported = json.loads((work / "results" / "import" / "info" / f"{NAME}_info.json").read_text())
    np.testing.assert_allclose(np.asarray(exported["tlt_params"])[:, :5],
                               np.asarray(imported["tlt_params"])[:, :5], atol=1e-3)
    np.testing.assert_allclose(exported["defocus"], imported["defocus"], atol=1e-4)
    if (work / "user_data" / "relion" / "tomograms.star").exists():  # the user's own RELION 5 project
        source = relion_tilt_series_info(read_relion_tomograms(work / "user_data" / "relion" / "tomograms.star")[NAME])
        np.testing.assert_allclose(exported["tlt_params"], source["tlt_params"], atol=1e-3)
    assert tomo.size_xyz[:2] == SHAPE[:2] and tomo.apix == pytest.approx(APIX)
    table, optics, groups = particles_by_tomogram(star)
    p = relion_particles(table, optics, groups[NAME], apix=tomo.apix, size_xyz=tomo.size_xyz, source=star)
    s, _ = scores.score_tomogram_picks(p.coords, None, truth)
    assert s["precision"] == 1.0 and s["true_positives"] == len(p.coords), s


def test_eman2_project_as_is(tmp_path):
    """``input.source: eman2_project`` on an EMAN2 folder as e2import/e2spt_boxer leave it (HDF tilt
    series, info json with two classes): the import keeps both classes' names and box sizes, the
    tomogram is reconstructed from the HDF, and extraction uses the class's own box (no
    extract.boxsize_unbin)."""
    from foreign import eman2 as fe

    from emflow.io import read_hdf_stack

    work = copy_workflow(tmp_path / "wf")
    ref, apix_ref = read_mrc(structure_path("ribosome70S"))
    rng = np.random.default_rng(11)
    tilts = np.array(tilt_range(-60.0, 60.0, 6.0))
    stack, truth = simulate_tilt_series(resample_map(ref, apix_ref, APIX), APIX, apix=APIX, shape_xyz=SHAPE,
                                        tilts_deg=tilts, n_particles=8, rng=rng, snr=0.5, min_dist_px=56, workers=2)
    # e2tomogram.py tlt_params: [tx, ty, ztilt, ytilt, xtilt]; the simulator's tilt is EMAN's ytilt
    boxes = [[*p, "manual", 0.0, 0] for p in truth.positions_px] + [[0.0, 0.0, 0.0, "manual", 0.0, 1]]
    fe.write_project(work / "user_data" / "eman2", NAME, stack=stack, apix=APIX,
                     tlt_params=[[0, 0, truth.tilt_axis_deg, t, 0] for t in truth.tilts_deg],
                     defocus=truth.defocus_recorded_um, boxes=boxes,
                     class_list={0: {"name": "ribo", "boxsize": 64}, 1: {"name": "gold", "boxsize": 32}})
    (work / "user_data" / "eman2.yaml").write_text(
        "input:\n  source: eman2_project\n  eman2_project: user_data/eman2\n"
        "workflows:\n  subtomogram: true\n  single_particle: false\nextract:\n  label: ribo\n")
    targets = [f"results/import/info/{NAME}_info.json", f"results/tomograms/{NAME}__bin4.mrc",
               f"results/extract/particles3d/{NAME}__ribo.hdf"]
    run_snakemake(work, None, [*targets, "--cores", "2", "--configfile", ".test/config.yaml",
                               "user_data/eman2.yaml", *spa_stack_workaround(work)], timeout=900)
    info = json.loads((work / targets[0]).read_text())
    assert sorted((v["name"], v["boxsize"]) for v in info["class_list"].values()) == [("gold", 32), ("ribo", 64)]
    assert info["defocus"] == pytest.approx(list(truth.defocus_recorded_um))
    vols, _ = read_hdf_stack(work / targets[2])
    summary = json.loads((work / "results" / "extract" / "summary" / f"{NAME}__ribo.json").read_text())
    assert summary["n_picks"] == len(truth.positions_px) and summary["box"] == 64  # the class's own box
    assert len(vols) == summary["n_picks"] - len(summary["excluded"]) >= 4 and vols.shape[-1] == 64
