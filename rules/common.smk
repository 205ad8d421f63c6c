# Shared by every stage: config validation, the tomogram table, wildcard constraints and
# the input functions that decide where each stage reads its inputs. The logic lives in
# emflow/pipeline/config.py (unit-tested); this file only wires it to Snakemake.

from emflow.pipeline.config import tomogram_table, validate_config
from emflow.pipeline.params import reject_runtime_keys, rule_params
from emflow.pipeline import resources as RSC  # mem_mb/runtime of every rule from its input size

reject_runtime_keys(config)  # thread counts are rule resources (profiles, --set-threads), not config
validate_config(config, workflow.source_path("../config/schema.yaml"))

TOMOGRAMS = tomogram_table(config)
BIN = config["tomogram"]["bin"]
DEMO = config["input"]["source"] == "demo"

# Each stage appends the files it wants built by `rule all` (see Snakefile).
FINAL_TARGETS = []


wildcard_constraints:
    tomo="[A-Za-z0-9][A-Za-z0-9_.-]*?",
    bin="[0-9]+",
    it="[0-9]{2}",
    chunk="[0-9]{3}",


def tomogram_names():
    """Names of all tomograms, in config order."""
    return list(TOMOGRAMS)


def tilt_series(wildcards):
    """Tilt series stack (MRC) of tomogram `wildcards.tomo`."""
    return TOMOGRAMS[wildcards.tomo].tilt_series


def tilt_angles(wildcards):
    """IMOD .tlt of the tomogram (user data: normalised by the import stage)."""
    if DEMO:
        return TOMOGRAMS[wildcards.tomo].tlt
    return f"results/import/{wildcards.tomo}.tlt"


def info_json(wildcards):
    """EMAN2 info json of the tomogram (tlt_params, CTF, apix_unbin, boxes_3d)."""
    if DEMO:
        return TOMOGRAMS[wildcards.tomo].info_json
    return f"results/import/info/{wildcards.tomo}_info.json"


def tomogram_entry(wildcards):
    """The tomogram's row of the input table, as a dict (import stage)."""
    return TOMOGRAMS[wildcards.tomo].as_dict()


def user_import_files(wildcards):
    """The user's .tlt/.xf/info json/picks files of a tomogram (import stage inputs)."""
    return TOMOGRAMS[wildcards.tomo].user_files()


def binned_tomogram(wildcards):
    """The binned tomogram used for picking and template matching."""
    return f"results/tomograms/{wildcards.tomo}__bin{BIN}.mrc"


def truth_map_tomo():
    """The true map of the demo tomograms' particle at the tilt-series pixel size."""
    return "results/demo/truth/reference_tomo.mrc"


def truth_map_spa():
    """The true map of the demo single-particle set."""
    return "results/demo/truth/reference_spa.mrc"


def truth_file_tomo(wildcards):
    """Ground truth (positions, orientations) of a demo tomogram."""
    return f"results/demo/truth/{wildcards.tomo}_truth.json"


def truth_file_spa():
    """Ground truth (orientations, shifts, defocus) of the demo particle set."""
    return "results/demo/truth/spa_truth.star"


def spa_particles():
    """Particle stack of the single-particle workflow."""
    return config["input"]["spa_particles"] or "results/demo/spa/particles.mrcs"


def spa_particles_star():
    """STAR file with the particles' CTF parameters (None when the user gave none)."""
    if config["input"]["spa_particles"]:
        return config["input"]["spa_star"]
    return "results/demo/spa/particles.star"


def tempmatch_template():
    """Template for reference-based picking: the user's map (tempmatch.template, any pixel size and
    box: resampled by tempmatch_search), else the SGD initial model (class 0) of the manual picks
    (rules/initial_model.smk), so picking needs no external reference."""
    return config["tempmatch"]["template"] or "results/initial_model/sptsgd_01/output_cls0.mrc"


def tempmatch_template_overrides():
    """input.apix_override values of the user's template and mask (None where none is given)."""
    from emflow.pixel_size import apix_override

    tm = config["tempmatch"]
    return {key: apix_override(config, tm[key]) if tm[key] else None for key in ("template", "template_mask")}


def tempmatch_template_mask():
    """The user's template mask (tempmatch.template_mask), none by default."""
    return [config["tempmatch"]["template_mask"]] if config["tempmatch"]["template_mask"] else []


def picks_mask_input(wildcards):
    """Optional user mask (MRC, binned tomogram grid) restricting picks; none by default."""
    return [config["picks"]["mask"]] if config["picks"]["mask"] else []


def extract_picks_file(wildcards):
    """File holding the picks of `wildcards.label`: the picks stage's info json for template-matching
    picks, else the tomogram's own info json (manual/imported picks)."""
    if wildcards.label == config["picks"]["label"]:
        return f"results/picks/info/{wildcards.tomo}_info.json"
    return info_json(wildcards)


def set_particle_files(wildcards):
    """Per-tomogram 3D particle files and summaries of one label (in tomogram order)."""
    return {
        "particles3d": expand(
            "results/extract/particles3d/{tomo}__{label}.hdf", tomo=tomogram_names(), label=wildcards.label
        ),
        "summaries": expand(
            "results/extract/summary/{tomo}__{label}.json", tomo=tomogram_names(), label=wildcards.label
        ),
    }
