"""Snakemake adapter: tilt series + info json (tlt_params) → binned WBP tomogram (MRC)."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import time  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.io import check_finite, read_info_json, tlt_params, write_mrc  # noqa: E402
from emflow.io.tiltseries import read_tilt_series  # noqa: E402
from emflow.pixel_size import check_pixel_size  # noqa: E402
from emflow.sta.tomo import reconstruct_wbp  # noqa: E402


def main(tilt_series: str, info_path: str, out_tomogram: str, bin: int, thickness_px: int, radial_filter: str,
         lowpass: str, apix: float, threads: int) -> None:
    """Reconstruct with the per-tilt geometry ``[tx, ty, rot, tilt, offtilt]`` of the info json."""
    info = read_info_json(info_path)
    params = tlt_params(info, source=info_path)
    apix_unbin = check_pixel_size(info.get("apix_unbin"), source=info_path, expected=apix, kind="json",
                                  what="info json (apix_unbin)")  # established on import (input.apix_override)
    # MRC or EMAN2 HDF; the import stage already resolved the pixel size (override included)
    stack, _ = read_tilt_series(tilt_series, mmap=True, override=apix_unbin)
    check_finite(stack, tilt_series)  # NaN would fill the tomogram
    if stack.ndim != 3 or stack.shape[0] != len(params):
        raise InputError(f"{len(params)} tilts in tlt_params but the stack has shape {stack.shape}",
                         source=info_path, fix=f"use the info json that belongs to {tilt_series}")
    start = time.monotonic()
    tomogram = reconstruct_wbp(
        stack, params[:, 3], bin=bin, thickness_px=thickness_px, axis_rot_deg=params[:, 2],
        shifts=params[:, :2], offtilt=params[:, 4], radial_weight=radial_filter, lowpass=lowpass,
        progress=progress_logger(log, "z slabs", 1.0), threads=threads,
    )
    log.info("tomogram %s (z, y, x) at %.4g Å/px from %d tilts in %.1f s", tomogram.shape, apix_unbin * bin,
             len(params), time.monotonic() - start)
    write_mrc(out_tomogram, tomogram, apix_unbin * bin)


main(snakemake.input.tilt_series, snakemake.input.info, snakemake.output.tomogram,  # noqa: F821
     bin=int(snakemake.wildcards.bin), threads=snakemake.threads,  # noqa: F821
     **{k: getattr(snakemake.params, k) for k in ("thickness_px", "radial_filter", "lowpass", "apix")})  # noqa: F821
