"""Snakemake adapter: true map → one simulated tilt series (MRC + .tlt + EMAN2 info json) and its truth."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from emflow.demo.metadata import tilt_series_info, tomo_truth_star  # noqa: E402
from emflow.demo.simulate import noisy_picks, simulate_tilt_series  # noqa: E402
from emflow.io import atomic_write, read_mrc, write_info_json, write_mrc, write_star, write_tlt  # noqa: E402
from emflow.sta.importer import IMOD_TILT_SIGN  # noqa: E402


def main(reference: str, out: dict, tomo_name: str, seed: int, tilts_deg: list, apix: float, voltage_kv: float,
         cs_mm: float, ampcont: float, tomo: dict, threads: int) -> None:
    """Simulate tomogram ``tomo_name`` with the ``demo.tomo`` settings and write every output."""
    ref, ref_apix = read_mrc(reference, expect_apix=apix)
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    stack, truth = simulate_tilt_series(
        ref, ref_apix, apix=apix, shape_xyz=tomo["shape_xyz"], tilts_deg=tilts_deg,
        n_particles=tomo["n_particles"], rng=rng, defocus_um=tomo["defocus_um"], voltage_kv=voltage_kv,
        cs_mm=cs_mm, ampcont=ampcont, dose_per_tilt=tomo["dose_per_tilt"], snr=tomo["snr"],
        tilt_axis_deg=tomo["tilt_axis_deg"], min_dist_px=tomo["min_dist_px"], tilt_scheme=tomo["tilt_scheme"],
        defocus_jitter_um=tomo["defocus_jitter_um"], tilt_shift_error_px=tomo["tilt_shift_error_px"],
        tilt_axis_error_deg=tomo["tilt_axis_error_deg"], defocus_error_um=tomo["defocus_error_um"], progress=progress_logger(log, "tilts", 1.0),
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


main(snakemake.input.reference, dict(snakemake.output.items()), snakemake.wildcards.tomo,  # noqa: F821
     threads=snakemake.threads,  # noqa: F821
     **{k: getattr(snakemake.params, k) for k in  # noqa: F821
        ("seed", "tilts_deg", "apix", "voltage_kv", "cs_mm", "ampcont", "tomo")})
