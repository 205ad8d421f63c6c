"""Snakemake adapter: copy a stage's PNG into results/report/figures/ (where it is marked for the report)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import shutil  # noqa: E402

from emflow.io import atomic_write  # noqa: E402

smk = snakemake  # noqa: F821
with atomic_write(smk.output.png) as tmp:
    shutil.copyfile(smk.input.png, tmp)
log.info("%s -> %s", smk.input.png, smk.output.png)
