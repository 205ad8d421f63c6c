"""Snakemake adapter: FSC text files (emflow.io.write_fsc_txt) → one FSC plot."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.demo import scores  # noqa: E402
from emflow.io import read_fsc_txt  # noqa: E402
from emflow.pipeline import plots  # noqa: E402


def draw_fsc(paths: list[str], labels: list[str], png: str, title: str) -> None:
    """The FSC curves of ``paths`` (one label each) on one plot in ``png``."""
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} FSC files but {len(labels)} labels")
    curves = []
    for label, path in zip(labels, paths):
        freq, fsc = read_fsc_txt(path)
        curves.append((label, freq, fsc))
        log.info("%s (%s): %s", label, path, scores.fsc_summary(freq, fsc))
    plots.fsc_curves(curves, png, title=title)


smk = snakemake  # noqa: F821
draw_fsc(list(smk.input.fsc), list(smk.params.labels), smk.output.png, smk.params.title)
