"""Shared pytest fixtures."""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# foreign-format fixtures (tests/foreign/), slow plain-numpy references (tests/naive/) and the
# workflow runner (tests/workflow/) are
# imported by name from every test folder
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "naive"), str(REPO / "tests" / "workflow")]
SHARED_DATA = pathlib.Path(os.environ.get("EMFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """``../shared/data`` (real PDB-derived maps); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (real-structure tests need ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_map(shared_data):
    """Load a gzip'd MRC from ``../shared/data`` as ``(float32 array [z,y,x], apix)``."""
    import mrcfile

    def load(name: str):
        with mrcfile.open(shared_data / name, permissive=True) as m:
            return np.asarray(m.data, dtype=np.float32).copy(), float(m.voxel_size.x)

    return load


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator (every test is deterministic)."""
    return np.random.default_rng(1234)


# One run of the tiny workflow for the whole session (report, determinism and rerun tests).
# Set EMFLOW_TINY_WORKFLOW_DIR to an existing finished run (a workflow copy with results/) to reuse it.
@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory) -> pathlib.Path:
    """Workflow copy in which ``snakemake --cores 2 --configfile .test/config.yaml`` has run."""
    from workflow_runner import run_tiny_workflow

    reuse = os.environ.get("EMFLOW_TINY_WORKFLOW_DIR")
    if reuse and (pathlib.Path(reuse) / "results").is_dir():
        return pathlib.Path(reuse)
    workdir = tmp_path_factory.mktemp("tiny_workflow") / "wf"
    seconds = run_tiny_workflow(workdir)
    print(f"\n[tiny_workflow] whole tiny workflow: {seconds:.1f} s")
    return workdir


# A second run of the tiny config from scratch, in stages (tests/workflow/workflow_runner.py StagedRun):
# the SLURM test's local reference run (stage "tomograms") and the determinism test's second run
# (stage "picks", which continues the first) are one run.
@pytest.fixture(scope="session")
def second_tiny_run(tmp_path_factory):
    """:class:`workflow_runner.StagedRun` of ``.test/config.yaml``; ``.upto(stage)`` runs up to a stage."""
    from workflow_runner import StagedRun

    return StagedRun(tmp_path_factory.mktemp("second_tiny_run"))
