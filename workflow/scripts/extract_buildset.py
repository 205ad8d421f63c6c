"""Snakemake adapter: per-tomogram 3D particle files of one label → sets/<label>.lst (e2spt_buildsets)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

from emflow.sta.sets import set_entries, write_set  # noqa: E402


def main(particles3d: list, summaries: list, out_lst: str, spliteo: bool) -> None:
    groups = []
    for path, summary_path in zip(particles3d, summaries):
        with open(summary_path) as f:
            summary = json.load(f)
        coords = [p["xyz_unbin"] for p in summary["particle_table"]]
        log.info("%s: %d particles", path, len(coords))
        groups.append((path, coords))
    if not any(coords for _, coords in groups):
        # An empty set is bad input for averaging/refinement; it is only logged here because the tiny
        # test config (.test/config.yaml) yields no template-matching picks (see docs/report.md).
        log.error("EMPTY SET %s: no particles in any tomogram (%d searched; see the 'excluded' lists in %s). "
                  "Fix: check the picks of this label (picks.min_score / threshold, extract.skip_edge, "
                  "extract.boxsize_unbin)", out_lst, len(groups), ", ".join(map(str, summaries)))
    entries = set_entries(groups, spliteo=spliteo)
    write_set(out_lst, entries)
    n_odd = sum(e.meta.get("class", 0) for e in entries)
    log.info("%s: %d particles (%d class 1, %d class 0)", out_lst, len(entries), n_odd, len(entries) - n_odd)


main(list(snakemake.input.particles3d), list(snakemake.input.summaries), snakemake.output.lst,  # noqa: F821
     snakemake.params.spliteo)  # noqa: F821
