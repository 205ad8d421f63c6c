"""The Snakemake report of the tiny workflow renders its figures (issues #7, #14), and the scoring and
plotting functions behind it are right.

The report's structure (issue #14 item 5): every figure is marked ``report(...)`` by the rule that draws
it, with a non-empty caption from ``report/*.rst``; nothing is copied into the report; adding a figure is
one rule (tested by adding one to a copy of the finished run); the run-time figure declares the
benchmark table of every job as an input; SPA-only, tomography-only and gold-standard configs plan only
their own figures.

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
from emflow.pipeline.benchmarks import read_benchmark_tables

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


def test_read_benchmark_tables_and_runtime_plot(tmp_path):
    tables = []
    for stage, rule, job, s in (("tomogram", "tomogram_reconstruct", "a", 12.5), ("picks", "picks_filter", "a", 1.0),
                                ("tomogram", "tomogram_reconstruct", "b", 7.5)):
        p = tmp_path / "bench" / stage / rule / f"{job}.tsv"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("s\th:m:s\tmax_rss\tmax_vms\n" f"{s}\t0:00:{int(s):02d}\t123.4\t500\n")
        tables.append(p)
    (tmp_path / "bench" / "x" / "y").mkdir(parents=True)
    (tmp_path / "bench" / "x" / "y" / "broken.tsv").write_text("nonsense")
    (tmp_path / "bench" / "x" / "y" / "unlisted.tsv").write_text("s\tmax_rss\n99\t1\n")  # not an input: ignored
    rec = read_benchmark_tables([*tables, tmp_path / "bench" / "x" / "y" / "broken.tsv", tmp_path / "missing.tsv"])
    assert sorted((r["stage"], r["rule"], r["job"], r["seconds"]) for r in rec) == [
        ("picks", "picks_filter", "a", 1.0), ("tomogram", "tomogram_reconstruct", "a", 12.5),
        ("tomogram", "tomogram_reconstruct", "b", 7.5)]
    assert all(r["max_rss_mb"] == pytest.approx(123.4) for r in rec)
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
# rule → figures it marks for the report in the tiny run (demo data, both workflows)
EXPECTED_FIGURES = {
    "tomogram_slices": ["results/tomograms/demo_01__bin4_slices.png"],
    "picks_filter": ["results/picks/demo_01__review.png"],
    "spa_report": ["results/spa/refine_01/convergence.png", "results/spa/refine_01/classes_02.png"],
    "initial_model_sgd": ["results/initial_model/sptsgd_01/slices.png",
                          "results/initial_model/sptsgd_01/convergence.png"],
    "spt_refine_postprocess": ["results/spt/spt_01/fsc_01.png"],
    "report_map_spa_final": ["results/report/maps/spa_final.png"],
    "report_fsc_spa_truth": ["results/report/fsc/spa_fsc_truth.png"],
    "report_map_spt_final": ["results/report/maps/spt_final.png"],
    "report_fsc_spt": ["results/report/fsc/spt_fsc_masked.png"],
    "report_map_truth": ["results/report/maps/truth_tomo.png", "results/report/maps/truth_spa.png"],
    "report_demo_scores": ["results/report/demo_scores.png"],
    "report_runtimes": ["results/report/runtimes.png"],
}
# rendered caption text (Jinja filled in from the job's wildcards and params)
EXPECTED_CAPTIONS = {
    "results/tomograms/demo_01__bin4_slices.png": "slices of tomogram demo_01 (bin 4)",
    "results/picks/demo_01__review.png": "picks of tomogram demo_01",
    "results/spa/refine_01/classes_02.png": "last iteration (02)",
    "results/spt/spt_01/fsc_01.png": "iteration\n01",
    "results/report/maps/truth_tomo.png": "demo tomograms' particle",
    "results/report/runtimes.png": "Wall time of every rule",
    "results/report/demo_scores.png": "how well the run recovered",
}


def report_results(html_path) -> dict:
    """``{path: {"caption", "job_properties": {"rule", ...}, ...}}`` of every file in a Snakemake report."""
    html = html_path.read_text(errors="replace")
    match = re.search(r"var results = (\{.*?\});\n", html)
    assert match, "no results table in the report"
    return json.loads(match.group(1))


def caption_text(entry: dict) -> str:
    return re.sub(r"<[^>]+>", "", entry["caption"]).strip()


def job_blocks(output: str) -> list[dict]:
    """``[{"rule", "input": [...], "output": [...], "benchmark": [...]}]`` of the jobs Snakemake printed."""
    jobs = []
    for line in output.splitlines():
        head = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if head:
            jobs.append({"rule": head.group(1), "input": [], "output": [], "benchmark": []})
        elif jobs and (kv := re.match(r"^    (input|output|benchmark): (.*)$", line)):
            jobs[-1][kv.group(1)] = kv.group(2).split(", ")
    return jobs


@pytest.fixture(scope="module")
def report_html(tiny_workflow):
    run_snakemake(tiny_workflow, None, ["--report", "report.html", "--configfile", ".test/config.yaml"], timeout=600)
    return tiny_workflow / "report.html"


def test_workflow_outputs_and_demo_scores(tiny_workflow):
    res = tiny_workflow / "results"
    for rel in ("report/runtimes.png", "report/demo_scores.png", "report/maps/truth_tomo.png",
                "tomograms/demo_01__bin4_slices.png"):
        _assert_png_not_blank(res / rel)
    doc = json.loads((res / "demo_scores.json").read_text())
    # the simulated manual picks (a few px of error) must all be found: checks the coordinate frames
    assert doc["manual_picks"]["demo_01"]["recall"] == 1.0
    p = doc["picks"]["demo_01"]
    assert p["n_truth"] > 0 and 0.0 <= p["precision"] <= 1.0 and 0.0 <= p["recall"] <= 1.0
    table = (res / "report" / "runtimes.tsv").read_text().splitlines()
    rules = {line.split("\t")[1] for line in table[1:]}
    assert {"tomogram_reconstruct", "tempmatch_search", "simulate_tiltseries", "extract_chunk"} <= rules


def test_every_report_figure_is_drawn_by_its_rule_with_a_caption(report_html):
    results = report_results(report_html)
    figures = {path: entry for path, entry in results.items() if entry["mime_type"] == "image/png"}
    by_rule: dict[str, list[str]] = {}
    for path, entry in figures.items():
        by_rule.setdefault(entry["job_properties"]["rule"], []).append(path)
    assert {r: sorted(p) for r, p in by_rule.items()} == {r: sorted(p) for r, p in EXPECTED_FIGURES.items()}
    for path, entry in figures.items():
        text = caption_text(entry)
        assert len(text) > 60 and "{{" not in text and "{%" not in text, f"{path}: caption {text!r}"
    for path, words in EXPECTED_CAPTIONS.items():
        assert " ".join(words.split()) in " ".join(caption_text(results[path]).split()), (path, results[path])
    # the figures of a stage share its category
    html = report_html.read_text(errors="replace")
    for category in ("1. Tomograms", "2. Template matching", "3. Single particle", "4. Subtomogram averaging",
                     "5. Demo ground truth", "6. Run times"):
        assert category in html, f"category {category!r} missing"


def test_no_copy_jobs_and_no_registries(tiny_workflow, report_html):
    """A figure in the report is the output of the job that draws it: no job of the run turns a PNG into
    another PNG, and no rule file keeps a figure registry or looks rules up by name."""
    out, _ = run_snakemake(tiny_workflow, None, ["-n", "--forceall", "--cores", "1", "--configfile", ".test/config.yaml"])
    jobs = job_blocks(out)
    assert len(jobs) > 20, out[-3000:]
    copies = [j["rule"] for j in jobs
              if any(f.endswith(".png") for f in j["input"]) and any(f.endswith(".png") for f in j["output"])
              and j["rule"] != "all"]
    assert not copies, f"rules that copy a PNG: {copies}"
    figures = report_results(report_html)
    drawn = {f for j in jobs for f in j["output"]}
    assert set(figures) <= drawn, set(figures) - drawn
    from workflow_runner import REPO

    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        for pattern in ("globals()", "REPORT_FIGURES", "REPORT_MAPS", "REPORT_FSC", "_has_rule"):
            assert pattern not in text, f"{smk.name} uses {pattern}"


def test_runtime_figure_declares_every_jobs_benchmark_as_input(tiny_workflow):
    """report_runtimes reads exactly the benchmark tables of the run's jobs, and they are its declared
    inputs (checkpoint-made chunk jobs included): what the dry run prints as its input."""
    out, _ = run_snakemake(tiny_workflow, None, ["results/report/runtimes.png", "-n", "--forcerun", "report_runtimes",
                                                 "--cores", "1", "--configfile", ".test/config.yaml"])
    (job,) = [j for j in job_blocks(out) if j["rule"] == "report_runtimes"]
    bench = tiny_workflow / "results" / "benchmarks"
    written = {str(p.relative_to(tiny_workflow)) for p in bench.rglob("*.tsv")}
    own = "results/benchmarks/report/report_runtimes/all.tsv"
    assert set(job["input"]) == written - {own}, (set(job["input"]) ^ (written - {own}))
    assert any("/extract_chunk/" in f for f in job["input"]) and any("/spt_refine_align/" in f for f in job["input"])
    rows = (tiny_workflow / "results/report/runtimes.tsv").read_text().splitlines()[1:]
    assert len(rows) == len(job["input"])


EXTRA_FIGURE_RULE = """

rule report_extra_test_figure:
    input:
        map="results/demo/truth/reference_tomo.mrc",
    output:
        png=report(
            "results/report/maps/extra.png",
            caption="../report/extra_test_figure.rst",
            category="5. Demo ground truth",
            subcategory="maps",
            labels={"figure": "extra"},
        ),
    log:
        "results/logs/report/report_extra_test_figure/extra.log",
    benchmark:
        "results/benchmarks/report/report_extra_test_figure/extra.tsv"
    params:
        title="extra",
    script:
        "../workflow/scripts/report_map.py"


FINAL_TARGETS.append("results/report/maps/extra.png")
"""


def test_adding_a_figure_is_one_rule(tiny_workflow, tmp_path):
    """One rule appended to rules/report.smk (and its caption file) puts a figure in the report, and its
    job's time in the run-time figure: nothing else to register."""
    from workflow_runner import copy_run, job_counts

    work = copy_run(tiny_workflow, tmp_path / "run")
    with open(work / "rules" / "report.smk", "a") as fh:
        fh.write(EXTRA_FIGURE_RULE)
    (work / "report" / "extra_test_figure.rst").write_text("An extra figure added by the test, {{ snakemake.rule }}.\n")
    out, _ = run_snakemake(work, None, ["--cores", "2", "--configfile", ".test/config.yaml"])
    assert job_counts(out) == {"report_extra_test_figure": 1, "report_runtimes": 1, "all": 1}, job_counts(out)
    run_snakemake(work, None, ["--report", "report.html", "--configfile", ".test/config.yaml"])
    entry = report_results(work / "report.html")["results/report/maps/extra.png"]
    assert caption_text(entry) == "An extra figure added by the test, report_extra_test_figure."
    rules = {line.split("\t")[1] for line in (work / "results/report/runtimes.tsv").read_text().splitlines()[1:]}
    assert "report_extra_test_figure" in rules


@pytest.mark.workflow
def test_report_figures_follow_the_workflows_that_run(tmp_path):
    """SPA-only and tomography-only runs plan only their own figures; gold-standard SPA its own two."""
    import yaml
    from workflow_runner import copy_workflow, dry_run

    work = copy_workflow(tmp_path / "wf")
    cases = {
        "spa_only": ({"workflows": {"subtomogram": False}},
                     {"report_map_spa_final", "report_fsc_spa_truth", "report_map_truth", "report_demo_scores"}),
        "tomo_only": ({"workflows": {"single_particle": False}},
                      {"report_map_spt_final", "report_fsc_spt", "report_map_truth", "report_demo_scores"}),
        "gold": ({"workflows": {"subtomogram": False}, "spa": {"goldstandard": True}},
                 {"report_map_spa_gold", "report_fsc_spa_gold"}),
    }
    for name, (override, expected) in cases.items():
        (work / f"{name}.yaml").write_text(yaml.safe_dump(override))
        planned = dry_run(work, ["--configfile", ".test/config.yaml", f"{name}.yaml"])
        report_rules = {r for r in planned if r.startswith("report_")}
        assert report_rules == expected | {"report_runtimes"}, (name, planned)
        assert planned.get("report_map_truth", 1) == 1, (name, planned)  # one true map: its own workflow's
        stage_figures = {"spa_report"} if name == "spa_only" else {"tomogram_slices", "picks_filter"}
        assert name == "gold" or stage_figures <= set(planned), (name, planned)
        if name != "tomo_only":
            assert not any(r.startswith(("tomogram_", "picks_", "spt_")) for r in planned), (name, planned)
        if name == "tomo_only":
            assert not any(r.startswith("spa_") for r in planned), (name, planned)


def test_report_html_lists_figures_and_captions(report_html):
    html = report_html.read_text(errors="replace")
    for paths in EXPECTED_FIGURES.values():
        for path in paths:
            assert path.rsplit("/", 1)[1] in html, f"{path} missing from the report"


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
    for paths in EXPECTED_FIGURES.values():
        for path in paths:
            assert path.rsplit("/", 1)[1] in dom, f"{path} not in the rendered report"
