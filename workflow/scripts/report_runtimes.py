"""Snakemake adapter: benchmark tables of every job (declared inputs) → bar chart of wall time per rule + a TSV."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.io import atomic_write  # noqa: E402
from emflow.pipeline import plots  # noqa: E402
from emflow.pipeline.benchmarks import read_benchmark_tables  # noqa: E402


def draw_runtimes(tables: list[str], png: str, tsv: str) -> None:
    """Wall time per rule of the jobs whose ``benchmark:`` tables are ``tables`` → ``png`` and ``tsv``."""
    records = read_benchmark_tables(tables)
    log.info("%d of %d benchmark tables readable", len(records), len(tables))
    plots.runtimes(records, png)
    with atomic_write(tsv) as tmp, open(tmp, "w") as fh:
        fh.write("stage\trule\tjob\tseconds\tmax_rss_mb\n")
        for r in records:
            fh.write(f"{r['stage']}\t{r['rule']}\t{r['job']}\t{r['seconds']:.3f}\t{r['max_rss_mb']}\n")


smk = snakemake  # noqa: F821
draw_runtimes(list(smk.input.benchmarks), smk.output.png, smk.output.table)
