# Template matching (reference-based picking, issue #3 items 5-6): FLCF search with
# missing-wedge/CTF/exposure-weighted templates on the binned tomogram, peak extraction
# with a false-alarm or sigma threshold, then pick filtering and a review picture.
#
# results/tempmatch/{tomo}__scores.mrc     best FLCF score per voxel
# results/tempmatch/{tomo}__angles.mrc     index of the best orientation per voxel
# results/tempmatch/{tomo}__angles.json    the orientation list (EMAN az, alt, phi) + null statistics
# results/tempmatch/{tomo}__candidates.star  peaks above threshold (RELION STAR)
# results/picks/{tomo}__picks.star         filtered picks;  results/picks/info/{tomo}_info.json
# results/picks/{tomo}__review.png         slices with picks + score histogram
#
# Each rule gets as params only the config keys its script reads (emflow/pipeline/params.py); threads
# are rule defaults, changed with --set-threads or a profile, not config keys.


rule tempmatch_search:
    input:
        tomogram=binned_tomogram,
        template=tempmatch_template(),
        template_mask=tempmatch_template_mask(),
        info=info_json,
        tlt=tilt_angles,
    output:
        scores="results/tempmatch/{tomo}__scores.mrc",
        angle_map="results/tempmatch/{tomo}__angles.mrc",
        angles="results/tempmatch/{tomo}__angles.json",
    log:
        "results/logs/tempmatch/tempmatch_search/{tomo}.log",
    benchmark:
        "results/benchmarks/tempmatch/tempmatch_search/{tomo}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 4
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.tempmatch_mem_mb(
            RSC.file_mb(input.tomogram),
            config["tempmatch"]["tile_size_px"],
            config["tomogram"]["thickness_px"],
            attempt,
        ),
        runtime=lambda wildcards, input, threads, attempt: RSC.tempmatch_runtime(
            RSC.file_mb(input.tomogram), RSC.n_rotations(config["tempmatch"]["delta_deg"]), threads, attempt
        ),
    params:
        tm=rule_params(config, "tempmatch_search", "tempmatch"),
        microscope=rule_params(config, "tempmatch_search", "microscope"),
        apix_override=tempmatch_template_overrides(),
    script:
        "../workflow/scripts/tempmatch_search.py"


rule tempmatch_extract:
    input:
        scores="results/tempmatch/{tomo}__scores.mrc",
        angle_map="results/tempmatch/{tomo}__angles.mrc",
        angles="results/tempmatch/{tomo}__angles.json",
        info=info_json,
    output:
        candidates="results/tempmatch/{tomo}__candidates.star",
        summary="results/tempmatch/{tomo}__candidates.json",
    log:
        "results/logs/tempmatch/tempmatch_extract/{tomo}.log",
    benchmark:
        "results/benchmarks/tempmatch/tempmatch_extract/{tomo}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        # the score and angle maps in memory
        mem_mb=lambda wildcards, input, attempt: RSC.mem(
            RSC.TM_EXTRACT_BASE_MB, RSC.TM_EXTRACT_SLOPE, input.size_mb, attempt
        ),
        runtime=RSC.MIN_RUNTIME,
    params:
        picks=rule_params(config, "tempmatch_extract", "picks"),
        microscope=rule_params(config, "tempmatch_extract", "microscope"),
    script:
        "../workflow/scripts/tempmatch_extract.py"


rule picks_filter:
    input:
        candidates="results/tempmatch/{tomo}__candidates.star",
        summary="results/tempmatch/{tomo}__candidates.json",
        scores="results/tempmatch/{tomo}__scores.mrc",
        tomogram=binned_tomogram,
        info=info_json,
        mask=picks_mask_input,
    output:
        star="results/picks/{tomo}__picks.star",
        info="results/picks/info/{tomo}_info.json",
        review=report(
            "results/picks/{tomo}__review.png",
            caption="../report/picks_review.rst",
            category="2. Template matching",
            subcategory="{tomo}",
            labels={"figure": "picks and scores"},
        ),
    log:
        "results/logs/picks/picks_filter/{tomo}.log",
    benchmark:
        "results/benchmarks/picks/picks_filter/{tomo}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.mem(
            RSC.TM_EXTRACT_BASE_MB, RSC.TM_EXTRACT_SLOPE, input.size_mb, attempt
        ),
        runtime=RSC.MIN_RUNTIME,
    params:
        picks=rule_params(config, "picks_filter", "picks"),
    script:
        "../workflow/scripts/tempmatch_filter.py"


if config["workflows"]["subtomogram"]:
    FINAL_TARGETS.extend(
        expand("results/picks/{tomo}__{kind}", tomo=tomogram_names(), kind=["picks.star", "review.png"])
    )
