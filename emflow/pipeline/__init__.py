"""Snakemake glue: config validation and the input table, job logging, figures.

Nothing here imports snakemake."""
