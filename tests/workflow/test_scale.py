"""Thousands of particles and tens of tomograms must not become thousands of jobs.

``snakemake -n`` (nothing is simulated or computed) with the demo scaled up to 10 tomograms of
2,000 particles each and a 20,000-image single-particle set, and again with 10x fewer particles
everywhere. The number of jobs of every rule must be the same in both runs except for the
single-particle similarity-matrix scatter (``spa_simmx``), whose jobs are particle *chunks*
(``spa.chunk_size`` particles each); everything else is one job per tomogram (x particle label),
per refinement iteration, or per run. docs/slurm.md ("How many jobs") states the numbers.
"""

from __future__ import annotations

import math

import pytest
import yaml
from workflow_runner import REPO, copy_workflow, dry_run

pytestmark = [pytest.mark.workflow]

N_TOMOGRAMS = 10
# (particles per tomogram, single-particle images) of the large and the small project
LARGE = (2000, 20000)
SMALL = (200, 2000)
# rules that make exactly one job per tomogram (when the stage exists in the workflow)
PER_TOMOGRAM = ["simulate_tiltseries", "tomogram_reconstruct", "tomogram_slices",
                "tempmatch_search", "tempmatch_extract", "picks_filter"]
# one job per tomogram and particle label (manual picks + template-matching picks)
PER_TOMOGRAM_AND_LABEL = ["extract_particles"]


def scaled_config(n_per_tomogram: int, n_spa: int) -> dict:
    return {"demo": {"tomo": {"n_tomograms": N_TOMOGRAMS, "n_particles": n_per_tomogram},
                     "spa": {"n_particles": n_spa}}}


@pytest.fixture(scope="module")
def job_tables(tmp_path_factory):
    """Dry-run job counts per rule of the large and the small project (default config + overrides)."""
    work = copy_workflow(tmp_path_factory.mktemp("scale") / "wf")
    tables = {}
    for name, (n_tomo_particles, n_spa) in {"large": LARGE, "small": SMALL}.items():
        override = work / f"scale_{name}.yaml"
        override.write_text(yaml.safe_dump(scaled_config(n_tomo_particles, n_spa)))
        tables[name] = dry_run(work, ["--configfile", "config/config.yaml", str(override.name)])
    return tables


def defaults() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_jobs_scale_with_tomograms_and_chunks_not_particles(job_tables):
    large, small = job_tables["large"], job_tables["small"]
    total = sum(large.values())
    print(f"\n[scale] {N_TOMOGRAMS} tomograms x {LARGE[0]} particles + {LARGE[1]} SPA images: "
          f"{total} jobs; per rule: {dict(sorted(large.items()))}")
    print(f"[scale] 10x fewer particles: {sum(small.values())} jobs")
    assert large.keys() == small.keys()

    cfg = defaults()
    spa = cfg["spa"]
    n_iter = spa["iter"] - max(1, spa["startiter"]) + 1
    chunks = {name: math.ceil(n / spa["chunk_size"]) for name, (_, n) in {"large": LARGE, "small": SMALL}.items()}
    if "spa_simmx" in large:
        assert large["spa_simmx"] == n_iter * chunks["large"]
        assert small["spa_simmx"] == n_iter * chunks["small"]
    # every other rule: the same number of jobs for 10x the particles
    differing = {r: (small[r], large[r]) for r in large if r != "spa_simmx" and large[r] != small[r]}
    assert not differing, f"job counts that grow with the number of particles (small, large): {differing}"

    for rule in PER_TOMOGRAM:
        if rule in large:
            assert large[rule] == N_TOMOGRAMS, (rule, large[rule])
    labels = {cfg["extract"]["label"], cfg["picks"]["label"]}
    for rule in PER_TOMOGRAM_AND_LABEL:
        if rule in large:
            assert large[rule] == N_TOMOGRAMS * len(labels), (rule, large[rule])
    # no rule has more jobs than a per-tomogram-and-label stage, one per refinement iteration and
    # chunk, or a few per iteration: nothing per particle
    bound = max(N_TOMOGRAMS * len(labels) + 10, 3 * n_iter + 10)
    too_many = {r: n for r, n in large.items() if r != "spa_simmx" and n > bound}
    assert not too_many, f"rules with more than {bound} jobs: {too_many}"
    assert total < 1000, f"{total} jobs for {N_TOMOGRAMS} tomograms"
