"""Runtime settings do not touch finished results, and neither does appending an iteration.

Snakemake reruns a job when its ``params`` change (the ``params`` rerun trigger of both profiles,
docs/reruns.md). Threads are rule resources (rule defaults, ``--set-threads`` / a profile's
``set-threads``), not config keys, and each rule receives only the config keys it reads
(``emflow/pipeline/params.py``, ``emflow.sta.spt_refine.STAGE_KEYS``, ``emflow.spa.refine_loop.STAGE_KEYS``);
an alignment job of the subtilt refinement receives only its own iteration's letter and options.

On a copy of the session's finished tiny run (fixture ``tiny_workflow``, tests/conftest.py):

(a) other thread counts for every multi-threaded rule: ``snakemake --list-params-changes`` lists
    nothing and a dry run has nothing to do;
(b) one more iteration appended to ``spt_refine.iters``: no output has changed params unless its
    inputs change too (the report figures of the last map and of the FSC of every iteration), and
    the dry run plans the new iteration (plus the jobs that gather every iteration) but nothing of
    the setup or of iteration 01;
(c) control: a science key the search reads (``tempmatch.delta_deg``) is listed, so (a) and (b)
    are not vacuous.
"""

from __future__ import annotations

import pytest
import yaml
from test_rerun import planned_jobs
from workflow_runner import copy_run, run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

THREADED_RULES = ("tempmatch_search", "initial_model_sgd", "spt_refine_align", "spt_refine_make3d",
                  "spt_refine_postprocess", "tomogram_reconstruct", "simulate_tiltseries", "simulate_spa")


@pytest.fixture(scope="module")
def finished(tiny_workflow, tmp_path_factory):
    return copy_run(tiny_workflow, tmp_path_factory.mktemp("params_change") / "run")


def _args(work, override: dict | None = None, name: str = "override") -> list[str]:
    configs = [".test/config.yaml"]
    if override:
        (work / f"{name}.yaml").write_text(yaml.safe_dump(override))
        configs.append(f"{name}.yaml")
    return ["--cores", "2", "--configfile", *configs]


def _listed(work, option: str, extra: list[str]) -> list[str]:
    out, _ = run_snakemake(work, "local", [option, *extra])
    return [line.strip() for line in out.splitlines() if line.strip().startswith("results/")]


def params_changes(work, extra: list[str]) -> list[str]:
    """Output files whose recorded params differ from what the rules would pass now."""
    return _listed(work, "--list-params-changes", extra)


def input_changes(work, extra: list[str]) -> list[str]:
    """Output files whose set of input files differs from the recorded one."""
    return _listed(work, "--list-input-changes", extra)


def _tiny_iters() -> str:
    from workflow_runner import REPO

    cfg = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
    return cfg.get("spt_refine", {}).get("iters") or yaml.safe_load(
        (REPO / "config" / "config.yaml").read_text())["spt_refine"]["iters"]


def test_thread_counts_change_nothing(finished):
    threads = ["--set-threads", *(f"{rule}=1" for rule in THREADED_RULES)]
    changed = params_changes(finished, [*_args(finished), *threads])
    assert not changed, f"--set-threads marks finished outputs as changed: {changed}"
    dry, _ = run_snakemake(finished, "local", ["-n", *_args(finished), *threads])
    assert "Nothing to be done" in dry, planned_jobs(dry)


def test_appending_an_iteration_changes_no_finished_job(finished):
    iters = _tiny_iters()
    n_done = len(iters.split(","))
    override = {"spt_refine": {"iters": f"{iters},p"}}
    args = _args(finished, override, "more_iters")
    changed = params_changes(finished, args)
    # only outputs that summarise every iteration (the final map's figure, the FSC of all iterations)
    # may change their params, and those are redone anyway: their inputs change
    not_redone_anyway = sorted(set(changed) - set(input_changes(finished, args)))
    assert not not_redone_anyway, f"appending an iteration changes the params of {not_redone_anyway}"
    assert not [p for p in changed if not p.startswith("results/report/")], changed
    print(f"\n[params] appending an iteration: params changed only where the inputs change too: {changed}")
    dry, _ = run_snakemake(finished, "local", ["-n", *_args(finished, override, "more_iters")])
    planned = planned_jobs(dry)
    new_it = f"{n_done + 1:02d}"
    spt = [(r, w) for r, w in planned if r.startswith("spt_refine_")]
    assert ("spt_refine_postprocess", {"it": new_it}) in spt, spt
    redone = [(r, w) for r, w in spt if r == "spt_refine_setup" or (w.get("it") not in (None, new_it))]
    assert not redone, f"appending an iteration redoes {redone}"
    upstream = sorted({r for r, _ in planned if not r.startswith(("spt_refine_", "report_"))})
    assert not upstream, upstream


def test_a_science_key_is_seen(finished):
    changed = params_changes(finished, _args(finished, {"tempmatch": {"delta_deg": 45.0}}, "delta"))
    assert any("results/tempmatch/" in path and path.endswith("__scores.mrc") for path in changed), changed
    assert not [p for p in changed if not p.startswith("results/tempmatch/")], changed
