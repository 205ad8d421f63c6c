"""Helpers for the tests that run workflow scripts or the emflow Snakemake workflow.

* :func:`run_script` executes one ``workflow/scripts/*.py`` exactly as Snakemake's ``script:`` does
  (a ``snakemake`` object in its globals), so bad-input tests exercise the real validation code.
* :func:`run_snakemake`, :func:`dry_run`: Snakemake in a temporary copy of the workflow
  (``Snakefile``, ``rules/``, ``workflow/``, ``config/``, ``envs/``, ``report/``, ``.test/``,
  ``profiles/``), never in the repository itself. :func:`run_tiny_workflow` runs the tiny
  ``.test/config.yaml``; ``tests/conftest.py`` makes one such run the session fixture
  ``tiny_workflow``, shared by the report, determinism and rerun tests.
* :class:`StagedRun`: a second run of the tiny config from scratch, made in stages on demand
  (session fixture ``second_tiny_run``): the determinism test compares it with ``tiny_workflow``, and
  the SLURM test compares its SLURM run with the first stage, so that neither runs its own.

All runs share one numba cache (``EMFLOW_SHARED_NUMBA_CACHE``, see ``emflow.pipeline.log``):
the kernels live in the installed ``emflow`` package, so a cache filled by one copy is valid for
every other copy, and only the first run of a session (or machine) pays for compilation. numba
checks each cached entry against its source file's timestamp, so a stale cache is never used.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import runpy
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKFLOW_PARTS = ["Snakefile", "rules", "workflow", "config", "envs", "report", ".test", "profiles"]
SNAKEMAKE_TIMEOUT_S = 600
# results/ subfolders that record how a run went, not what it computed (timestamps, durations)
# (the run-time report is drawn from the benchmarks)
RUN_RECORDS = ("results/logs", "results/benchmarks", "results/report/runtimes")
# temporary outputs (Snakemake's temp()): deleted once their consumers ran, so a run that stopped
# between them may still hold some
TEMPORARY = ("results/extract/chunks",)


def run_script(name: str, *, input: dict, output: dict, params: dict | None = None,
               wildcards: dict | None = None, log: str | os.PathLike | None = None, threads: int = 1,
               rule: str | None = None, resources: dict | None = None) -> None:
    """Run ``workflow/scripts/<name>`` with a Snakemake-like ``snakemake`` object.

    Values of ``input``/``output`` are paths (or lists of paths); the object has the attributes scripts
    use: ``input``, ``output``, ``params``, ``wildcards``, ``log``, ``threads``, ``rule``, ``resources``.
    """
    from snakemake.io import InputFiles, Log, Namedlist, OutputFiles, Params, Wildcards

    def files(cls, d):
        return cls(fromdict={k: (list(map(str, v)) if isinstance(v, list | tuple) else str(v))
                             for k, v in d.items()})

    class _Smk:
        pass

    smk = _Smk()
    smk.input = files(InputFiles, input)
    smk.output = files(OutputFiles, output)
    smk.params = Params(fromdict=params or {})
    smk.wildcards = Wildcards(fromdict=wildcards or {})
    smk.log = Log([str(log)]) if log else Log([])
    smk.threads = threads
    smk.rule = rule or pathlib.Path(name).stem
    smk.resources = Namedlist(fromdict=resources or {})
    smk.config = {}
    runpy.run_path(str(REPO / "workflow" / "scripts" / name), init_globals={"snakemake": smk}, run_name="__main__")


def shared_numba_cache() -> pathlib.Path:
    """One numba cache for all test runs on this machine (``$EMFLOW_TEST_NUMBA_CACHE`` overrides)."""
    path = os.environ.get("EMFLOW_TEST_NUMBA_CACHE") or os.path.join(
        tempfile.gettempdir(), f"emflow-test-numba-cache-{os.getuid()}"
    )
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def clean_env(extra: dict[str, str] | None = None, *, slurm: bool = False) -> dict[str, str]:
    """The test process's environment without SLURM job variables or a Snakemake profile.

    Unless ``slurm`` (the tests that submit to a SLURM cluster), ``SLURM_CONF`` names an empty file:
    every ``snakemake`` command loads the installed SLURM executor plugin, which runs
    ``scontrol show config`` at import (snakemake-executor-plugin-slurm 2.6.1, for a help text). With
    SLURM's client installed but no controller answering (as after tests/workflow/test_slurm.py stops
    the cluster it started) that call waits ~9 s for the controller, in each of the suite's ~50
    snakemake commands; with an empty config it fails at once, and the plugin only loses its help text.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNAKEMAKE_"))}
    if not slurm:
        env["SLURM_CONF"] = os.devnull
    # the slurm plugin asks getpass.getuser() (reads $USER first) when it guesses an account
    env.setdefault("USER", pwd.getpwuid(os.getuid()).pw_name)
    env.pop("NUMBA_CACHE_DIR", None)
    env["EMFLOW_SHARED_NUMBA_CACHE"] = str(shared_numba_cache())
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def copy_workflow(dest: pathlib.Path) -> pathlib.Path:
    """Copy the workflow (not results, logs or caches) into the new folder ``dest``."""
    dest.mkdir(parents=True)
    for name in WORKFLOW_PARTS:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "results", "logs"))
        elif src.is_file():
            shutil.copy2(src, dest / name)
    return dest


def copy_run(src: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """Copy a finished run (workflow, results and ``.snakemake`` records) keeping timestamps."""
    shutil.copytree(src, dest, symlinks=True, copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("slurm_logs", "numba_cache"))
    return dest


def snakemake_cmd(profile: str | None, args: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "snakemake"]
    if profile:
        cmd += ["--profile", str(REPO / "profiles" / profile)]
    return cmd + list(args)


def run_snakemake(workdir: pathlib.Path, profile: str | None, args: list[str], env: dict[str, str] | None = None,
                  timeout: float = SNAKEMAKE_TIMEOUT_S, check: bool = True) -> tuple[str, float]:
    """Run snakemake in ``workdir``; returns (stdout + stderr, wall seconds). Fails the test on error."""
    cmd = snakemake_cmd(profile, args)
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=workdir, env=env or clean_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed (rc {res.returncode}) in {workdir}:\n{res.stdout[-6000:]}")
    return res.stdout, seconds


def run_tiny_workflow(workdir: pathlib.Path, targets: list[str] | tuple[str, ...] = ()) -> float:
    """Copy the workflow into the new folder ``workdir`` and run the tiny test config there
    (``targets``, or all of it) on 2 cores; returns the wall seconds. Fails the test on error."""
    copy_workflow(workdir)
    # targets first: --configfile takes several values
    _, seconds = run_snakemake(workdir, None, [*targets, "--cores", "2", "--configfile", ".test/config.yaml"],
                               timeout=1500)
    return seconds


def merged_tiny_config() -> dict:
    """config/config.yaml with .test/config.yaml on top (nested dicts merged, as Snakemake does)."""
    import yaml

    def merge(base: dict, top: dict) -> dict:
        out = dict(base)
        for key, value in top.items():
            out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return out

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return merge(base, yaml.safe_load((REPO / ".test" / "config.yaml").read_text()) or {})


def tiny_stage_targets() -> dict[str, list[str]]:
    """The stages of the second tiny run (:class:`StagedRun`), in order, and their targets.

    * ``tomograms``: each tomogram's reconstruction with its slice picture and the particle set of the
      manual picks (simulation, reconstruction, subtilt + 3D extraction): what
      tests/workflow/test_slurm.py runs on SLURM and compares with this stage;
    * ``picks``: template matching's picks of each tomogram (initial model from the manual picks,
      template matching, peak extraction, pick filtering) and the manual picks' particles: what
      tests/workflow/test_determinism.py compares with the session's first run.
    """
    from emflow.pipeline.config import demo_names

    cfg = merged_tiny_config()
    names, bin_, manual = demo_names(cfg), cfg["tomogram"]["bin"], cfg["extract"]["label"]
    return {
        "tomograms": [*(f"results/tomograms/{t}__bin{bin_}_slices.png" for t in names), f"results/sets/{manual}.lst"],
        "picks": [*(f"results/picks/{t}__picks.star" for t in names), f"results/sets/{manual}.lst",
                  *(f"results/extract/particles3d/{t}__{manual}.hdf" for t in names)],
    }


class StagedRun:
    """A run of the tiny config from scratch in a fresh workflow copy (``--profile local --cores 2``),
    made stage by stage as tests ask for them (:func:`tiny_stage_targets`).

    :meth:`upto` runs every stage not yet run up to the one asked for and returns the folder as that
    stage left it: a copy (timestamps kept) taken before the next stage ran, so what a test sees does
    not depend on which tests asked for later stages before it. The last stage is not copied.
    """

    def __init__(self, root: pathlib.Path, stages: dict[str, list[str]] | None = None):
        self.root, self._stages = root, stages
        self.work = root / "wf"
        self.seconds: dict[str, float] = {}  # wall seconds of each stage's snakemake run
        self._done: dict[str, pathlib.Path] = {}

    @property
    def stages(self) -> dict[str, list[str]]:
        if self._stages is None:
            self._stages = tiny_stage_targets()
        return self._stages

    def upto(self, name: str) -> pathlib.Path:
        names = list(self.stages)
        assert name in names, (name, names)
        for i, stage in enumerate(names[:names.index(name) + 1]):
            if stage in self._done:
                continue
            if not self.work.exists():
                copy_workflow(self.work)
            # targets first: --configfile takes several values
            _, self.seconds[stage] = run_snakemake(
                self.work, "local", [*self.stages[stage], "--cores", "2", "--configfile", ".test/config.yaml"],
                timeout=1500)
            last = i == len(names) - 1
            self._done[stage] = self.work if last else copy_run(self.work, self.root / stage)
        return self._done[name]


def job_counts(output: str) -> dict[str, int]:
    """``{rule: number of jobs}`` from Snakemake's "Job stats" table (without ``total``).

    Empty when Snakemake printed "Nothing to be done".
    """
    lines = output.splitlines()
    try:
        start = lines.index("Job stats:")
    except ValueError:
        if "Nothing to be done" in output:
            return {}
        raise AssertionError(f"no job stats table in the snakemake output:\n{output[-3000:]}") from None
    counts = {}
    for line in lines[start + 3:]:  # skip the "job count" header and the dashes
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            break
        counts[fields[0]] = int(fields[1])
    counts.pop("total", None)
    return counts


def dry_run(workdir: pathlib.Path, args: list[str], env: dict[str, str] | None = None) -> dict[str, int]:
    """Jobs per rule that ``snakemake -n`` (local profile) would run with ``args``."""
    out, _ = run_snakemake(workdir, "local", ["-n", "--cores", "2", *args], env)
    return job_counts(out)


def result_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Files under ``root/results`` that hold computed results (not logs or benchmarks), relative."""
    files = []
    for p in (root / "results").rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not str(rel).startswith(RUN_RECORDS + TEMPORARY):
            files.append(rel)
    return sorted(files)


def assert_same_outputs(ref: pathlib.Path, other: pathlib.Path, rel_tol: float = 1e-5,
                        png_tol: int = 2) -> dict[str, int]:
    """Every result file of one run exists in the other with the same content.

    Byte-identical is required for everything except

    * array files (``.npy``, ``.npz``, ``.mrc``/``.mrcs``/``.map``, ``.hdf``/``.h5``): the arrays must
      agree to ``rel_tol`` times the array's largest magnitude. Reductions in numba ``prange`` loops
      and multi-threaded FFTs sum in an order that depends on the thread count, which differs between
      a local run (``--cores``) and a SLURM job (``--cpus-per-task``): float32 rounding differences.
    * ``.png`` pictures: decoded pixels may differ by ``png_tol`` grey levels (the same rounding,
      seen through a colour map).

    Returns ``{"identical": n, "within_tolerance": m}``.
    """
    files_ref, files_other = result_files(ref), result_files(other)
    assert files_ref, f"no results under {ref}/results"
    assert files_ref == files_other, (
        f"the runs made different files: only in {ref}: {sorted(set(files_ref) - set(files_other))}, "
        f"only in {other}: {sorted(set(files_other) - set(files_ref))}"
    )
    counts = {"identical": 0, "within_tolerance": 0}
    for rel in files_ref:
        a, b = (ref / rel).read_bytes(), (other / rel).read_bytes()
        if a == b:
            counts["identical"] += 1
            continue
        if rel.suffix == ".json":  # numbers in summaries: float tolerance, everything else equal
            import json

            _assert_close_json(json.loads(a), json.loads(b), rel_tol, str(rel))
            counts["within_tolerance"] += 1
            continue
        arrays_a, arrays_b = load_arrays(ref / rel), load_arrays(other / rel)
        assert arrays_a is not None, f"{rel} differs between the runs (and is not an array/picture file)"
        assert arrays_a.keys() == arrays_b.keys(), rel
        for key, x in arrays_a.items():
            y = arrays_b[key]
            assert x.shape == y.shape and x.dtype == y.dtype, f"{rel}:{key}"
            if rel.suffix == ".png":
                diff = np.abs(x.astype(np.int32) - y.astype(np.int32)) if x.dtype != np.float32 else np.abs(x - y) * 255
                assert diff.max() <= png_tol, f"{rel}: pixels differ by up to {diff.max()}"
            elif x.dtype.kind in "fc":
                scale = max(float(np.max(np.abs(x))), 1e-30) if x.size else 1.0
                np.testing.assert_allclose(y, x, rtol=0, atol=rel_tol * scale, err_msg=f"{rel}:{key}")
            else:
                np.testing.assert_array_equal(y, x, err_msg=f"{rel}:{key}")
        counts["within_tolerance"] += 1
    return counts


def _assert_close_json(x, y, rel_tol: float, where: str) -> None:
    if isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for k in x:
            _assert_close_json(x[k], y[k], rel_tol, f"{where}:{k}")
    elif isinstance(x, list):
        assert isinstance(y, list) and len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_close_json(u, v, rel_tol, f"{where}[{i}]")
    elif isinstance(x, float) and isinstance(y, (int, float)):
        assert abs(x - y) <= rel_tol * max(abs(x), abs(y), 1e-12), f"{where}: {x} != {y}"
    else:
        assert x == y, f"{where}: {x!r} != {y!r}"


def load_arrays(path: pathlib.Path) -> dict[str, np.ndarray] | None:
    """The arrays in an array or picture file by name, or None for other kinds of file."""
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
    if suffixes.endswith(".png"):
        import matplotlib.image

        return {"": matplotlib.image.imread(str(path))}
    return None
