"""The import and tomogram jobs (rules import_tomogram, tomogram_reconstruct, tomogram_external): read
the job's files, call :mod:`emflow.sta.importer` / :mod:`emflow.sta.tomo`, write the outputs. The
workflow scripts only map the rule's named inputs, outputs and params onto these functions."""

from __future__ import annotations

import logging
import time

import numpy as np

from emflow.errors import InputError
from emflow.io import (
    check_finite,
    hdf_count,
    read_hdf_stack,
    read_info_json,
    read_mrc,
    read_mrc_header,
    tlt_params,
    write_info_json,
    write_mrc,
    write_tlt,
)
from emflow.io.tiltseries import read_tilt_series, tilt_series_apix, tilt_series_shape
from emflow.pipeline.log import progress_logger
from emflow.pixel_size import check_pixel_size
from emflow.sta.import_picks import declared_thickness_unbin
from emflow.sta.importer import IMOD_TILT_SIGN, build_info
from emflow.sta.tomo import fit_tomogram, imod_tomogram_layout, imod_tomogram_to_emflow, reconstruct_wbp

__all__ = ["import_tomogram", "reconstruct_tomogram", "external_tomogram"]

log = logging.getLogger(__name__)


def import_tomogram(tilt_series: str, out_tlt: str, out_info: str, entry: dict, apix: float | None, voltage_kv: float,
                    cs_mm: float, ampcont: float, apix_override: float | None = None) -> None:
    """User tilt series + .tlt/.xf/.defocus/tilt.com/picks → ``out_tlt`` + info json ``out_info``.

    The IMOD → EMAN2 conversion happens in :func:`emflow.sta.importer.build_info`; the ``.tlt`` written
    here is in IMOD's convention again (``IMOD_TILT_SIGN × ytilt``), so it means what any ``.tlt`` means.
    """
    n, ny, nx = tilt_series_shape(tilt_series)
    apix = tilt_series_apix(tilt_series, expected=apix, override=apix_override)
    thickness = declared_thickness_unbin(entry, apix, (ny, nx))
    info = build_info(name=entry["name"], shape_xy=(nx, ny), apix=apix, voltage_kv=voltage_kv, cs_mm=cs_mm,
                      tlt=entry["tlt"], xf=entry["xf"], info_json=entry["info_json"], picks=entry["picks"],
                      defocus_um=entry["defocus_um"], defocus_file=entry.get("defocus_file"),
                      tilt_com=entry.get("tilt_com"), thickness_unbin_px=thickness,
                      pick_label=entry.get("picks_label"), allow_empty_picks=bool(entry.get("allow_empty_picks")),
                      tilt_series_star=entry.get("tilt_series_star"), tomo_hand=entry.get("tomo_hand"),
                      ampcont=ampcont)
    tilts = np.array([row[3] for row in info["tlt_params"]])
    if len(tilts) != n:
        raise InputError(f"the tilt series has {n} images but {len(tilts)} tilt angles were given",
                         source=entry["tlt"] or entry["info_json"] or entry.get("tilt_series_star"),
                         fix=f"give one tilt angle per image of {tilt_series}")
    info["tlt_file"] = tilt_series
    if thickness is not None:  # extraction's outside-the-tomogram check uses it
        info["tomogram_thickness_unbin_px"] = int(thickness)
    write_tlt(out_tlt, IMOD_TILT_SIGN * tilts)  # an IMOD-convention .tlt (EMAN ytilt = -IMOD angle)
    write_info_json(out_info, info)
    log.info("%s: %d tilts (%.1f to %.1f deg), %d picks", entry["name"], n, tilts.min(), tilts.max(),
             len(info.get("boxes_3d", [])))


def reconstruct_tomogram(tilt_series: str, info_path: str, out_tomogram: str, bin: int, thickness_px: int,
                         radial_filter: str, lowpass: str, apix: float, threads: int) -> None:
    """Tilt series + info json (tlt_params) → binned WBP tomogram (MRC), with the per-tilt geometry
    ``[tx, ty, rot, tilt, offtilt]`` of the info json."""
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


def _tilt_image_shape(path: str) -> tuple[int, int]:
    if path.endswith(".hdf"):
        images, _ = read_hdf_stack(path, indices=[0])
        hdf_count(path)
        return tuple(images.shape[-2:])
    return tuple(read_mrc_header(path)["shape"][1:])


def external_tomogram(tomogram: str, tilt_series: str, info_path: str, out: str, bin: int, thickness_px: int,
                       tomogram_bin: int | None, threads: int) -> None:
    """A tomogram reconstructed elsewhere (IMOD layout and hand) → the pipeline's binned tomogram ``out``.

    Accepted (``docs/CONVENTIONS.md``, "A tomogram made elsewhere"): an MRC tomogram of the same tilt
    series, binned ``tomogram_bin`` relative to it, either as IMOD's ``tilt`` writes it (PERPENDICULAR,
    MRC ``(nx, thickness, ny)``) or rotated with ``clip rotx`` / ``trimvol -rx`` (MRC ``(nx, ny, thickness)``),
    centred on the tilt axis (tilt.com SHIFT 0 0) and not written with PARALLEL (inverted hand). It is
    binned further to ``bin`` (Fourier cropping) and cropped to ``thickness_px``.
    """
    key = "input.tomograms[].tomogram_bin"
    if not tomogram_bin:
        raise InputError("a tomogram made elsewhere needs its binning relative to the tilt series", source=key,
                         fix=f"set tomogram_bin for {tomogram} (e.g. 4 for a tomogram of a 4x binned aligned stack)")
    if bin % tomogram_bin:
        raise InputError(f"tomogram.bin = {bin} is not a multiple of tomogram_bin = {tomogram_bin} of {tomogram}",
                         source="tomogram.bin", fix=f"set tomogram.bin to a multiple of {tomogram_bin}")
    info = read_info_json(info_path)
    apix_unbin = float(info["apix_unbin"])
    tcom = info.get("imod_tilt_com") or {}
    if tcom.get("parallel"):
        raise InputError("its tilt.com has PARALLEL, which inverts the handedness (tilt man page)", source=tomogram,
                         fix="reconstruct with PERPENDICULAR (then clip rotx) or RotateBy90")
    if any(abs(v) > 1e-6 for v in tcom.get("shift_xz_unbin_px", [0.0, 0.0])):
        raise InputError(f"its tilt.com has SHIFT {tcom['shift_xz_unbin_px']}: the tomogram is not centred on the "
                         "tilt axis", source=tomogram, fix="reconstruct with SHIFT 0 0, or let emflow reconstruct "
                                                           "(remove `tomogram` from the table)")
    header = read_mrc_header(tomogram)
    want = apix_unbin * tomogram_bin
    check_pixel_size(header["apix"], source=tomogram, expected=want, kind="mrc",
                     key=f"input.tomograms[].tomogram_bin ({tomogram_bin}) × the tilt series' {apix_unbin:.4g} Å")
    ny, nx = _tilt_image_shape(tilt_series)
    try:
        layout = imod_tomogram_layout(header["shape"], (ny // tomogram_bin, nx // tomogram_bin))
    except ValueError as exc:
        raise InputError(f"MRC size (x, y, z) = {header['shape'][::-1]} does not fit a tomogram of the "
                         f"{nx} x {ny} px tilt series binned {tomogram_bin}: {exc}", source=tomogram,
                         fix="give the full-size tomogram (IMOD tilt output, or after trimvol -rx without x/y "
                             "trimming) and its binning as tomogram_bin") from None
    vol, _ = read_mrc(tomogram, mmap=True, check_nan=True)
    vol = imod_tomogram_to_emflow(vol, layout)
    try:
        out_vol = fit_tomogram(vol, bin // tomogram_bin, thickness_px, threads=threads)
    except ValueError as exc:
        raise InputError(str(exc), source="tomogram.thickness_px",
                         fix=f"set tomogram.thickness_px to at most {vol.shape[0] // (bin // tomogram_bin)}") from None
    log.info("%s: IMOD %s layout %s (x, y, z) at bin %d -> %s (z, y, x) at bin %d", tomogram, layout,
             header["shape"][::-1], tomogram_bin, out_vol.shape, bin)
    write_mrc(out, out_vol, apix_unbin * bin)
