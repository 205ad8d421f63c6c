# Input functions of the stage rules (kept apart from the rules so each .smk is rules only;
# `snakemake --lint` asks for that). They read the stage globals (SPA, SPT_PATH, REPORT_DEMO_SPA, ...) at
# call time, after every rules/*.smk has been included.

# ---------------------------------------------------------------- spa.smk


def spa_demo_data():
    """True when the SPA workflow refines the demo's simulated particles (input.source demo, no
    input.spa_particles): only then are demo files (truth map, demo STAR) inputs of SPA jobs."""
    return DEMO and not config["input"]["spa_particles"]


def spa_check_inputs():
    """Stop before any job when the SPA workflow has no particles or no declared contrast."""
    from emflow.errors import InputError

    if spa_demo_data():
        return
    if not config["input"]["spa_particles"]:
        raise InputError(
            "is null but workflows.single_particle is true and input.source is not demo",
            source="config key 'input.spa_particles'",
            fix="give the particle stack (MRC/MRCS or EMAN2 HDF) and its STAR file (input.spa_star), "
            "or set workflows.single_particle: false",
        )
    if not config["input"]["spa_contrast"]:
        raise InputError(
            "is not set: the contrast of the particles must be declared",
            source="config key 'input.spa_contrast'",
            fix="dark: protein darker than the background, as recorded (raw micrograph crops, RELION "
            "extract without 'Invert contrast'); bright: protein white (RELION extract with "
            "'Invert contrast? Yes', its default; EMAN2 particles)",
        )
    if SPA["startingmodel"] == "truth_lowpass30":
        raise InputError(
            "truth_lowpass30 needs the demo's true map, which user data do not have",
            source="config key 'spa.startingmodel'",
            fix="use blob or the path of an MRC map",
        )


def spa_check_startiter():
    """spa.startiter > 1 resumes the per-iteration loop (EMAN --startiter): the model of iteration
    startiter−1 must exist from an earlier run, and no earlier iteration is planned again (spa_make3d
    only makes iterations startiter…iter)."""
    import os
    from types import SimpleNamespace

    from emflow.errors import InputError

    start, last = SPA["startiter"], SPA["iter"]
    if start == 1:
        return
    if start > last:
        raise InputError(
            f"is {start} but spa.iter is {last}: nothing would run",
            source="config key 'spa.startiter'",
            fix=f"set spa.startiter to at most {last}, or raise spa.iter",
        )
    if SPA["goldstandard"]:
        raise InputError(
            "> 1 with spa.goldstandard: the gold-standard refinement is one job (spa_gold) that starts from threed_00",
            source="config key 'spa.startiter'",
            fix="set spa.startiter: 1 (Snakemake reruns spa_gold whole), or spa.goldstandard: false",
        )
    prev = spa_previous_model(SimpleNamespace(it=f"{start:02d}"))
    if not os.path.exists(prev):
        raise InputError(
            f"is {start} but {prev} (the model of iteration {start - 1}) does not exist",
            source="config key 'spa.startiter'",
            fix=f"run iterations 1…{start - 1} first (spa.startiter: 1), or check spa.path",
        )


def spa_contrast():
    """Declared particle contrast: the demo simulator writes protein-white (bright) particles."""
    return "bright" if spa_demo_data() else config["input"]["spa_contrast"]


def spa_apix_expected():
    """The pixel size the particles must have (a check of the file's own): demo setting or spa.apix."""
    return config["demo"]["spa"]["apix"] if spa_demo_data() else SPA["apix"]


def spa_apix_override():
    """input.apix_override of the particle stack (the user's explicit value for an unset header), or None."""
    from emflow.pixel_size import apix_override

    return None if spa_demo_data() else apix_override(config, spa_particles())


def spa_n_particles():
    """Number of particles (known before the run: demo setting or the user stack's header)."""
    if spa_demo_data():
        return config["demo"]["spa"]["n_particles"]
    from emflow.io import read_mrc_header, hdf_count

    path = spa_particles()
    return hdf_count(path) if str(path).endswith(".hdf") else read_mrc_header(path)["shape"][0]


def spa_params(stage):
    """The `spa:` keys one stage reads (emflow.spa.refine_loop.STAGE_KEYS)."""
    return {key: SPA[key] for key in STAGE_KEYS[stage]}


def spa_gold_params():
    """Every key the in-process iterations read (all stages), the gold-standard start resolution and the local
    refinement's section."""
    keys = {k for stage in STAGE_KEYS.values() for k in stage} | {"orientgen", "gold_startres", "local"}
    return {key: SPA[key] for key in sorted(keys)}


def spa_project3d_params(wildcards):
    """project3d's keys plus the orientation generator of this iteration (a list gives a schedule)."""
    from emflow.spa.refine_loop import orientgen_for_iteration

    return {**spa_params("project3d"), "orientgen": orientgen_for_iteration(SPA["orientgen"], int(wildcards.it))}


def spa_previous_model(wildcards):
    """Model of iteration it−1 (threed_filt, i.e. after mass normalisation / automask)."""
    prev = int(wildcards.it) - 1
    return f"{SPA_DIR}/threed_00.mrc" if prev == 0 else f"{SPA_DIR}/threed_filt_{prev:02d}.mrc"


def spa_simmx_chunks(wildcards):
    return [f"{SPA_DIR}/simmx_{wildcards.it}/chunk_{c}.npz" for c in SPA_CHUNKS]


def spa_truth_map():
    """The demo's true map (FSC vs truth, truth_lowpass30 starting model); none for user data."""
    return [truth_map_spa()] if spa_demo_data() else []


def spa_truth_symmetry():
    """Symmetry of the demo's SPA structure (the truth evaluation's symmetry check); none for user data."""
    from emflow.demo.data import structure_symmetry

    return structure_symmetry(config["demo"]["spa"]["structure"]) if spa_truth_map() else None


def spa_start_inputs(wildcards):
    sm = SPA["startingmodel"]
    if sm in ("truth_lowpass30", "blob"):
        return spa_truth_map() if sm == "truth_lowpass30" else []
    return [sm]


def spa_fsc_previous(wildcards):
    prev = int(wildcards.it) - 1
    return f"{SPA_DIR}/threed_00.mrc" if prev == 0 else f"{SPA_DIR}/threed_{prev:02d}.mrc"


def spa_usefilt(wildcards):
    return [SPA["usefilt"]] if SPA["usefilt"] else []


# ---------------------------------------------------------------- report.smk


class _Tomo:
    """Stand-in wildcards object for input functions that expect `wildcards.tomo`."""

    def __init__(self, tomo):
        self.tomo = tomo


def report_demo_inputs(wildcards):
    """Picks and truth of every demo tomogram, the SPA FSC-vs-truth and truth evaluation of the last
    iteration and the subtilt refinement's truth evaluation (each only where its workflow runs on
    demo data: REPORT_DEMO_SPT / REPORT_DEMO_SPA of rules/report.smk)."""
    tomos = tomogram_names() if REPORT_DEMO_SPT else []
    spa = [SPA_ITERS[-1]] if REPORT_DEMO_SPA else []
    return {
        "truth": [truth_file_tomo(_Tomo(t)) for t in tomos],
        "picks": [f"results/picks/{t}__picks.star" for t in tomos],
        "spa_fsc_truth": [f"{SPA_DIR}/fsc_truth_{it}.txt" for it in spa],
        "spa_eval": [f"{SPA_DIR}/truth_eval_{it}.json" for it in spa],
        "spt_eval": [f"{SPT_PATH}/truth_eval.json"] if REPORT_DEMO_SPT else [],
    }


def job_benchmarks(wildcards):
    """The benchmark table of every job the final targets need (rule report_runtimes).

    Walks the DAG back from FINAL_TARGETS with Snakemake's own matching: the rule producing each
    file (output patterns and wildcard constraints), its wildcards, then that job's inputs. A job
    behind an unfinished checkpoint is not known yet: this function then waits for the checkpoint,
    like any input function that reads one, and is evaluated again once it has run.
    """
    from snakemake.exceptions import IncompleteCheckpointException
    from snakemake.io import is_flagged

    producers = [r for r in workflow.rules if r.output and r.name != "report_runtimes"]
    found, seen, todo = set(), set(), [str(f) for f in FINAL_TARGETS]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        producer = next((r for r in producers if r.is_producer(path)), None)
        if producer is None:  # a source file: user data, a bundled structure
            continue
        wc = producer.get_wildcards(path)
        if producer.benchmark:
            found.add(str(producer.expand_benchmark(wc)))
        inputs, _, _, incomplete = producer.expand_input(wc)
        if incomplete:
            target = next(f for f in inputs if is_flagged(f, "checkpoint_target"))
            raise IncompleteCheckpointException(producer, target)
        todo.extend(str(f) for f in inputs)
    return sorted(found)


# ---------------------------------------------------------------- spt_refine.smk


def spt_ptcls_label():
    """Set to refine: spt_refine.ptcls, else the template-matching set when picks are filtered, else the manual set."""
    if SPT["ptcls"]:
        return SPT["ptcls"]
    if any(r.name == "picks_filter" for r in workflow.rules):
        return config["picks"]["label"]
    return config["extract"]["label"]


def spt_stage_params(stage):
    """The `spt_refine:` keys of one job kind (emflow.sta.spt_refine.STAGE_KEYS)."""
    from emflow.sta.spt_refine import stage_params

    return stage_params(SPT, stage)


def spt_align_params(wildcards):
    """Keys of alignment iteration `it` only: its letter, p mode and that mode's options."""
    from emflow.sta.spt_refine import iteration_params

    return iteration_params(SPT, int(wildcards.it), "align")


def spt_postprocess_params(wildcards):
    """Postprocess keys plus the letter of iteration `it`."""
    from emflow.sta.spt_refine import iteration_params

    return iteration_params(SPT, int(wildcards.it), "postprocess")


def spt_reference_overrides(wildcards):
    """input.apix_override entries of the reference (and its halves): {path: Å/px}."""
    from emflow.pixel_size import apix_override

    paths = spt_reference_inputs(wildcards).values()
    return {p: apix_override(config, p) for p in paths if apix_override(config, p) is not None}


def spt_reference():
    """spt_refine.ref (the user's map, any pixel size and box), else the SGD initial model (rules/initial_model.smk)."""
    return SPT["ref"] or "results/initial_model/sptsgd_01/output_cls0.hdf"


def spt_reference_inputs(wildcards):
    """The reference, plus with goldcontinue its even/odd half maps (EMAN <ref>_even/_odd.hdf)."""
    from emflow.sta.spt_files import goldcontinue_half_paths

    inputs = {"ref": spt_reference()}
    if SPT["goldcontinue"]:  # spt_refine.ref is set (checked in rules/spt_refine.smk)
        inputs["ref_even"], inputs["ref_odd"] = goldcontinue_half_paths(SPT["ref"])
    return inputs


def spt_chunk_ids(wildcards):
    """Chunk numbers (000, 001, ...) of the run, known once particle_info_3d.lst exists."""
    info = checkpoints.spt_refine_setup.get().output.info3d
    from emflow.io import read_lst

    n = len(read_lst(info))
    return [f"{c:03d}" for c in range(len(chunk_ranges(n, SPT["chunk_size"])))]


def spt_prev(wildcards):
    """Inputs of iteration `it` from iteration it-1: alignments, half maps, resolution."""
    p = f"{SPT_PATH}/%s_{int(wildcards.it) - 1:02d}%s"
    return {
        "ali3d": p % ("aliptcls3d", ".lst"),
        "ali2d": p % ("aliptcls2d", ".lst"),
        "even": p % ("threed", "_even.hdf"),
        "odd": p % ("threed", "_odd.hdf"),
        "res": p % ("resolution", ".json"),
    }


def spt_prev_res(wildcards):
    """resolution_XX.json of the previous iteration."""
    return f"{SPT_PATH}/resolution_{int(wildcards.it) - 1:02d}.json"


def spt_align_chunks(wildcards):
    return expand(f"{SPT_PATH}/chunks/align_{wildcards.it}_{{c}}.npz", c=spt_chunk_ids(wildcards))


def spt_truth_files(wildcards):
    """Demo truth json of every tomogram."""
    return [truth_file_tomo(SimpleNamespace(tomo=t)) for t in tomogram_names()]


def spt_truth_evals(wildcards):
    """truth_eval_XX.json of every iteration."""
    return [f"{SPT_PATH}/truth_eval_{i:02d}.json" for i in range(1, len(SPT_ITERS) + 1)]


def spt_rec_chunks(wildcards):
    return expand(f"{SPT_PATH}/chunks/rec_{wildcards.it}_{{c}}.npz", c=spt_chunk_ids(wildcards))


# ---------------------------------------------------------------- extract.smk


def extract_chunk_files(wildcards):
    """Chunk files of one tomogram × label (as many chunks as the extract_plan checkpoint made)."""
    import json

    plan = checkpoints.extract_plan.get(tomo=wildcards.tomo, label=wildcards.label).output.plan
    with open(plan) as f:
        n = len(json.load(f)["chunks"])
    stem = f"results/extract/chunks/{wildcards.tomo}__{wildcards.label}"
    ids = [f"{c:03d}" for c in range(n)]
    return {
        "subtilts": [f"{stem}/particles_{c}.hdf" for c in ids],
        "chunks3d": [f"{stem}/particles3d_{c}.hdf" for c in ids],
        "chunk_summaries": [f"{stem}/summary_{c}.json" for c in ids],
    }
