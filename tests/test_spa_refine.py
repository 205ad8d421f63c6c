"""Classification, reconstruction and the in-process e2refine loop against ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from emflow.errors import InputError
from emflow.fsc import fsc
from emflow.spa.classify import classify
from emflow.spa.simmx import NOT_COMPUTED


def test_classify_sep_takes_best_then_next(rng):
    score = rng.normal(size=(5, 7)).astype(np.float32)
    mx = np.zeros((6, 5, 7), np.float32)
    mx[0] = score
    mx[1] = np.arange(7)[None]  # dx = column index, to check the alignment travels with the class
    mx[0, 4] = NOT_COMPUTED
    mx[0, 4, 3] = 0.0  # particle 4: a single computed entry
    cls = classify(mx, sep=2)
    order = np.argsort(score[:4], axis=1)
    np.testing.assert_array_equal(cls[0, :4, 0], order[:, 0])
    np.testing.assert_array_equal(cls[0, :4, 1], order[:, 1])
    np.testing.assert_array_equal(cls[2, :4, 0], order[:, 0])
    assert cls[0, 4, 0] == 3 and cls[1, 4, 0] == 1
    # never-computed entries never win; with none left the entry is marked unusable
    assert cls[0, 4, 1] == -1 and cls[1, 4, 1] == 0
    with pytest.raises(InputError):
        classify(mx, sep=8)


@pytest.fixture(scope="module")
def spa_data():
    """600 noisy CTF-modulated projections of the 20S proteasome, box 32 (6.55 Å/px), SNR 0.1."""
    from emflow.demo.simulate import resample_map, simulate_spa
    from emflow.spa.refine_loop import phase_flip_particles

    ref, ap = _bundled()
    box = 32
    apix = ap * ref.shape[0] / box
    stack, truth = simulate_spa(ref, ap, apix=apix, box=box, n=500, rng=np.random.default_rng(1), snr=0.1)
    vol = resample_map(ref, ap, apix, box=box)
    ctfs = truth.ctfs()
    return phase_flip_particles(stack, ctfs, apix), ctfs, vol, apix


def _bundled():
    import mrcfile

    from emflow.demo.data import __file__ as data_init

    path = data_init.replace("__init__.py", "proteasome20S_3j9i_2p62A_box80.mrc.gz")
    with mrcfile.open(path) as m:
        return np.asarray(m.data, np.float32), float(m.voxel_size.x)


def test_make3d_reconstructs_from_exact_projections(spa_data):
    """Class averages = exact projections → the map comes back (FSC > 0.9 to 0.4 cycles/px)."""
    from emflow.geometry import eman_to_matrix
    from emflow.spa.make3d import Make3DOptions, make3d
    from emflow.spa.refine_loop import RefineOptions, project3d, projection_orientations

    _, _, vol, apix = spa_data
    eul = projection_orientations(RefineOptions(sym="d7", orientgen="eman:delta=6"))
    proj = project3d(vol, eul)
    R = eman_to_matrix(eul[:, 0], eul[:, 1], eul[:, 2])
    out, info = make3d(proj, R, np.full(len(R), 5), Make3DOptions(sym="d7", iter=2, keep=0.9, apix=apix))
    c = fsc(out, vol)
    assert np.all(c.fsc[1:13] > 0.9), np.round(c.fsc, 2)
    assert len(info["excluded"]) == len(R) - max(1, int(0.9 * len(R)))


def _fsc_half_bit(v, truth, apix):
    c = fsc(v, truth)
    below = np.nonzero(c.fsc[1:] < 0.5)[0]
    k = below[0] + 1 if len(below) else len(c.fsc)
    return c, (c.freq[k - 1] if k > 1 else 0.0)


@pytest.mark.slow
def test_refine_loop_improves_fsc_vs_truth_d7(spa_data):
    """Two iterations from the truth low-passed to 30 Å (d7, delta 9°, 500 particles, SNR 0.1,
    box 32 at 6.55 Å/px): the FSC vs truth improves by ≥ 0.1 on average over 0.15–0.35 cycles/px
    and the 0.5 crossing moves out by at least one shell to ≥ 0.25 cycles/px (≤ 4 px, 26 Å)."""
    from emflow.filters import lowpass_tophat
    from emflow.spa.refine_loop import RefineOptions, run_iteration

    particles, ctfs, vol, apix = spa_data
    model = lowpass_tophat(vol, apix, 30.0)
    c_start, f_start = _fsc_half_bit(model, vol, apix)
    opts = RefineOptions(sym="d7", apix=apix, orientgen="eman:delta=9:inc_mirror=0", classaverager="mean")
    freqs = []
    for _ in range(2):
        r = run_iteration(model, particles, opts, ctfs=ctfs)
        model = r["threed"]
        freqs.append(_fsc_half_bit(model, vol, apix)[1])
    c_end, _ = _fsc_half_bit(model, vol, apix)
    band = (c_end.freq >= 0.15) & (c_end.freq <= 0.35)
    assert c_end.fsc[band].mean() > c_start.fsc[band].mean() + 0.1, (c_start.fsc, c_end.fsc)
    assert freqs[-1] >= f_start + 1 / 32 - 1e-9 and freqs[-1] >= 0.25, (f_start, freqs)
    # hand: the FSC against the mirrored truth must be clearly worse
    c_true, _ = _fsc_half_bit(model, vol, apix)
    c_mirror, _ = _fsc_half_bit(model, vol[::-1].copy(), apix)
    assert c_true.fsc[4:9].mean() > c_mirror.fsc[4:9].mean() + 0.2


@pytest.mark.workflow
def test_check_option_plans_validation_only_and_schedule_reaches_the_projections(tmp_path):
    """spa.check (EMAN --check) plans spa_prepare (inputs) and spa_startmodel (the starting model's box
    and pixel size) and nothing after them, and prints the projection count per iteration; with a list
    orientgen each iteration's project3d job gets its own generator, so a later step can change alone."""
    import yaml
    from workflow_runner import copy_workflow, dry_run

    work = copy_workflow(tmp_path / "wf")
    single = {"workflows": {"subtomogram": False}}
    (work / "check.yaml").write_text(yaml.safe_dump({**single, "spa": {"check": True}}))
    planned = dry_run(work, ["--configfile", "config/config.yaml", "check.yaml"])
    assert planned.get("spa_prepare") == 1 and planned.get("spa_startmodel") == 1, planned
    assert not any(r.startswith("spa_") and r not in ("spa_prepare", "spa_startmodel") for r in planned), planned
    from workflow_runner import run_snakemake

    out, _ = run_snakemake(work, "local", ["-n", "--cores", "2", "--configfile", "config/config.yaml", "check.yaml"])
    assert "spa check: 4000 particles; reference projections per iteration [" in out, out[-2000:]
    assert "estimated seconds per iteration" in out and "ms/pair" in out, out[-2000:]

    (work / "sched.yaml").write_text(yaml.safe_dump({**single, "spa": {
        "iter": 3, "orientgen": ["eman:delta=9:inc_mirror=0", "eman:delta=7:inc_mirror=0"]}}))
    planned = dry_run(work, ["--configfile", "config/config.yaml", "sched.yaml"])
    assert planned.get("spa_project3d") == 3, planned
    bad = {**single, "spa": {"orientgen": ["eman:delta=9", "eman:deltaa=7"]}}
    (work / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(pytest.fail.Exception, match="orientgen string .eman:deltaa=7.: bad option"):
        dry_run(work, ["--configfile", "config/config.yaml", "bad.yaml"])


def test_check_cost_estimate_is_within_3x_of_a_measured_iteration(spa_data):
    """spa.check prints the estimated seconds per iteration from a tiny calibration run
    (refine_loop.calibrate_cost); it must predict a measured iteration of another size within 3×."""
    import time

    from emflow.spa.refine_loop import RefineOptions, calibrate_cost, estimate_iteration_seconds, run_iteration

    particles, ctfs, truth, apix = spa_data
    spa = {"sym": "d7", "orientgen": "eman:delta=12:inc_mirror=0:perturb=0", "classralign": "refine",
           "classaverager": "ctf", "classkeep": 1.0, "m3dkeep": 1.0}
    cost = calibrate_cost(spa, particles.shape[-1], apix, ctf=True)
    opts = RefineOptions.from_config(spa, apix=apix)
    n = min(len(particles), 300)
    run_iteration(truth, particles[:16], opts, ctfs=ctfs[:16])  # compile outside the timing
    t0 = time.perf_counter()
    r = run_iteration(truth, particles[:n], opts, ctfs=ctfs[:n])
    measured = time.perf_counter() - t0
    est = estimate_iteration_seconds(cost, n, len(r["projections"]))
    print(f"{n} particles × {len(r['projections'])} projections: estimated {est:.1f} s, measured {measured:.1f} s")
    assert measured / 3 < est < 3 * measured


def test_scripts_run_the_same_stages_as_run_iteration(tmp_path, spa_data):
    """The tested path is the production path: the spa_* scripts (project3d → simmx chunks → gather →
    classify → classaverage in blocks → make3d) give the same map as refine_loop.run_iteration on the same
    data (every particle in memory)."""
    from workflow_runner import run_script

    from emflow.io import read_mrc, write_hdf_stack, write_mrc
    from emflow.spa.files import ctf_header
    from emflow.spa.refine_loop import RefineOptions, run_iteration

    particles, ctfs, truth, apix = spa_data
    parts, cts = particles[:90], ctfs[:90]
    spa = {"sym": "d7", "orientgen": "eman:delta=15:inc_mirror=0:perturb=0", "projector": "standard",
           "chunk_size": 50, "shrink": 1, "twostage": 0, "simcmp": "frc:zeromask=1:snrweight=1",
           "simalign": "rotate_translate_flip", "simaligncmp": "ccc", "simralign": None, "simraligncmp": "ccc",
           "simmask": 0.0, "prefilt": False, "maxshift": None, "sep": 1, "simvec": False, "classiter": 1,
           "classcmp": "frc:snrweight=1", "classalign": "rotate_translate_flip", "classaligncmp": "ccc",
           "classralign": "refine", "classraligncmp": "ccc", "classaverager": "ctf", "classkeep": 1.0,
           "classkeepsig": False, "classnormproc": "normalize.edgemean", "classrefsf": False, "classautomask": False,
           "pad": 0, "recon": "fourier", "m3dkeep": 1.0, "m3dkeepsig": False, "m3dsetsf": None, "m3diter": 2,
           "m3dpreprocess": "normalize.edgemean", "m3dpostprocess": None, "mass": 0.0, "automask3d": None}
    ref = run_iteration(truth, parts, RefineOptions.from_config(spa, apix=apix), ctfs=cts)
    d = tmp_path
    write_hdf_stack(d / "particles.hdf", parts, [{"ctf": ctf_header(c, apix)} for c in cts], apix=apix)
    write_mrc(d / "threed_00.mrc", truth, apix)
    run_script("spa_project3d.py", input={"model": d / "threed_00.mrc"}, output={"projections": d / "proj.hdf"},
               params={"spa": spa})
    for c in range(2):
        run_script("spa_simmx.py", input={"particles": d / "particles.hdf", "projections": d / "proj.hdf", "usefilt": []},
                   output={"chunk": d / f"chunk_{c}.npz"}, params={"spa": spa}, wildcards={"chunk": str(c)})
    run_script("spa_simmx_gather.py", input={"chunks": [d / "chunk_0.npz", d / "chunk_1.npz"],
                                             "projections": d / "proj.hdf", "particles": d / "particles.hdf"},
               output={"simmx": d / "simmx.hdf"})
    run_script("spa_classify.py", input={"simmx": d / "simmx.hdf"}, output={"classify": d / "classify.hdf"},
               params={"spa": spa})
    run_script("spa_classaverage.py", input={"particles": d / "particles.hdf", "classify": d / "classify.hdf",
                                             "projections": d / "proj.hdf", "usefilt": []},
               output={"classes": d / "classes.hdf", "result": d / "cls_result.hdf"}, params={"spa": spa},
               resources={"mem_mb": 1})  # the smallest job: blocks of 64 particles (64 + 26)
    run_script("spa_make3d.py", input={"classes": d / "classes.hdf"},
               output={"threed": d / "threed.hdf", "threed_mrc": d / "threed.mrc", "threed_filt": d / "filt.mrc"},
               params={"spa": spa})
    from emflow.fsc import fsc
    from emflow.io import read_hdf_stack

    np.testing.assert_allclose(read_hdf_stack(str(d / "proj.hdf"))[0], ref["projections"], atol=1e-5)
    np.testing.assert_allclose(read_hdf_stack(str(d / "simmx.hdf"))[0][0], ref["simmx"][0], atol=1e-6)
    np.testing.assert_array_equal(read_hdf_stack(str(d / "classify.hdf"))[0][0], ref["classify"][0])
    np.testing.assert_allclose(read_hdf_stack(str(d / "classes.hdf"))[0], ref["classes"], atol=1e-4)
    # the map: the same up to the rotations' round trip through the HDF header (1e-8), which moves a few
    # voxels across the insertion kernel's edge (measured: max difference 2 % of the peak, FSC ≥ 0.99)
    vol, _ = read_mrc(str(d / "threed.mrc"))
    assert fsc(vol, ref["threed"]).fsc.min() > 0.98
    assert np.abs(vol - ref["threed"]).max() < 0.05 * np.abs(ref["threed"]).max()
    _, headers = read_hdf_stack(str(d / "classes.hdf"))
    assert len(headers[0]["class_ssnr"]) == parts.shape[-1] // 2


def test_spa_report_script_plots_and_summarises(tmp_path):
    """spa_report (figures from emflow.pipeline.spa_plots): summary rows per iteration with the truth
    evaluation on the demo; user data (truth: None) gets only the iteration-to-iteration panel."""
    import json

    from workflow_runner import run_script

    from emflow.io import write_fsc_txt, write_hdf_stack

    d = tmp_path
    f = np.linspace(0.005, 0.15, 30)
    write_hdf_stack(d / "classes.hdf", np.random.default_rng(0).random((10, 16, 16)).astype(np.float32),
                    [{"ptcl_repr": i} for i in range(10)], apix=3.0)
    for truth in (True, False):
        for it in ("01", "02"):
            write_fsc_txt(d / f"fsc_{it}.txt", f, np.exp(-f * 20))
            write_fsc_txt(d / f"fsc_truth_{it}.txt", f, np.exp(-f * 25))
            ev = {"iter": it, "apix": 3.0, "bar_px": 2.5, "fsc_truth_05_a": 20.0} if truth else \
                {"iter": it, "apix": 3.0, "truth": None}
            (d / f"truth_eval_{it}.json").write_text(json.dumps(ev))
        out = {"convergence": d / f"conv{truth}.png", "gallery": d / f"gal{truth}.png", "summary": d / f"s{truth}.json"}
        run_script("spa_report.py", input={k: [d / f"{k}_{it}.{'json' if k == 'truth_eval' else 'txt'}"
                                               for it in ("01", "02")] for k in ("fsc", "fsc_truth", "truth_eval")}
                   | {"classes": d / "classes.hdf"}, output=out, params={"iters": ["01", "02"]})
        rows = json.loads(out["summary"].read_text())["iterations"]
        assert [r["iter"] for r in rows] == ["01", "02"] and ("fsc_truth_05_a" in rows[-1]) == truth
        assert rows[0]["fsc_prev_0.5_A"] == pytest.approx(20 / np.log(2), rel=0.02)  # exp(−20 f) = 0.5
        assert out["convergence"].stat().st_size > 1000 and out["gallery"].stat().st_size > 1000


def test_startmodel_and_fsc_scripts(tmp_path, spa_data):
    """spa_startmodel: a blob of the given radius, the truth low-passed, a map path checked against the
    particles' box (InputError naming spa.startingmodel); spa_fsc: FSC vs the previous map and the truth."""
    import json

    from workflow_runner import run_script

    from emflow.errors import InputError
    from emflow.io import read_mrc, write_hdf_stack, write_mrc

    particles, _, truth, apix = spa_data
    d = tmp_path
    write_hdf_stack(d / "particles.hdf", particles[:4], [{} for _ in range(4)], apix=apix)
    write_mrc(d / "truth.mrc", truth, apix)
    write_mrc(d / "small.mrc", truth[:16, :16, :16], apix)
    for kind, src in (("blob", []), ("truth_lowpass30", [d / "truth.mrc"]), (str(d / "truth.mrc"), [])):
        run_script("spa_startmodel.py", input={"particles": d / "particles.hdf", "source": src},
                   output={"model": d / "start.mrc"}, params={"spa": {"startingmodel": kind, "blob_radius_a": 40.0}})
        m, a = read_mrc(str(d / "start.mrc"))
        assert m.shape == truth.shape and a == pytest.approx(apix)
        if kind == "blob":
            assert m[16, 16, 16] > 0.5 * m.max() and m[16, 16, 16 + int(70 / apix)] < 0.2 * m.max()
    with pytest.raises(InputError, match="startingmodel"):
        run_script("spa_startmodel.py", input={"particles": d / "particles.hdf", "source": []},
                   output={"model": d / "start.mrc"}, params={"spa": {"startingmodel": str(d / "small.mrc"),
                                                                      "blob_radius_a": None}})
    out = {"fsc": d / "fsc.txt", "fsc_truth": d / "fsc_truth.txt", "truth_eval": d / "ev.json"}
    run_script("spa_fsc.py", input={"threed": d / "truth.mrc", "previous": d / "start.mrc", "truth": [d / "truth.mrc"]},
               output=out, params={"truth_sym": "d7"}, wildcards={"it": "01"})
    ev = json.loads(out["truth_eval"].read_text())
    assert ev["hand_correct"] and ev["fsc_truth_05_px"] == pytest.approx(2.0, abs=0.01)  # a map vs itself: Nyquist
    run_script("spa_fsc.py", input={"threed": d / "truth.mrc", "previous": d / "start.mrc", "truth": []},
               output=out, params={"truth_sym": None}, wildcards={"it": "01"})
    assert json.loads(out["truth_eval"].read_text())["truth"] is None


def test_particles_box_apix_before_the_run(tmp_path):
    """spa check's cost estimate reads the box and pixel size of a user's stack (HDF or MRC) from its header."""
    from emflow.io import write_hdf_stack, write_mrc
    from emflow.spa.files import particles_box_apix

    stack = np.zeros((3, 24, 24), np.float32)
    write_hdf_stack(tmp_path / "p.hdf", stack, [{} for _ in range(3)], apix=2.5)
    write_mrc(tmp_path / "p.mrcs", stack, 3.5)
    assert particles_box_apix(str(tmp_path / "p.hdf"), None, None, None) == (24, pytest.approx(2.5))
    assert particles_box_apix(str(tmp_path / "p.mrcs"), None, None, None) == (24, pytest.approx(3.5))
