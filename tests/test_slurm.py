"""The workflow on a real SLURM cluster gives the same results as a local run.

A one-node SLURM on localhost is started by ``tests/slurm/start-local-slurm.sh`` when
none answers and we are root (CI runs as root, so there the test always runs). Each
test runs a workflow twice, in two temporary folders: once with ``profiles/local`` and
once with ``profiles/slurm`` (every job an sbatch job), then checks

* the outputs of both runs are identical (see :func:`assert_same_outputs` for which
  files must be byte-identical and which are compared numerically), and
* every job really ran under SLURM: ``sacct`` lists exactly the jobs of the run's
  SLURM run id as COMPLETED, and each rule's log records the ``SLURM_JOB_ID`` it ran in.

Wall times of both runs are printed (``pytest -s`` shows them). The pinned
snakemake-executor-plugin-slurm 1.4.0 polls job states no sooner than 40 s after the
first submission and 40 s after each finished job, so every dependency level of the
DAG costs ~40 s under SLURM whatever the job does.
"""

from __future__ import annotations

import json
import os
import pathlib
import pwd
import re
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
START = REPO / "tests" / "slurm" / "start-local-slurm.sh"
STOP = REPO / "tests" / "slurm" / "stop-local-slurm.sh"

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
        info = {
            "partition": os.environ.get("EMFLOW_SLURM_PARTITION") or _default_partition(),
            "account": os.environ.get("EMFLOW_SLURM_ACCOUNT", ""),
        }
    else:
        if os.geteuid() != 0:
            pytest.skip("no SLURM answers (sinfo) and not root, so tests/slurm/start-local-slurm.sh cannot start one")
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
    # the pinned plugin (1.4.0) learns job states only from sacct
    sacct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1hour"], capture_output=True, text=True)
    if sacct.returncode != 0:
        pytest.skip(f"sacct does not work on this SLURM ({sacct.stderr.strip()}); the slurm plugin needs accounting")
    yield info
    if started:
        subprocess.run([str(STOP)], capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- running
def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    # the plugin reads $USER (unset in some containers) when it checks or guesses accounts
    env.setdefault("USER", pwd.getpwuid(os.getuid()).pw_name)
    env.pop("SNAKEMAKE_PROFILE", None)
    env.update(extra or {})
    return env


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
        # honoured by newer plugin releases; 1.4.0 accepts it but always waits 40 s
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
        arrays_a, arrays_b = _load_arrays(local / rel), _load_arrays(slurm / rel)
        assert arrays_a is not None, f"{rel} differs between the local and the SLURM run"
        assert arrays_a.keys() == arrays_b.keys(), rel
        for key, x in arrays_a.items():
            y = arrays_b[key]
            scale = max(float(np.max(np.abs(x))), 1e-30) if x.size else 1.0
            np.testing.assert_allclose(y, x, rtol=0, atol=rel_tol * scale, err_msg=f"{rel}:{key}")
    return len(files_local)


def _load_arrays(path: pathlib.Path) -> dict[str, np.ndarray] | None:
    suffixes = "".join(path.suffixes)
    if suffixes.endswith(".npy"):
        return {"": np.load(path)}
    if suffixes.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if suffixes.endswith((".mrc", ".mrcs", ".map")):
        import mrcfile

        with mrcfile.open(path, permissive=True) as m:
            return {"": np.asarray(m.data).copy()}
    if suffixes.endswith((".hdf", ".h5")):
        import h5py

        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out
    return None


# ----------------------------------------------------------------------------- mini workflow
# A small self-contained workflow with the shape of the real one (a source, two
# parallel branches with a numba kernel, a merge), using emflow.workflow_log like every
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
        from emflow.workflow_log import setup_logging
        log = setup_logging(snakemake)
        log.info("SLURM_JOB_ID=%s", os.environ.get("SLURM_JOB_ID", "none"))
        import numpy as np
        vol = np.random.default_rng(2024).standard_normal((32, 32, 32)).astype(np.float32)
        np.save(snakemake.output.vol, vol)
    """,
    "mini_blur.py": """
        import os, sys
        from emflow.workflow_log import setup_logging
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
        from emflow.workflow_log import setup_logging
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


def test_mini_workflow_slurm_equals_local(slurm_cluster, tmp_path):
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    slurm_logs, local_logs = write_mini_workflow(local)
    write_mini_workflow(slurm)

    _, t_local = run_snakemake(local, "local", ["--cores", "2"], _clean_env())
    stderr, t_slurm = run_snakemake(slurm, "slurm", slurm_args(slurm_cluster), slurm_env(slurm_cluster))
    print(f"\n[slurm] mini workflow (3 SLURM jobs in 2 levels + 1 local): local {t_local:.1f} s, SLURM {t_slurm:.1f} s")

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

    Empty means the default target (rule ``all``). Keep the DAG shallow: with the pinned
    plugin each dependency level costs ~40 s under SLURM.
    """
    return []


def _copy_workflow(dest: pathlib.Path) -> None:
    keep = ["Snakefile", "rules", "workflow", "config", "envs", ".test", "profiles"]
    dest.mkdir(parents=True)
    for name in keep:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "results", "logs"))
        elif src.is_file():
            shutil.copy2(src, dest / name)


def test_real_workflow_slurm_equals_local(slurm_cluster, tmp_path):
    if not (REPO / "Snakefile").is_file() or not (REPO / ".test" / "config.yaml").is_file():
        pytest.skip("the workflow (Snakefile, .test/config.yaml) is not in the repository yet")
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    _copy_workflow(local)
    _copy_workflow(slurm)
    common = ["--configfile", ".test/config.yaml", *real_workflow_targets()]

    _, t_local = run_snakemake(local, "local", ["--cores", "2", *common], _clean_env())
    stderr, t_slurm = run_snakemake(slurm, "slurm", [*slurm_args(slurm_cluster), *common], slurm_env(slurm_cluster))
    print(f"\n[slurm] emflow .test workflow: local {t_local:.1f} s, SLURM {t_slurm:.1f} s")

    match = re.search(r"SLURM run ID: ([0-9a-f-]{36})", stderr)
    assert match, "snakemake did not use the slurm executor"
    jobs = sacct_jobs(match.group(1))
    assert jobs and set(jobs.values()) == {"COMPLETED"}, jobs
    n = assert_same_outputs(local, slurm, rel_tol=1e-4)
    print(f"[slurm] {len(jobs)} SLURM jobs; {n} output files identical or within tolerance")
