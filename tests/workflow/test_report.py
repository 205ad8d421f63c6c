"""The Snakemake report of the tiny workflow renders its figures (issue #7), and the scoring and plotting
functions behind it are right.

The workflow run is the session fixture ``tiny_workflow`` (tests/conftest.py, tests/workflow/workflow_runner.py),
shared with the determinism test. The report is opened in headless Chromium; the test is skipped when
no ``chromium`` is installed (CI installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from workflow_runner import run_snakemake

from emflow.demo import scores
from emflow.geometry import get_symmetry, random_rotations
from emflow.pipeline import plots

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# --------------------------------------------------------------------------------------- scoring (fast)
def test_match_picks_counts_and_one_to_one(rng):
    truth = rng.uniform(-100, 100, size=(20, 3))
    picks = np.concatenate([truth[:15] + rng.normal(scale=1.0, size=(15, 3)),  # 15 hits
                            truth[:1] + 2.0,                                    # a duplicate of particle 0
                            rng.uniform(300, 400, size=(4, 3))])                # 4 far false positives
    res = scores.match_picks(picks, truth, tolerance_px=6.0)
    assert res.true_positives == 15  # the duplicate must not count twice
    assert res.precision == pytest.approx(15 / 20) and res.recall == pytest.approx(15 / 20)
    assert res.f1 == pytest.approx(0.75)
    assert len(set(res.pairs[:, 1])) == 15
    empty = scores.match_picks(np.zeros((0, 3)), truth, 6.0)
    assert (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)


def test_match_picks_optimal_not_greedy():
    # greedy (closest pair first) pairs pick 0 with truth 1 and leaves pick 1 without a partner
    truth = np.array([[0.0, 0, 0], [3.0, 0, 0]])
    picks = np.array([[2.5, 0, 0], [6.5, 0, 0]])
    res = scores.match_picks(picks, truth, tolerance_px=4.0)
    assert res.true_positives == 2


def test_orientation_errors_known_angle_and_symmetry(rng):
    from emflow.geometry import eman_to_matrix

    r = random_rotations(10, rng)
    delta = eman_to_matrix(0.0, 0.0, 7.0)  # 7° about z
    err = scores.orientation_errors(delta @ r, r)
    np.testing.assert_allclose(err, 7.0, atol=1e-6)
    c4 = get_symmetry("c4").matrices
    # a particle rotated by a symmetry operator is the same particle: error 0 with, 90° without symmetry
    assert np.allclose(scores.orientation_errors(r @ c4[1], r, c4), 0.0, atol=1e-5)
    np.testing.assert_allclose(scores.orientation_errors(r @ c4[1], r), 90.0, atol=1e-5)


def test_template_frame_recovers_common_rotation_despite_outliers_and_symmetry(rng):
    from emflow.geometry import eman_to_matrix

    true = random_rotations(30, rng)
    frame = eman_to_matrix(40.0, 70.0, -20.0)  # the template's arbitrary frame: R_true = R_est · G
    jitter = np.stack([eman_to_matrix(*rng.normal(0, 1.5, 3)) for _ in range(30)])
    c4 = get_symmetry("c4").matrices
    # each estimate picks an arbitrary symmetry mate, and 6 of them are wrong altogether
    mates = c4[rng.integers(0, 4, 30)]
    est = np.einsum("nij,njk,nlk->nil", true, mates, jitter) @ frame.T
    est[:6] = random_rotations(6, rng)
    g = scores.template_frame(est, true, c4)
    err = scores.orientation_errors(est[6:] @ g, true[6:], c4)
    assert np.median(err) < 3.0
    # without removing the frame the same picks look ~random (the old demo score: 160°+)
    assert np.median(scores.orientation_errors(est[6:], true[6:], c4)) > 20.0


def test_fsc_crossing_interpolates():
    f = np.linspace(0.01, 0.1, 10)
    c = 1.0 - (f - 0.01) / 0.09  # 1 at f=0.01 falling linearly to 0 at f=0.1
    assert scores.fsc_crossing(f, c, 0.5) == pytest.approx(1 / 0.055, rel=1e-9)
    assert scores.fsc_crossing(f, np.ones(10), 0.5) == pytest.approx(10.0)  # never crosses: last shell
    assert scores.fsc_crossing(f, np.zeros(10), 0.5) is None


def test_map_vs_truth_resolution_hand_and_symmetry():
    import mrcfile

    from emflow.demo.data import structure_path
    from emflow.demo.simulate import resample_map
    from emflow.filters import lowpass_tophat

    with mrcfile.open(structure_path("proteasome20S")) as m:
        ref, ap = np.asarray(m.data, np.float32), float(m.voxel_size.x)
    apix = 6.55
    truth = resample_map(ref, ap, apix, box=32)
    d7 = get_symmetry("d7").matrices
    same = scores.map_vs_truth(truth, truth, apix, d7)
    assert same["hand_correct"] and same["fsc_at_bar"] > 0.999
    assert same["symmetry_fsc"] == pytest.approx(same["truth_symmetry_fsc"])
    # a 20 Å low-pass crosses 0.5 near 20 Å; the mirror image is the wrong hand
    low = scores.map_vs_truth(lowpass_tophat(truth, apix, 20.0), truth, apix)
    assert 18.0 < low["fsc_truth_05_a"] < 22.5 and low["fsc_at_bar"] < 0.5
    assert not scores.map_vs_truth(scores.mirror_map(truth), truth, apix)["hand_correct"]
    # the same map with a blob on one side is no longer D7-symmetric
    blob = truth.copy()
    blob[20:25, 13:18, 6:11] += 2 * truth.max()
    assert scores.map_vs_truth(blob, truth, apix, d7)["symmetry_fsc"] < same["truth_symmetry_fsc"] - 0.05


def test_read_benchmarks_and_runtime_plot(tmp_path):
    for stage, rule, job, s in (("tomogram", "tomogram_reconstruct", "a", 12.5), ("picks", "picks_filter", "a", 1.0),
                                ("tomogram", "tomogram_reconstruct", "b", 7.5)):
        p = tmp_path / "bench" / stage / rule / f"{job}.tsv"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("s\th:m:s\tmax_rss\tmax_vms\n" f"{s}\t0:00:{int(s):02d}\t123.4\t500\n")
    (tmp_path / "bench" / "x" / "y").mkdir(parents=True)
    (tmp_path / "bench" / "x" / "y" / "broken.tsv").write_text("nonsense")
    rec = scores.read_benchmarks(tmp_path / "bench")
    assert sorted((r["rule"], r["seconds"]) for r in rec) == [
        ("picks_filter", 1.0), ("tomogram_reconstruct", 7.5), ("tomogram_reconstruct", 12.5)]
    out = tmp_path / "rt.png"
    plots.runtimes(rec, out)
    _assert_png_not_blank(out)


def test_map_overview_png(tmp_path):
    vol = np.zeros((16, 16, 16), np.float32)
    vol[6:10, 5:11, 7:9] = 1.0
    stats = plots.map_overview(vol, 2.0, tmp_path / "m.png", title="box")
    assert stats["max"] == 1.0
    _assert_png_not_blank(tmp_path / "m.png")


def _assert_png_not_blank(path, min_std=0.02):
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > min_std, f"{path} looks blank"


# --------------------------------------------------------------------------------------- the workflow report
EXPECTED_FIGURES = ["tomogram_demo_01.png", "picks_demo_01.png", "truth_tomo.png", "runtimes.png",
                    "demo_scores.png"]
EXPECTED_CAPTIONS = ["Central XY, XZ and YZ slices", "Template-matching picks", "Wall time of every rule",
                     "how well the run recovered"]


@pytest.fixture(scope="module")
def report_html(tiny_workflow):
    run_snakemake(tiny_workflow, None, ["--report", "report.html", "--configfile", ".test/config.yaml"], timeout=600)
    return tiny_workflow / "report.html"


def test_workflow_outputs_and_demo_scores(tiny_workflow):
    res = tiny_workflow / "results"
    for rel in ("report/runtimes.png", "report/demo_scores.png", "report/maps/truth_tomo.png",
                "report/figures/tomogram_demo_01.png"):
        _assert_png_not_blank(res / rel)
    doc = json.loads((res / "demo_scores.json").read_text())
    # the simulated manual picks (a few px of error) must all be found: checks the coordinate frames
    assert doc["manual_picks"]["demo_01"]["recall"] == 1.0
    p = doc["picks"]["demo_01"]
    assert p["n_truth"] > 0 and 0.0 <= p["precision"] <= 1.0 and 0.0 <= p["recall"] <= 1.0
    table = (res / "report" / "runtimes.tsv").read_text().splitlines()
    rules = {line.split("\t")[1] for line in table[1:]}
    assert {"tomogram_reconstruct", "tempmatch_search", "simulate_tiltseries"} <= rules


def test_report_html_lists_figures_and_captions(report_html):
    html = report_html.read_text(errors="replace")
    for name in EXPECTED_FIGURES:
        assert name in html, f"{name} missing from the report"
    for cap in EXPECTED_CAPTIONS:
        assert cap in html, f"caption {cap!r} missing from the report"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium); CI installs it")
def test_report_renders_in_chromium(report_html, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000"]
    url = report_html.resolve().as_uri()
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--virtual-time-budget=15000", url],
                   check=True, capture_output=True, timeout=180)
    _assert_png_not_blank(shot, min_std=0.03)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", "--virtual-time-budget=15000", url],
                         check=True, capture_output=True, text=True, timeout=180).stdout
    # the report's JavaScript app has run: its menu exists as elements (not in the static file)
    for item in ("Results", "Statistics"):
        assert re.search(rf">{item}<", dom), f"menu item {item!r} not rendered"
        assert not re.search(rf">{item}<", report_html.read_text(errors="replace"))
    for name in EXPECTED_FIGURES:
        assert name in dom, f"{name} not in the rendered report"
