"""Helpers for tests that run workflow scripts or the whole workflow (issue #7).

* :func:`run_script` executes one ``workflow/scripts/*.py`` exactly as Snakemake's ``script:`` does
  (a ``snakemake`` object in its globals), so bad-input tests exercise the real validation code.
* :func:`copy_repo` / :func:`run_workflow` run the tiny ``.test/config.yaml`` workflow in a temporary
  copy of the repository; ``tests/conftest.py`` wraps them in the session fixture ``tiny_workflow``
  shared by the report, determinism and rerun tests.
"""

from __future__ import annotations

import os
import pathlib
import runpy
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SNAKEMAKE = pathlib.Path(sys.executable).with_name("snakemake")
# One numba cache for every workflow run of the test session (compiled once, reused by the copies).
NUMBA_CACHE = pathlib.Path(os.environ.get("EMFLOW_TEST_NUMBA_CACHE", "/tmp/emflow-test-numba-cache"))


def run_script(name: str, *, input: dict, output: dict, params: dict | None = None,
               wildcards: dict | None = None, log: str | os.PathLike | None = None, threads: int = 1,
               rule: str | None = None) -> None:
    """Run ``workflow/scripts/<name>`` with a Snakemake-like ``snakemake`` object.

    Values of ``input``/``output`` are paths (or lists of paths); the object has the attributes scripts
    use: ``input``, ``output``, ``params``, ``wildcards``, ``log``, ``threads``, ``rule``.
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
    smk.resources = Namedlist()
    smk.config = {}
    runpy.run_path(str(REPO / "workflow" / "scripts" / name), init_globals={"snakemake": smk}, run_name="__main__")


def copy_repo(dest: pathlib.Path) -> pathlib.Path:
    """Copy the files git tracks or would track (not results/, .venv/ ...) into ``dest``."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         check=True, capture_output=True).stdout
    for rel in filter(None, out.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def workflow_env() -> dict:
    env = dict(os.environ)
    env["EMFLOW_SHARED_NUMBA_CACHE"] = str(NUMBA_CACHE)
    env.pop("NUMBA_CACHE_DIR", None)
    return env


def run_snakemake(workdir: pathlib.Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    """``snakemake <args>`` in ``workdir``; returns the completed process (stdout+stderr in ``.stdout``)."""
    return subprocess.run([str(SNAKEMAKE), *args], cwd=workdir, env=workflow_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def run_workflow(workdir: pathlib.Path, cores: int = 2, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Copy the repository into ``workdir`` and run the tiny test config there (raises on failure)."""
    copy_repo(workdir)
    # extra (targets, options) before --configfile, which takes several values
    proc = run_snakemake(workdir, *extra, "--cores", str(cores), "--configfile", ".test/config.yaml")
    if proc.returncode != 0:
        raise RuntimeError(f"tiny workflow failed in {workdir}:\n{proc.stdout[-6000:]}")
    return proc
