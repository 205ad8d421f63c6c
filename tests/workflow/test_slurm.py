"""The workflow on a real SLURM cluster gives the same results as a local run.

A one-node SLURM on localhost is started by ``tests/workflow/slurm/start-local-slurm.sh`` when
none answers and we are root (CI runs as root, so there the test always runs). Each
test runs a workflow twice, in two temporary folders: once with ``profiles/local`` and
once with ``profiles/slurm`` (every job an sbatch job), then checks

* the outputs of both runs are identical (see :func:`assert_same_outputs` for which
  files must be byte-identical and which are compared numerically), and
* every job really ran under SLURM: ``sacct`` lists exactly the jobs of the run's
  SLURM run id as COMPLETED, and each rule's log records the ``SLURM_JOB_ID`` it ran in.

Wall times of both runs are printed (``pytest -s`` shows them). The pinned
snakemake-executor-plugin-slurm 2.6.1 first polls job states
``--slurm-init-seconds-before-status-checks`` seconds after a submission (default 40, here 2),
so short test jobs are not dominated by polling; each SLURM job still starts its own Snakemake
inside the allocation (a few seconds per job on the 2-core CI machine).

The mini workflow polls with ``squeue`` (``--slurm-status-command squeue``, for clusters without
accounting; the start script sets ``MinJobAge=300`` >= 3 x 2 s, else the plugin falls back to
sacct); the real workflow polls with ``sacct`` (the default where accounting exists).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from workflow_runner import assert_same_outputs as assert_same_results
from workflow_runner import clean_env as _runner_env
from workflow_runner import copy_workflow, load_arrays

REPO = pathlib.Path(__file__).resolve().parents[2]
START = REPO / "tests" / "workflow" / "slurm" / "start-local-slurm.sh"
STOP = REPO / "tests" / "workflow" / "slurm" / "stop-local-slurm.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.workflow, pytest.mark.slow]

SNAKEMAKE_TIMEOUT_S = 600


# ----------------------------------------------------------------------------- cluster
def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return res.returncode == 0 and any(s in res.stdout for s in ("idle", "mixed", "alloc"))


def _default_partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout
    marked = [p.rstrip("*") for p in out.split() if p.endswith("*")]
    return marked[0] if marked else out.split()[0]


@pytest.fixture(scope="module")
def slurm_cluster():
    """``{"partition": str, "account": str}`` of a SLURM that answers on this machine.

    Starts one with the script (and stops it afterwards) when none answers.
    """
    started = False
    if _slurm_answers():
        # a cluster made by the start script says which account it created
        made = pathlib.Path("/run/emflow-slurm/env")
        env = dict(line.split("=", 1) for line in made.read_text().split() if "=" in line) if made.is_file() else {}
        info = {
            "partition": os.environ.get("EMFLOW_SLURM_PARTITION") or _default_partition(),
            "account": os.environ.get("EMFLOW_SLURM_ACCOUNT", env.get("EMFLOW_SLURM_ACCOUNT", "")),
        }
    else:
        if os.geteuid() != 0:
            pytest.skip("no SLURM answers (sinfo) and not root, so tests/workflow/slurm/start-local-slurm.sh cannot start one")
        if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
            pytest.skip("no SLURM installed and no apt-get to install it")
        t0 = time.monotonic()
        res = subprocess.run([str(START)], capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            pytest.fail(f"start-local-slurm.sh failed (rc {res.returncode}):\n{res.stderr[-4000:]}")
        started = True
        env = dict(line.split("=", 1) for line in res.stdout.split() if "=" in line)
        info = {"partition": env["EMFLOW_SLURM_PARTITION"], "account": env.get("EMFLOW_SLURM_ACCOUNT", "")}
        print(f"\n[slurm] started local SLURM in {time.monotonic() - t0:.1f} s: {info}")
    # the real-workflow test polls with sacct (the plugin's default when accounting exists)
    sacct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1hour"], capture_output=True, text=True)
    if sacct.returncode != 0:
        pytest.skip(f"sacct does not work on this SLURM ({sacct.stderr.strip()}); the slurm plugin needs accounting")
    yield info
    if started:
        subprocess.run([str(STOP)], capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- running
def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment without SLURM job variables, with $USER set and the tests' shared numba cache
    (and this machine's SLURM configuration: the runs here talk to the cluster)."""
    return _runner_env(extra, slurm=True)


def run_snakemake(workdir: pathlib.Path, profile: str, args: list[str], env: dict[str, str]):
    """Run snakemake in ``workdir`` with ``profiles/<profile>``; returns (stderr, seconds)."""
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(REPO / "profiles" / profile), *args]
    t0 = time.monotonic()
    res = subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=SNAKEMAKE_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed (rc {res.returncode}) in {workdir}:\n{res.stderr[-6000:]}")
    return res.stderr, seconds


def slurm_args(cluster: dict) -> list[str]:
    """Command-line options for the SLURM run on the test cluster (besides the profile)."""
    return [
        "--jobs", "4",
        "--latency-wait", "5",
        # first status check 2 s after a submission (default 40 s)
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
    ]


def slurm_env(cluster: dict) -> dict[str, str]:
    """profiles/slurm reads the partition and account from these variables."""
    env = _clean_env({"EMFLOW_SLURM_PARTITION": cluster["partition"]})
    if cluster["account"]:
        env["EMFLOW_SLURM_ACCOUNT"] = cluster["account"]
    return env


def sacct_jobs(run_id: str) -> dict[str, str]:
    """``{slurm job id: state}`` of all jobs that snakemake submitted under ``run_id``."""
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "--name", run_id, "-S", "now-1day", "--format=JobIdRaw,State"],
        capture_output=True, text=True, check=True,
    ).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if line.strip())


def assert_ran_under_slurm(stderr: str, workdir: pathlib.Path, logs: list[str]) -> None:
    """sacct has one COMPLETED job per rule log, and each log names its SLURM job."""
    match = re.search(r"SLURM run ID: ([0-9a-f-]{36})", stderr)
    assert match, "snakemake did not report a SLURM run id; did it use the slurm executor?"
    jobs = sacct_jobs(match.group(1))
    assert len(jobs) == len(logs), f"sacct lists {jobs} for {len(logs)} rule jobs"
    assert set(jobs.values()) == {"COMPLETED"}, jobs
    for log in logs:
        text = (workdir / log).read_text()
        found = re.search(r"SLURM_JOB_ID=(\d+)", text)
        assert found and found.group(1) in jobs, f"{log} does not name a job of this run: {text[-500:]}"


def assert_same_outputs(local: pathlib.Path, slurm: pathlib.Path, rel_tol: float = 1e-5) -> int:
    """Every file under ``results/`` of one run exists in the other with the same content.

    Byte-identical is required for everything except array files (``.npy``, ``.npz``,
    ``.mrc``, ``.hdf``/``.h5``): those may differ at float32 rounding level when a rule's
    thread count differs between the runs (parallel reductions), so their arrays must
    agree to ``rel_tol`` times the largest magnitude. Returns the number of files.
    """
    files_local = sorted(p.relative_to(local) for p in (local / "results").rglob("*") if p.is_file())
    files_slurm = sorted(p.relative_to(slurm) for p in (slurm / "results").rglob("*") if p.is_file())
    assert files_local == files_slurm, "the two runs made different files"
    assert files_local, "no outputs under results/"
    for rel in files_local:
        a, b = (local / rel).read_bytes(), (slurm / rel).read_bytes()
        if a == b:
            continue
        arrays_a, arrays_b = load_arrays(local / rel), load_arrays(slurm / rel)
        assert arrays_a is not None, f"{rel} differs between the local and the SLURM run"
        assert arrays_a.keys() == arrays_b.keys(), rel
        for key, x in arrays_a.items():
            y = arrays_b[key]
            scale = max(float(np.max(np.abs(x))), 1e-30) if x.size else 1.0
            np.testing.assert_allclose(y, x, rtol=0, atol=rel_tol * scale, err_msg=f"{rel}:{key}")
    return len(files_local)


# ----------------------------------------------------------------------------- mini workflow
# A small self-contained workflow with the shape of the real one (a source, two
# parallel branches with a numba kernel, a merge), using emflow.pipeline.log like every
# emflow script does, so the per-job numba cache is exercised by concurrent SLURM jobs.
# The merge is a local rule: it reads the SLURM jobs' outputs on the submit host, and
# it saves one ~40 s polling round of the pinned plugin.
MINI_SNAKEFILE = """
BOX_RADII = [1, 2]

# a cheap merge runs on the submit host, as report/plot rules do in the real workflow
localrules: all, mini_summary

rule all:
    input: "results/summary.json"

rule mini_noise:
    output: vol="results/noise.npy"
    log: "logs/mini_noise.log"
    threads: 1
    resources: mem_mb=500, runtime=5
    script: "scripts/mini_noise.py"

rule mini_blur:
    input: vol="results/noise.npy"
    output: vol="results/blur_r{radius}.npy"
    log: "logs/mini_blur_r{radius}.log"
    threads: 1
    resources: mem_mb=500, runtime=5
    script: "scripts/mini_blur.py"

rule mini_summary:
    input: noise="results/noise.npy", blurred=expand("results/blur_r{radius}.npy", radius=BOX_RADII)
    output: summary="results/summary.json"
    params: radii=BOX_RADII
    log: "logs/mini_summary.log"
    threads: 1
    resources: mem_mb=500, runtime=5
    script: "scripts/mini_summary.py"
"""

MINI_KERNELS = '''
import numpy as np
from emflow._numba import jit


@jit
def box_blur_periodic(vol, radius):
    """Mean over the (2r+1)^3 cube around each voxel, periodic boundaries."""
    nz, ny, nx = vol.shape
    out = np.empty_like(vol)
    norm = 1.0 / (2 * radius + 1) ** 3
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                acc = 0.0
                for dz in range(-radius, radius + 1):
                    for dy in range(-radius, radius + 1):
                        for dx in range(-radius, radius + 1):
                            acc += vol[(z + dz) % nz, (y + dy) % ny, (x + dx) % nx]
                out[z, y, x] = acc * norm
    return out
'''

MINI_SCRIPTS = {
    "mini_noise.py": """
        import os
        from emflow.pipeline.log import setup_logging
        log = setup_logging(snakemake)
        log.info("SLURM_JOB_ID=%s", os.environ.get("SLURM_JOB_ID", "none"))
        import numpy as np
        vol = np.random.default_rng(2024).standard_normal((32, 32, 32)).astype(np.float32)
        np.save(snakemake.output.vol, vol)
    """,
    "mini_blur.py": """
        import os, sys
        from emflow.pipeline.log import setup_logging
        log = setup_logging(snakemake)
        log.info("SLURM_JOB_ID=%s NUMBA_CACHE_DIR=%s", os.environ.get("SLURM_JOB_ID", "none"),
                 os.environ.get("NUMBA_CACHE_DIR"))
        sys.path.insert(0, snakemake.scriptdir)
        import numpy as np
        from mini_kernels import box_blur_periodic
        vol = np.load(snakemake.input.vol)
        np.save(snakemake.output.vol, box_blur_periodic(vol, int(snakemake.wildcards.radius)))
    """,
    "mini_summary.py": """
        import json, os
        from emflow.pipeline.log import setup_logging
        log = setup_logging(snakemake)
        log.info("SLURM_JOB_ID=%s", os.environ.get("SLURM_JOB_ID", "none"))
        import numpy as np
        noise = np.load(snakemake.input.noise).astype(np.float64)
        out = {"noise_var": float(noise.var())}
        for r, path in zip(snakemake.params.radii, snakemake.input.blurred):
            out[f"var_ratio_r{r}"] = float(np.load(path).astype(np.float64).var() / noise.var())
        with open(snakemake.output.summary, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
    """,
}


def write_mini_workflow(workdir: pathlib.Path) -> tuple[list[str], list[str]]:
    """Write the mini workflow into ``workdir``; returns the logs of (SLURM jobs, local jobs)."""
    (workdir / "scripts").mkdir(parents=True)
    (workdir / "Snakefile").write_text(MINI_SNAKEFILE)
    (workdir / "scripts" / "mini_kernels.py").write_text(MINI_KERNELS)
    for name, body in MINI_SCRIPTS.items():
        (workdir / "scripts" / name).write_text(textwrap.dedent(body))
    return ["logs/mini_noise.log", "logs/mini_blur_r1.log", "logs/mini_blur_r2.log"], ["logs/mini_summary.log"]


def min_job_age_s() -> int | None:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    match = re.search(r"^MinJobAge\s*=\s*(\d+)", out, re.M)
    return int(match.group(1)) if match else None


def test_mini_workflow_slurm_squeue_equals_local(slurm_cluster, tmp_path):
    """squeue status polling (clusters without accounting) on the mini workflow."""
    age = min_job_age_s()
    if age is None or age < 3 * 2:
        pytest.skip(f"MinJobAge={age} s < 3 x 2 s: the plugin would fall back to sacct")
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    slurm_logs, local_logs = write_mini_workflow(local)
    write_mini_workflow(slurm)

    _, t_local = run_snakemake(local, "local", ["--cores", "2"], _clean_env())
    stderr, t_slurm = run_snakemake(slurm, "slurm", [*slurm_args(slurm_cluster), "--slurm-status-command", "squeue"],
                                    slurm_env(slurm_cluster))
    print(f"\n[slurm] mini workflow (3 SLURM jobs in 2 levels + 1 local), squeue polling: "
          f"local {t_local:.1f} s, SLURM {t_slurm:.1f} s")
    assert "Falling back to 'sacct'" not in stderr

    assert_ran_under_slurm(stderr, slurm, slurm_logs)
    for log in local_logs:
        assert "SLURM_JOB_ID=none" in (slurm / log).read_text(), f"local rule {log} ran inside SLURM"
    for log in slurm_logs + local_logs:
        assert "SLURM_JOB_ID=none" in (local / log).read_text(), f"local run's {log} ran inside SLURM"
    n = assert_same_outputs(local, slurm)
    assert n == 4
    # both runs actually computed: white noise box-averaged over w^3 voxels has
    # 1/w^3 of the variance (periodic boundaries: exactly, in expectation)
    summary = json.loads((slurm / "results" / "summary.json").read_text())
    for r in (1, 2):
        expected = 1.0 / (2 * r + 1) ** 3
        assert summary[f"var_ratio_r{r}"] == pytest.approx(expected, rel=0.15)
    assert summary["noise_var"] == pytest.approx(1.0, rel=0.05)


# ----------------------------------------------------------------------------- real workflow
def real_workflow_targets() -> list[str]:
    """Targets of the emflow workflow run on SLURM and locally with ``.test/config.yaml``.

    A subset of the default target: each tomogram's reconstruction (with its slice picture) and the
    particle set of the manual picks (subtilt + 3D extraction), i.e. the jobs simulate_reference,
    simulate_tiltseries, tomogram_reconstruct, tomogram_slices, extract_plan (a checkpoint),
    extract_chunk, extract_particles and extract_buildset per tomogram: several dependency levels,
    3 stages, multi-threaded numba kernels.
    The whole tiny DAG (40+ jobs with template matching, single-particle refinement and report)
    takes far longer than the few minutes this test may use on a 2-core machine; the other stages
    use the same rule machinery (script adapters, logs, threads/resources), which is what differs
    between SLURM and local runs. These are the targets of the first stage (``tomograms``) of the
    session's second tiny run (fixture ``second_tiny_run``, tests/workflow/workflow_runner.py), the
    local run the SLURM run is compared with.
    """
    from workflow_runner import merged_tiny_config, tiny_stage_targets

    if merged_tiny_config()["input"]["source"] != "demo":
        pytest.skip(".test/config.yaml does not use the demo source")
    return tiny_stage_targets()["tomograms"]


def submitted_slurm_jobs(output: str) -> set[str]:
    """SLURM job ids of the jobs Snakemake reports as submitted."""
    return set(re.findall(r"submitted with SLURM jobid (\d+)", output))


def test_real_workflow_slurm_equals_local(slurm_cluster, tmp_path, second_tiny_run):
    if not (REPO / "Snakefile").is_file() or not (REPO / ".test" / "config.yaml").is_file():
        pytest.skip("the workflow (Snakefile, .test/config.yaml) is not in the repository yet")
    targets = real_workflow_targets()
    slurm = copy_workflow(tmp_path / "slurm")
    common = ["--configfile=.test/config.yaml", *targets]  # "=": targets are not config files

    # the local run: `snakemake --profile profiles/local <targets> --cores 2 --configfile .test/config.yaml`
    # in a fresh copy (the second tiny run's first stage, shared with the determinism test)
    local = second_tiny_run.upto("tomograms")
    assert second_tiny_run.stages["tomograms"] == targets
    t_local = second_tiny_run.seconds["tomograms"]
    out, t_slurm = run_snakemake(slurm, "slurm", [*slurm_args(slurm_cluster), *common], slurm_env(slurm_cluster))
    print(f"\n[slurm] emflow .test workflow ({', '.join(targets)}): local {t_local:.1f} s, SLURM {t_slurm:.1f} s")

    match = re.search(r"SLURM run ID: ([0-9a-f-]{36})", out)
    assert match, "snakemake did not use the slurm executor"
    jobs = sacct_jobs(match.group(1))
    submitted = submitted_slurm_jobs(out)
    assert submitted and set(jobs) == submitted, (jobs, submitted)
    assert set(jobs.values()) == {"COMPLETED"}, jobs
    # every rule job of the run went through sbatch: one SLURM job per planned job (rule `all` is local)
    # (a checkpoint adds the extraction chunk jobs after the first job stats, so count finished jobs)
    planned = len([r for r in re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)", out, re.M) if r != "all"])
    assert len(jobs) == planned, (len(jobs), planned)
    counts = assert_same_results(local, slurm, rel_tol=1e-4)
    print(f"[slurm] {len(jobs)} SLURM jobs (sacct: all COMPLETED); result files: {counts}")
