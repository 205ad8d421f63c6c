"""Snakemake adapter: true map → simulated single-particle stack (.mrcs), RELION STAR and truth STAR."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.demo.simulate_steps import simulate_spa_job  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule simulate_spa's inputs, outputs and params onto :func:`simulate_spa_job`."""
    p = smk.params
    simulate_spa_job(smk.input.reference, smk.output.particles, smk.output.star, smk.output.truth, seed=p.seed,
                     spa=p.spa, voltage_kv=p.voltage_kv, cs_mm=p.cs_mm, ampcont=p.ampcont, threads=smk.threads)


main(snakemake)  # noqa: F821
