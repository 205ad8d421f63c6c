"""Snakemake ``benchmark:`` tables → one record per job (the run-time figure of the report)."""

from __future__ import annotations

import csv
import math
import os
import pathlib
from collections.abc import Iterable


def read_benchmark_tables(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Parse the benchmark tables ``.../<stage>/<rule>/<job>.tsv`` given.

    Returns
    -------
    list of dict
        ``{"stage", "rule", "job", "seconds", "max_rss_mb"}`` per table (its last row when ``repeat()``
        wrote several), sorted by path. Unreadable or empty tables are skipped: a benchmark is
        information, not an input a run should fail on.
    """
    out = []
    for path in sorted(pathlib.Path(p) for p in paths):
        try:
            with open(path, newline="") as fh:
                row = list(csv.DictReader(fh, delimiter="\t"))[-1]
            seconds = float(row["s"])
        except (OSError, KeyError, IndexError, ValueError):
            continue
        try:
            rss: float | None = float(row.get("max_rss", "nan"))
        except ValueError:
            rss = None
        out.append({"stage": path.parent.parent.name, "rule": path.parent.name, "job": path.stem,
                    "seconds": seconds, "max_rss_mb": rss if rss is not None and math.isfinite(rss) else None})
    return out
