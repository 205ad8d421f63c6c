# Demo simulator (input.source = demo): true maps resampled from the bundled PDB-derived
# structures, simulated tilt series with CTF, dose and noise in an EMAN2-project-like layout
# (tiltseries/, info/), simulated single-particle images with a RELION STAR, and the ground
# truth beside them (results/demo/truth/) for scoring.

from emflow.demo.data import structure_path
from emflow.demo.simulate import tilt_range

DEMO_CFG = config["demo"]
# Tomogram k of the demo (0-based, in tomogram_names() order) uses seed demo.seed + k.
DEMO_SEEDS = {name: DEMO_CFG["seed"] + k for k, name in enumerate(tomogram_names())}
DEMO_TILTS_DEG = tilt_range(
    DEMO_CFG["tomo"]["tilt_min_deg"],
    DEMO_CFG["tomo"]["tilt_max_deg"],
    DEMO_CFG["tomo"]["tilt_step_deg"],
)


rule simulate_reference:
    input:
        tomo_map=str(structure_path(DEMO_CFG["tomo"]["structure"])),
        spa_map=str(structure_path(DEMO_CFG["spa"]["structure"])),
    output:
        tomo=truth_map_tomo(),
        spa=truth_map_spa(),
    log:
        "results/logs/simulate/simulate_reference/reference.log",
    benchmark:
        "results/benchmarks/simulate/simulate_reference/reference.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        apix_tomo=config["microscope"]["apix"],
        apix_spa=DEMO_CFG["spa"]["apix"],
        box_spa=DEMO_CFG["spa"]["box"],
    script:
        "../workflow/scripts/simulate_reference.py"


rule simulate_tiltseries:
    input:
        reference=truth_map_tomo(),
    output:
        tilt_series="results/demo/tiltseries/{tomo}.mrc",
        tlt="results/demo/tiltseries/{tomo}.tlt",
        info="results/demo/info/{tomo}_info.json",
        truth="results/demo/truth/{tomo}_truth.json",
        truth_star="results/demo/truth/{tomo}_truth.star",
    log:
        "results/logs/simulate/simulate_tiltseries/{tomo}.log",
    benchmark:
        "results/benchmarks/simulate/simulate_tiltseries/{tomo}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        seed=lookup(dpath="{tomo}", within=DEMO_SEEDS),
        tilts_deg=DEMO_TILTS_DEG,
        apix=config["microscope"]["apix"],
        voltage_kv=config["microscope"]["voltage_kv"],
        cs_mm=config["microscope"]["cs_mm"],
        ampcont=config["microscope"]["ampcont"],
        tomo=rule_params(config, "simulate_tiltseries", "demo.tomo"),
    script:
        "../workflow/scripts/simulate_tiltseries.py"


rule simulate_spa:
    input:
        reference=truth_map_spa(),
    output:
        particles="results/demo/spa/particles.mrcs",
        star="results/demo/spa/particles.star",
        truth=truth_file_spa(),
    log:
        "results/logs/simulate/simulate_spa/spa.log",
    benchmark:
        "results/benchmarks/simulate/simulate_spa/spa.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        seed=DEMO_CFG["seed"],
        spa=DEMO_CFG["spa"],
        voltage_kv=config["microscope"]["voltage_kv"],
        cs_mm=config["microscope"]["cs_mm"],
        ampcont=config["microscope"]["ampcont"],
    script:
        "../workflow/scripts/simulate_spa.py"
