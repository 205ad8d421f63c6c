"""Snakemake adapter: user tilt series + .tlt/.xf/.defocus/tilt.com/picks → results/import/{tomo}.tlt + info json
(:func:`emflow.sta.tomogram_steps.import_tomogram`)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.tomogram_steps import import_tomogram  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule import_tomogram's inputs, outputs and params onto :func:`import_tomogram`."""
    p = smk.params
    import_tomogram(smk.input.tilt_series, smk.output.tlt, smk.output.info, entry=p.entry, apix=p.apix,
                    voltage_kv=p.voltage_kv, cs_mm=p.cs_mm, ampcont=p.ampcont,
                    apix_override=getattr(p, "apix_override", None))


main(snakemake)  # noqa: F821
