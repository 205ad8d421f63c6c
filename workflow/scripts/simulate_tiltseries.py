"""Snakemake adapter: true map → one simulated tilt series (MRC + .tlt + EMAN2 info json) and its truth."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.demo.simulate_steps import simulate_tomogram_job  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule simulate_tiltseries's inputs, outputs and params onto :func:`simulate_tomogram_job`."""
    p = smk.params
    simulate_tomogram_job(smk.input.reference, dict(smk.output.items()), smk.wildcards.tomo, seed=p.seed,
                          tilts_deg=p.tilts_deg, apix=p.apix, voltage_kv=p.voltage_kv, cs_mm=p.cs_mm,
                          ampcont=p.ampcont, tomo=p.tomo, threads=smk.threads)


main(snakemake)  # noqa: F821
