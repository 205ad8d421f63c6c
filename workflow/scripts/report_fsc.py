"""Snakemake adapter: FSC text files (emflow.io.write_fsc_txt) → one FSC plot."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.demo import scores  # noqa: E402
from emflow.io import read_fsc_txt  # noqa: E402
from emflow.pipeline import plots  # noqa: E402

smk = snakemake  # noqa: F821
entry = smk.params.entry
curves = []
for label, path in zip(entry["labels"], smk.input.fsc):
    freq, fsc = read_fsc_txt(path)
    curves.append((label, freq, fsc))
    log.info("%s (%s): %s", label, path, scores.fsc_summary(freq, fsc))
plots.fsc_curves(curves, smk.output.png, title=entry["title"])
