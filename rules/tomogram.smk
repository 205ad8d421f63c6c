# Tomogram reconstruction: weighted back-projection of each tilt series at the binning of
# config tomogram.bin, using the geometry in the tomogram's info json (tlt_params), plus a
# quick-look picture of its central slices for the report. A tomogram reconstructed elsewhere
# (input table `tomogram` + `tomogram_bin`, IMOD's layout and hand) is checked, binned to
# tomogram.bin and cropped to tomogram.thickness_px instead (rule tomogram_external).

import re

# wildcard constraints matching exactly the tomograms of each rule ("(?!)" never matches)
EXTERNAL_TOMO_RE = "|".join(re.escape(n) for n in tomogram_names() if TOMOGRAMS[n].tomogram) or "(?!)"
RECONSTRUCTED_TOMO_RE = "|".join(re.escape(n) for n in tomogram_names() if not TOMOGRAMS[n].tomogram) or "(?!)"


if config["workflows"]["subtomogram"]:
    FINAL_TARGETS.extend(f"results/tomograms/{name}__bin{BIN}_slices.png" for name in tomogram_names())


rule tomogram_reconstruct:
    input:
        tilt_series=tilt_series,
        info=info_json,
    output:
        tomogram="results/tomograms/{tomo}__bin{bin}.mrc",
    log:
        "results/logs/tomogram/tomogram_reconstruct/{tomo}__bin{bin}.log",
    benchmark:
        "results/benchmarks/tomogram/tomogram_reconstruct/{tomo}__bin{bin}.tsv"
    wildcard_constraints:
        tomo=RECONSTRUCTED_TOMO_RE,
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=RSC.tomogram_mem,
        runtime=RSC.tomogram_time,
    params:
        thickness_px=config["tomogram"]["thickness_px"],
        radial_filter=config["tomogram"]["radial_filter"],
        lowpass=config["tomogram"]["lowpass"],
        apix=config["microscope"]["apix"],
    script:
        "../workflow/scripts/tomogram_reconstruct.py"


rule tomogram_external:
    input:
        tomogram=lambda wildcards: TOMOGRAMS[wildcards.tomo].tomogram,
        tilt_series=tilt_series,
        info=info_json,
    output:
        tomogram="results/tomograms/{tomo}__bin{bin}.mrc",
    log:
        "results/logs/tomogram/tomogram_external/{tomo}__bin{bin}.log",
    benchmark:
        "results/benchmarks/tomogram/tomogram_external/{tomo}__bin{bin}.tsv"
    wildcard_constraints:
        tomo=EXTERNAL_TOMO_RE,
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        thickness_px=config["tomogram"]["thickness_px"],
        tomogram_bin=lambda wildcards: TOMOGRAMS[wildcards.tomo].tomogram_bin,
    script:
        "../workflow/scripts/tomogram_external.py"


rule tomogram_slices:
    input:
        tomogram="results/tomograms/{tomo}__bin{bin}.mrc",
    output:
        png=report(
            "results/tomograms/{tomo}__bin{bin}_slices.png",
            caption="../report/tomogram_slices.rst",
            category="1. Tomograms",
            subcategory="{tomo}",
            labels={"figure": "central slices, bin {bin}"},
        ),
    log:
        "results/logs/tomogram/tomogram_slices/{tomo}__bin{bin}.log",
    benchmark:
        "results/benchmarks/tomogram/tomogram_slices/{tomo}__bin{bin}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.mem(RSC.SLICES_BASE_MB, RSC.SLICES_SLOPE, input.size_mb, attempt),
        runtime=RSC.MIN_RUNTIME,
    script:
        "../workflow/scripts/tomogram_slices.py"
