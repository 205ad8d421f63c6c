"""Which config keys each Snakemake rule receives as ``params`` (science only), and the runtime
keys that are not config.

Snakemake reruns a job when its ``params`` change (the ``params`` rerun trigger, docs/reruns.md), so
a rule must receive exactly the keys it reads: passing a whole config section would rerun every job
of the stage (and everything downstream) when an unrelated key of the section changes. Threads,
memory and run time are resources, set per rule in ``rules/*.smk`` and changed with a profile or
``--set-threads RULE=N`` / ``--set-resources RULE:mem_mb=N``; they are not config keys.

Key lists of the single-particle and subtomogram refinement stages live beside their code
(``emflow.spa.refine_loop.STAGE_KEYS``, ``emflow.sta.spt_refine.STAGE_KEYS``).
"""

from __future__ import annotations

from emflow.errors import InputError

__all__ = ["RULE_KEYS", "rule_params", "RUNTIME_MOVED", "reject_runtime_keys"]

# {rule: {config section: keys the rule's script reads}}
RULE_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "tempmatch_search": {
        "tempmatch": ("delta_deg", "sym", "template_box_px", "mask_radius_a", "lowpass_res_a", "highpass_res_a",
                      "wedge", "local_normalisation", "ctf_weighting", "dose_per_tilt_e_a2", "tomogram_contrast",
                      "clamp_sigma", "tile_size_px", "template", "template_mask", "template_contrast",
                      "template_mirror", "particle_diameter_a"),
        "microscope": ("voltage_kv", "cs_mm", "ampcont"),
    },
    "tempmatch_extract": {
        "picks": ("threshold_mode", "n_false_alarms", "threshold_sigma", "min_distance_a", "edge_px", "max_picks",
                  "min_volume_vox", "max_volume_vox"),
        "microscope": ("apix",),
    },
    "picks_filter": {
        "picks": ("label", "min_distance_a", "min_score", "max_picks"),
    },
    "initial_model_sgd": {
        "initial_model": ("res_a", "shrink", "batch", "keep", "niter", "lr", "ncls", "classify", "sym", "delta_deg",
                          "npos", "fine_deg", "maxshift_px", "seed"),
    },
    # helper D (session 5): the single-particle initial model (rules/spa_initial_model.smk)
    "spa_initial_model": {
        "spa_initial_model": ("method", "em", "res_a", "res_start_a", "minres_a", "cmp", "ntry", "niter", "batch", "keep", "ntop",
                              "softness", "lr", "lrdecay", "delta_deg", "ninit", "mask_radius_a", "maxshift_px",
                              "n_score", "seed", "classify2d"),
    },
    # demo.tomo minus structure (an input file), n_tomograms (adding a tomogram must not redo the
    # others) and the tilt range (passed as the list of tilts)
    "simulate_tiltseries": {
        "demo.tomo": ("shape_xyz", "n_particles", "defocus_um", "dose_per_tilt", "snr", "tilt_axis_deg",
                      "min_dist_px", "tilt_scheme", "defocus_jitter_um", "tilt_shift_error_px",
                      "tilt_axis_error_deg", "defocus_error_um", "pick_error_px", "pick_label"),
    },
}


def _section(config: dict, dotted: str) -> dict:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def rule_params(config: dict, rule: str, section: str) -> dict:
    """``{key: value}`` of the ``section`` keys that ``rule`` reads (``RULE_KEYS``); a key missing
    from the config (not yet filled by the schema) is an error, not a silent omission."""
    values = _section(config, section)
    return {key: values[key] for key in RULE_KEYS[rule][section]}


# config keys that were runtime settings, and the rules whose threads they set
RUNTIME_MOVED = {
    "tempmatch.threads": ("tempmatch_search",),
    "initial_model.threads": ("initial_model_sgd",),
    "spt_refine.threads": ("spt_refine_align", "spt_refine_make3d", "spt_refine_postprocess"),
}


def reject_runtime_keys(config: dict, source: str = "config/config.yaml") -> None:
    """InputError when the config still sets a thread count that is now a rule resource.

    Called before schema validation so the message says where the setting went, rather than only
    "not a known key".
    """
    for dotted, rules in RUNTIME_MOVED.items():
        section, key = dotted.rsplit(".", 1)
        if key in (config.get(section) or {}):
            sets = " ".join(f"{r}={config[section][key]}" for r in rules)
            raise InputError(
                f"'{dotted}' is no longer a config key: threads are a runtime setting of the rules {', '.join(rules)}",
                source=dotted,
                fix=f"delete it from your config and pass `--set-threads {sets}` (or put `set-threads:` in your "
                    "profile, see profiles/local/config.yaml)")
