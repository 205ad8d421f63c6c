"""The demo simulation jobs (rules simulate_tiltseries, simulate_spa): read the true map, simulate with
:mod:`emflow.demo.simulate`, write the data and its truth. Demo only; the workflow scripts only map the
rule's named inputs, outputs and params onto these functions."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping

import numpy as np

from emflow.demo.metadata import spa_image_names, spa_particle_columns, tilt_series_info, tomo_truth_star
from emflow.demo.simulate import noisy_picks, simulate_spa, simulate_tilt_series
from emflow.io import atomic_write, read_mrc, write_info_json, write_mrc, write_particles_star, write_star, write_tlt
from emflow.pipeline.log import progress_logger
from emflow.sta.importer import IMOD_TILT_SIGN

__all__ = ["simulate_tomogram_job", "simulate_spa_job"]

log = logging.getLogger(__name__)


def simulate_tomogram_job(reference: str, out: Mapping[str, str], tomo_name: str, seed: int, tilts_deg: list,
                          apix: float, voltage_kv: float, cs_mm: float, ampcont: float, tomo: dict, threads: int) -> None:
    """True map → one simulated tilt series (MRC + .tlt + EMAN2 info json) and its truth: tomogram
    ``tomo_name`` with the ``demo.tomo`` settings ``tomo``. ``out`` maps tilt_series, tlt, info, truth,
    truth_star to paths."""
    ref, ref_apix = read_mrc(reference, expect_apix=apix)
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    stack, truth = simulate_tilt_series(
        ref, ref_apix, apix=apix, shape_xyz=tomo["shape_xyz"], tilts_deg=tilts_deg,
        n_particles=tomo["n_particles"], rng=rng, defocus_um=tomo["defocus_um"], voltage_kv=voltage_kv,
        cs_mm=cs_mm, ampcont=ampcont, dose_per_tilt=tomo["dose_per_tilt"], snr=tomo["snr"],
        tilt_axis_deg=tomo["tilt_axis_deg"], min_dist_px=tomo["min_dist_px"], tilt_scheme=tomo["tilt_scheme"],
        defocus_jitter_um=tomo["defocus_jitter_um"], tilt_shift_error_px=tomo["tilt_shift_error_px"],
        tilt_axis_error_deg=tomo["tilt_axis_error_deg"], defocus_error_um=tomo["defocus_error_um"],
        progress=progress_logger(log, "tilts", 1.0),
        workers=threads,
    )
    log.info("simulated %d tilts of %dx%d px with %d particles (radius %.1f px) in %.1f s; noise sigma %.4g",
             *stack.shape, len(truth.positions_px), truth.radius_px, time.monotonic() - start, truth.noise_sigma)
    picks = noisy_picks(truth.positions_px, tomo["pick_error_px"], rng)
    write_mrc(out["tilt_series"], stack, apix)
    write_tlt(out["tlt"], IMOD_TILT_SIGN * truth.tilts_deg)  # IMOD-convention .tlt (info json: EMAN ytilt)
    write_info_json(out["info"], tilt_series_info(truth, picks, label=tomo["pick_label"],
                                                  tlt_file=out["tilt_series"]))
    record = truth.to_dict() | {"tomogram": tomo_name, "seed": seed, "picks_px": picks.tolist(),
                                "pick_label": tomo["pick_label"]}
    with atomic_write(out["truth"]) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    write_star(out["truth_star"], tomo_truth_star(truth, tomo_name))


def simulate_spa_job(reference: str, out_particles: str, out_star: str, out_truth: str, seed: int, spa: dict,
         voltage_kv: float, cs_mm: float, ampcont: float, threads: int) -> None:
    """True map → simulated single-particle stack (.mrcs), RELION STAR and truth STAR: ``demo.spa.n_particles``
    images; the STAR files reference the stack by its file name."""
    ref, ref_apix = read_mrc(reference, expect_apix=spa["apix"])
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    stack, truth = simulate_spa(
        ref, ref_apix, apix=spa["apix"], box=spa["box"], n=spa["n_particles"], rng=rng,
        defocus_range_um=(spa["defocus_min_um"], spa["defocus_max_um"]), snr=spa["snr"],
        max_shift_px=spa["max_shift_px"], voltage_kv=voltage_kv, cs_mm=cs_mm, ampcont=ampcont,
        progress=progress_logger(log, "particles", 1.0), workers=threads,
    )
    log.info("simulated %d particles of %d px in %.1f s; noise sigma %.4g", len(stack), truth.box,
             time.monotonic() - start, truth.noise_sigma)
    write_mrc(out_particles, stack, truth.apix)
    # Image names are relative to the folder of each STAR file ("000001@particles.mrcs" next to
    # the stack; "../spa/particles.mrcs" from truth/), so the folder can be moved as a whole.
    columns = spa_particle_columns(truth)
    for star in (out_star, out_truth):
        rel = os.path.relpath(out_particles, os.path.dirname(star))
        write_particles_star(star, spa_image_names(len(stack), rel), **columns)
