"""Re-running the workflow redoes exactly what a change affects, and a killed run resumes.

The baseline is the session's one full run of the tiny config (``.test/config.yaml``, fixture
``tiny_workflow`` in tests/conftest.py). Each case works on its own copy of that finished run
(results and ``.snakemake`` records copied with their timestamps) and runs Snakemake with
``profiles/local``:

(a) a second run does nothing;
(b) a refinement parameter (``spa.classkeep``) reruns only single-particle refinement (and report)
    jobs: no simulation, tomogram, template matching, picking or extraction job;
(c) a template-matching threshold (``picks.n_false_alarms``) reruns peak extraction, pick filtering
    and what uses the template-matching picks, but not the tomogram reconstruction, the
    template-matching search or the extraction of the manual picks;
(d) a run killed with SIGKILL while a job runs resumes (``rerun-incomplete`` in the profile) and
    gives the same results as the uninterrupted baseline.

Parameter changes go in an extra ``--configfile`` layered over ``.test/config.yaml``, as a user
would edit their project config. The rerun trigger set is explained in docs/reruns.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml
from workflow_runner import (
    REPO,
    assert_same_outputs,
    clean_env,
    copy_run,
    run_snakemake,
    snakemake_cmd,
)

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

BASE = ["--configfile", ".test/config.yaml"]
# The baseline builds these targets and everything they need: the template-matching particle set
# (simulation, tomogram, manual-pick extraction, initial model, template matching, picks) and the
# single-particle refinement; not the subtomogram refinement and report, which would only make
# every run slower. (`--until <rule>` does not work here: extract_buildset is both upstream of the
# initial model (manual picks) and downstream of template matching.)
TARGETS = ["results/sets/tm.lst", "results/spa/refine_01/summary.json"]

UPSTREAM_OF_REFINEMENT = ("simulate_", "tomogram_", "tempmatch_", "picks_", "extract_", "import_")


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """``[(rule, wildcards)]`` of the jobs Snakemake lists (dry run or real run), without ``all``."""
    jobs, current = [], None
    for line in output.splitlines():
        stripped = line.strip()
        if line.startswith(("rule ", "localrule ", "checkpoint ", "localcheckpoint ")) and stripped.endswith(":"):
            current = (stripped.split()[1].rstrip(":"), {})
            jobs.append(current)
        elif current is not None and stripped.startswith("wildcards:"):
            for pair in stripped[len("wildcards:"):].split(","):
                key, _, value = pair.strip().partition("=")
                current[1][key] = value
        elif not line.startswith(" "):  # a job's block is its indented lines
            current = None
    return [(r, w) for r, w in jobs if r != "all"]


def run_args(workdir, override: dict | None = None, name: str = "override") -> list[str]:
    """snakemake options of every run: tiny config (+ an override file), 2 cores, the baseline targets."""
    configs = [".test/config.yaml"]
    if override:
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump(override))
        configs.append(f"{name}.yaml")
    return [*TARGETS, "--cores", "2", "--configfile", *configs]  # targets first: --configfile takes several values


def tiny_config() -> dict:
    """The tiny config's overrides (keys it does not set come from config/config.yaml)."""
    return yaml.safe_load((REPO / ".test" / "config.yaml").read_text())


def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def baseline(tiny_workflow, tmp_path_factory):
    """A finished run of the tiny config: a copy of the session's ``tiny_workflow`` run (which built
    the TARGETS and more), so that nothing here runs the whole workflow again."""
    return copy_run(tiny_workflow, tmp_path_factory.mktemp("rerun") / "baseline")


def test_second_run_does_nothing(baseline, tmp_path):
    work = copy_run(baseline, tmp_path / "again")
    out, _ = run_snakemake(work, "local", ["-n", *run_args(work)])
    assert "Nothing to be done" in out, planned_jobs(out)


def _change_then_run(baseline, tmp_path, name: str, override: dict):
    """Dry-run, then run the workflow with ``override``; returns (planned jobs, workdir)."""
    work = copy_run(baseline, tmp_path / name)
    args = run_args(work, override, name)
    dry, _ = run_snakemake(work, "local", ["-n", *args])
    planned = planned_jobs(dry)
    out, seconds = run_snakemake(work, "local", args)
    ran = planned_jobs(out)
    print(f"\n[rerun] {name}: {len(ran)} jobs in {seconds:.1f} s: {sorted({r for r, _ in ran})}")
    # extraction chunk jobs come from a checkpoint (extract_plan): a dry run cannot list them, but
    # each must belong to a planned extract_plan job
    chunks = [(r, w) for r, w in ran if r == "extract_chunk"]
    plans = {(w["tomo"], w["label"]) for r, w in planned if r == "extract_plan"}
    assert all((w["tomo"], w["label"]) in plans for _, w in chunks), (chunks, plans)
    ran = [job for job in ran if job[0] != "extract_chunk"]
    planned = [job for job in planned if job[0] != "extract_chunk"]
    assert sorted(map(repr, ran)) == sorted(map(repr, planned)), "the run did other jobs than the dry run planned"
    return planned + chunks, work


def test_refinement_parameter_reruns_only_refinement(baseline, tmp_path):
    cfg = tiny_config()
    classkeep = cfg.get("spa", {}).get("classkeep") or default_config()["spa"]["classkeep"]
    planned, _ = _change_then_run(baseline, tmp_path, "classkeep", {"spa": {"classkeep": round(classkeep * 0.75, 3)}})
    names = {r for r, _ in planned}
    assert "spa_classaverage" in names, names
    upstream = sorted(r for r in names if r.startswith(UPSTREAM_OF_REFINEMENT) or r.startswith("initial_model"))
    assert not upstream, f"changing spa.classkeep reruns {upstream}"


def test_refinement_parameter_spares_unaffected_refinement_steps(baseline, tmp_path):
    """classkeep is a class-averaging option: the iteration-1 projections and similarity matrix stay."""
    work = copy_run(baseline, tmp_path / "classkeep_dry")
    dry, _ = run_snakemake(work, "local", ["-n", *run_args(work, {"spa": {"classkeep": 0.6}}, "ck")])
    planned = planned_jobs(dry)
    early = [(r, w) for r, w in planned
             if r in ("spa_prepare", "spa_startmodel") or (r in ("spa_project3d", "spa_simmx", "spa_simmx_gather",
                                                                  "spa_classify") and w.get("it") == "01")]
    assert not early, early


def test_picks_threshold_reruns_picks_and_downstream_only(baseline, tmp_path):
    cfg = tiny_config()
    n_fa = cfg.get("picks", {}).get("n_false_alarms") or default_config()["picks"]["n_false_alarms"]
    planned, work = _change_then_run(baseline, tmp_path, "picks", {"picks": {"n_false_alarms": n_fa * 4}})
    names = {r for r, _ in planned}
    assert "picks_filter" in names, names
    forbidden = sorted({r for r, _ in planned
                        if r.startswith(("simulate_", "tomogram_", "import_", "spa_")) or r == "tempmatch_search"})
    assert not forbidden, f"changing picks.n_false_alarms reruns {forbidden}"
    # the manual picks' particles do not depend on template matching
    manual = cfg.get("extract", {}).get("label") or default_config()["extract"]["label"]
    assert not [w for r, w in planned if r.startswith("extract_") and w.get("label") == manual]
    tm_label = cfg.get("picks", {}).get("label") or default_config()["picks"]["label"]
    if tm_label != manual:
        assert ("extract_buildset", {"label": tm_label}) in planned, "the template-matching set was not rebuilt"


def _incomplete_markers(work) -> list[str]:
    folder = work / ".snakemake" / "incomplete"
    return [p.name for p in folder.iterdir()] if folder.is_dir() else []


def test_sigkill_mid_run_resumes_to_the_same_results(baseline, tmp_path):
    """Kill snakemake and its job (whole process group) while a forced job runs, then resume."""
    work = copy_run(baseline, tmp_path / "killed")
    # delete template matching's peaks and everything built from them, rebuild, and kill it mid-way
    doomed = [*work.glob("results/tempmatch/*__candidates.*"), *work.glob("results/picks/**/*.*"),
              *work.glob("results/extract/*/*__tm.*"), work / "results/sets/tm.lst"]
    assert len(doomed) > 5, doomed
    for path in doomed:
        path.unlink()
    cmd = snakemake_cmd("local", run_args(work))
    proc = subprocess.Popen(cmd, cwd=work, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not _incomplete_markers(work):  # a job has started: its outputs are marked incomplete
            assert proc.poll() is None, "snakemake finished before a job could be interrupted"
            assert time.monotonic() < deadline, "no job started within 300 s"
            time.sleep(0.1)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    markers = _incomplete_markers(work)
    assert markers, "the killed job left no incomplete marker"
    # a killed Snakemake cannot remove its lock on the folder: the user unlocks once (docs/reruns.md)
    locks = work / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        run_snakemake(work, None, ["--unlock", *run_args(work)])

    out, seconds = run_snakemake(work, "local", run_args(work))  # rerun-incomplete is in profiles/local
    resumed = {r for r, _ in planned_jobs(out)}
    print(f"\n[rerun] resumed after SIGKILL in {seconds:.1f} s: {sorted(resumed)}")
    assert resumed, "the resumed run did nothing"
    assert not _incomplete_markers(work)
    counts = assert_same_outputs(baseline, work)
    print(f"[rerun] resumed vs uninterrupted: {counts}")
    # same machine, same cores, same seeds: every file is byte-identical
    assert counts["within_tolerance"] == 0, counts
