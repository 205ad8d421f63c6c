# Import stage (input.source = table | eman2_project): every tomogram's geometry, CTF and
# picks are gathered into one EMAN2 info json that all later stages read. The demo writes
# its info json directly (rules/simulate.smk), so this stage only runs for user data.

from emflow.pixel_size import apix_override


rule import_tomogram:
    input:
        tilt_series=tilt_series,
        user_files=user_import_files,
    output:
        tlt="results/import/{tomo}.tlt",
        info="results/import/info/{tomo}_info.json",
    log:
        "results/logs/import/import_tomogram/{tomo}.log",
    benchmark:
        "results/benchmarks/import/import_tomogram/{tomo}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.import_mem_mb(input.size_mb, attempt),
        runtime=RSC.MIN_RUNTIME,
    params:
        entry=tomogram_entry,
        apix=config["microscope"]["apix"],
        apix_override=lambda w: apix_override(config, TOMOGRAMS[w.tomo].tilt_series),
        voltage_kv=config["microscope"]["voltage_kv"],
        cs_mm=config["microscope"]["cs_mm"],
        ampcont=config["microscope"]["ampcont"],
    script:
        "../workflow/scripts/import_tomogram.py"
