# Subtilt refinement (issue #4; spec §3.6-3.10, e2spt_refine_new): gold-standard even/odd
# refinement with p (particle), t/r (subtilt shift/rotation) and d (defocus) iterations.
#
# {path}/particle_info_3d.lst, particle_info_2d.lst   run metadata (checkpoint: sets the chunk count)
# {path}/threed_00_even/odd.hdf                      references (tophat at startres; goldcontinue:
#                                                    the half maps <ref>_even/_odd of the run continued)
# per iteration XX = 01..N (letters of spt_refine.iters):
#   chunks/align_XX_CCC.npz  -> aliptcls3d_XX.lst, aliptcls2d_XX.lst     (scatter / gather)
#   chunks/rec_XX_CCC.npz    -> threed_XX(.hdf/.mrc), threed_XX_even/odd.hdf, fsc_*_XX.txt,
#                               mask_XX.hdf, resolution_XX.json, fsc_XX.png
# {path}/particles_final.star  final particles (RELION 3.1+)
# demo only: truth_eval_XX.json + fsc_truth_XX.png (gold standard and vs truth) -> truth_eval.json

import os
from types import SimpleNamespace

from emflow.errors import InputError
from emflow.sta.spt_refine import CTF_MICROSCOPE_KEYS, chunk_ranges, parse_iters, parse_keep

# Each rule gets as params only the `spt_refine:` keys it reads (STAGE_KEYS in emflow/sta/spt_refine.py);
# an alignment job gets its own iteration's letter and options (spt_align_params), so appending an
# iteration to `iters` changes no finished job. Threads are not config: rule defaults below, changed
# with --set-threads or a profile (profiles/*/config.yaml).

SPT = config["spt_refine"]
SPT_PATH = SPT["path"]
SPT_RUN = os.path.basename(os.path.normpath(SPT_PATH))  # names this run's logs and benchmarks
SPT_ITERS = parse_iters(SPT["iters"])
parse_keep(SPT["keep"])  # fails before any job on a bad value
if SPT["goldcontinue"] and not SPT["ref"]:
    raise InputError(
        "goldcontinue continues a finished run, but spt_refine.ref is not set",
        source="spt_refine.goldcontinue",
        fix="set spt_refine.ref to that run's map (e.g. results/spt/spt_01/threed_05.hdf; its "
        "threed_05_even/_odd.hdf are used), or set goldcontinue: false",
    )
SPT_MICROSCOPE = {key: config["microscope"][key] for key in CTF_MICROSCOPE_KEYS}
SPT_LAST = f"{len(SPT_ITERS):02d}"


checkpoint spt_refine_setup:
    input:
        unpack(spt_reference_inputs),
        lst=f"results/sets/{spt_ptcls_label()}.lst",
    output:
        info3d=f"{SPT_PATH}/particle_info_3d.lst",
        info2d=f"{SPT_PATH}/particle_info_2d.lst",
        ali3d=f"{SPT_PATH}/aliptcls3d_00.lst",
        ali2d=f"{SPT_PATH}/aliptcls2d_00.lst",
        even=f"{SPT_PATH}/threed_00_even.hdf",
        odd=f"{SPT_PATH}/threed_00_odd.hdf",
        threed=f"{SPT_PATH}/threed_00.hdf",
        res=f"{SPT_PATH}/resolution_00.json",
        params=f"{SPT_PATH}/0_spt_params.json",
    log:
        f"results/logs/spt_refine/spt_refine_setup/{SPT_RUN}_setup.log",
    benchmark:
        f"results/benchmarks/spt_refine/spt_refine_setup/{SPT_RUN}_setup.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.gather_mem_mb(input.size_mb, attempt),
        runtime=RSC.MIN_RUNTIME,
    params:
        spt=spt_stage_params("setup"),
        shrink=config["extract"]["shrink"],
        user_ref=bool(SPT["ref"]),
        apix_override=spt_reference_overrides,
    script:
        "../workflow/scripts/spt_refine_setup.py"


rule spt_refine_align:
    input:
        unpack(spt_prev),
        info3d=f"{SPT_PATH}/particle_info_3d.lst",
        info2d=f"{SPT_PATH}/particle_info_2d.lst",
    output:
        chunk=f"{SPT_PATH}/chunks/align_{{it}}_{{chunk}}.npz",
    log:
        f"results/logs/spt_refine/spt_refine_align/{SPT_RUN}_{{it}}_{{chunk}}.log",
    benchmark:
        f"results/benchmarks/spt_refine/spt_refine_align/{SPT_RUN}_{{it}}_{{chunk}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        # t/r transform their particles' smoothN neighbours too, d whole tilts (emflow/pipeline/resources.py)
        mem_mb=lambda wildcards, input, attempt: RSC.spt_chunk_mem_mb(
            SPT["chunk_size"],
            RSC.set_mb_per_particle(input.info3d),
            RSC.set_size(input.info3d) if SPT_ITERS[int(wildcards.it) - 1] in "trd" else 0,
            attempt,
            neighbours=SPT["smoothN"] if SPT_ITERS[int(wildcards.it) - 1] in "tr" else None,
        ),
        runtime=lambda wildcards, input, attempt: RSC.spt_align_runtime(
            SPT["chunk_size"], RSC.set_mb_per_particle(input.info3d), attempt
        ),
    params:
        spt=spt_align_params,
        microscope=SPT_MICROSCOPE,
    script:
        "../workflow/scripts/spt_refine_align.py"


rule spt_refine_gather:
    input:
        unpack(spt_prev),
        chunks=spt_align_chunks,
        info3d=f"{SPT_PATH}/particle_info_3d.lst",
        info2d=f"{SPT_PATH}/particle_info_2d.lst",
    output:
        ali3d=f"{SPT_PATH}/aliptcls3d_{{it}}.lst",
        ali2d=f"{SPT_PATH}/aliptcls2d_{{it}}.lst",
    log:
        f"results/logs/spt_refine/spt_refine_gather/{SPT_RUN}_{{it}}.log",
    benchmark:
        f"results/benchmarks/spt_refine/spt_refine_gather/{SPT_RUN}_{{it}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.gather_mem_mb(input.size_mb, attempt),
        runtime=RSC.MIN_RUNTIME,
    script:
        "../workflow/scripts/spt_refine_gather.py"


rule spt_refine_make3d:
    input:
        info3d=f"{SPT_PATH}/particle_info_3d.lst",
        info2d=f"{SPT_PATH}/particle_info_2d.lst",
        ali3d=f"{SPT_PATH}/aliptcls3d_{{it}}.lst",
        ali2d=f"{SPT_PATH}/aliptcls2d_{{it}}.lst",
        even=f"{SPT_PATH}/threed_00_even.hdf",
    output:
        rec=f"{SPT_PATH}/chunks/rec_{{it}}_{{chunk}}.npz",
    log:
        f"results/logs/spt_refine/spt_refine_make3d/{SPT_RUN}_{{it}}_{{chunk}}.log",
    benchmark:
        f"results/benchmarks/spt_refine/spt_refine_make3d/{SPT_RUN}_{{it}}_{{chunk}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spt_chunk_mem_mb(
            SPT["chunk_size"], RSC.set_mb_per_particle(input.info3d), 0, attempt
        ),
        runtime=lambda wildcards, input, attempt: RSC.spt_make3d_runtime(
            SPT["chunk_size"], RSC.set_mb_per_particle(input.info3d), attempt
        ),
    params:
        spt=spt_stage_params("make3d"),
        microscope=SPT_MICROSCOPE,
    script:
        "../workflow/scripts/spt_refine_make3d.py"


rule spt_refine_postprocess:
    input:
        recs=spt_rec_chunks,
        res_in=spt_prev_res,
    output:
        threed=f"{SPT_PATH}/threed_{{it}}.hdf",
        threed_mrc=f"{SPT_PATH}/threed_{{it}}.mrc",
        even=f"{SPT_PATH}/threed_{{it}}_even.hdf",
        odd=f"{SPT_PATH}/threed_{{it}}_odd.hdf",
        fsc_unmasked=f"{SPT_PATH}/fsc_unmasked_{{it}}.txt",
        fsc_masked=f"{SPT_PATH}/fsc_masked_{{it}}.txt",
        fsc_tight=f"{SPT_PATH}/fsc_maskedtight_{{it}}.txt",
        mask=f"{SPT_PATH}/mask_{{it}}.hdf",
        res=f"{SPT_PATH}/resolution_{{it}}.json",
        png=report(
            f"{SPT_PATH}/fsc_{{it}}.png",
            caption="../report/spt_fsc_iteration.rst",
            category="4. Subtomogram averaging",
            subcategory="gold-standard FSC per iteration",
            labels={"iteration": "{it}"},
        ),
    log:
        f"results/logs/spt_refine/spt_refine_postprocess/{SPT_RUN}_{{it}}.log",
    benchmark:
        f"results/benchmarks/spt_refine/spt_refine_postprocess/{SPT_RUN}_{{it}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spt_postprocess_mem_mb(
            input.size_mb / max(1, len(input.recs)), attempt
        ),
        runtime=RSC.MIN_RUNTIME,
    params:
        spt=spt_postprocess_params,
    script:
        "../workflow/scripts/spt_refine_postprocess.py"


rule spt_refine_export:
    input:
        info3d=f"{SPT_PATH}/particle_info_3d.lst",
        info2d=f"{SPT_PATH}/particle_info_2d.lst",
        ali3d=f"{SPT_PATH}/aliptcls3d_{SPT_LAST}.lst",
        ali2d=f"{SPT_PATH}/aliptcls2d_{SPT_LAST}.lst",
        threed=f"{SPT_PATH}/threed_{SPT_LAST}.hdf",
    output:
        star=f"{SPT_PATH}/particles_final.star",
    log:
        f"results/logs/spt_refine/spt_refine_export/{SPT_RUN}_final.log",
    benchmark:
        f"results/benchmarks/spt_refine/spt_refine_export/{SPT_RUN}_final.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.gather_mem_mb(input.size_mb, attempt),
        runtime=RSC.MIN_RUNTIME,
    params:
        microscope=config["microscope"],
        shrink=config["extract"]["shrink"],
    script:
        "../workflow/scripts/spt_refine_export.py"


rule spt_refine_truth_eval:
    input:
        info3d=f"{SPT_PATH}/particle_info_3d.lst",
        info2d=f"{SPT_PATH}/particle_info_2d.lst",
        ali3d=f"{SPT_PATH}/aliptcls3d_{{it}}.lst",
        ali2d=f"{SPT_PATH}/aliptcls2d_{{it}}.lst",
        threed=f"{SPT_PATH}/threed_{{it}}.hdf",
        fsc_masked=f"{SPT_PATH}/fsc_masked_{{it}}.txt",
        res=f"{SPT_PATH}/resolution_{{it}}.json",
        truth=spt_truth_files,
        truth_map=truth_map_tomo(),
    output:
        json=f"{SPT_PATH}/truth_eval_{{it}}.json",
        png=f"{SPT_PATH}/fsc_truth_{{it}}.png",
    log:
        f"results/logs/spt_refine/spt_refine_truth_eval/{SPT_RUN}_{{it}}.log",
    benchmark:
        f"results/benchmarks/spt_refine/spt_refine_truth_eval/{SPT_RUN}_{{it}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        shrink=config["extract"]["shrink"],
    script:
        "../workflow/scripts/spt_refine_truth_eval.py"


rule spt_refine_truth_summary:
    input:
        evals=spt_truth_evals,
    output:
        json=f"{SPT_PATH}/truth_eval.json",
    log:
        f"results/logs/spt_refine/spt_refine_truth_summary/{SPT_RUN}_summary.log",
    benchmark:
        f"results/benchmarks/spt_refine/spt_refine_truth_summary/{SPT_RUN}_summary.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow/scripts/spt_refine_truth_summary.py"


rule spt_refine_export_tomograms:
    input:
        info=[info_json(SimpleNamespace(tomo=t)) for t in tomogram_names()],
        tilt_series=[TOMOGRAMS[t].tilt_series for t in tomogram_names()],
    output:
        star=f"{SPT_PATH}/tomograms.star",
        tilt_series=directory(f"{SPT_PATH}/tilt_series"),
    log:
        f"results/logs/spt_refine/spt_refine_export_tomograms/{SPT_RUN}.log",
    benchmark:
        f"results/benchmarks/spt_refine/spt_refine_export_tomograms/{SPT_RUN}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        names=tomogram_names(),
        thickness_unbin_px=config["tomogram"]["thickness_px"] * config["tomogram"]["bin"],
    script:
        "../workflow/scripts/spt_refine_export_tomograms.py"


if config["workflows"]["subtomogram"]:
    FINAL_TARGETS.append(f"{SPT_PATH}/particles_final.star")
    FINAL_TARGETS.append(f"{SPT_PATH}/tomograms.star")
    if DEMO:
        FINAL_TARGETS.append(f"{SPT_PATH}/truth_eval.json")
        FINAL_TARGETS.extend(f"{SPT_PATH}/fsc_truth_{i:02d}.png" for i in range(1, len(SPT_ITERS) + 1))
