"""Snakemake adapter: a tomogram reconstructed elsewhere (IMOD layout and hand) → the pipeline's binned tomogram.

Accepted (``docs/CONVENTIONS.md``, "A tomogram made elsewhere"): an MRC tomogram of the same tilt
series, binned ``tomogram_bin`` relative to it, either as IMOD's ``tilt`` writes it (PERPENDICULAR,
MRC ``(nx, thickness, ny)``) or rotated with ``clip rotx`` / ``trimvol -rx`` (MRC ``(nx, ny, thickness)``),
centred on the tilt axis (tilt.com SHIFT 0 0) and not written with PARALLEL (inverted hand). It is
binned further to ``tomogram.bin`` (Fourier cropping) and cropped to ``tomogram.thickness_px``.
"""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.errors import InputError  # noqa: E402
from emflow.io import hdf_count, read_hdf_stack, read_info_json, read_mrc, read_mrc_header, write_mrc  # noqa: E402
from emflow.sta.tomo import fit_tomogram, imod_tomogram_layout, imod_tomogram_to_emflow  # noqa: E402


def _tilt_image_shape(path: str) -> tuple[int, int]:
    if path.endswith(".hdf"):
        images, _ = read_hdf_stack(path, indices=[0])
        hdf_count(path)
        return tuple(images.shape[-2:])
    return tuple(read_mrc_header(path)["shape"][1:])


def main(tomogram: str, tilt_series: str, info_path: str, out: str, bin: int, thickness_px: int,
         tomogram_bin: int | None, threads: int) -> None:
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
    if not header["apix"] or abs(header["apix"] - want) > 0.01 * want:
        raise InputError(f"voxel size {header['apix']:.4g} Å in the header, expected {want:.4g} Å "
                         f"(tilt series {apix_unbin:.4g} Å × tomogram_bin {tomogram_bin})", source=tomogram,
                         fix="check tomogram_bin; if only the header is wrong: "
                             f"python -c \"import mrcfile; mrcfile.open('{tomogram}', 'r+').voxel_size = {want:.4g}\"")
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


main(snakemake.input.tomogram, snakemake.input.tilt_series, snakemake.input.info,  # noqa: F821
     snakemake.output.tomogram, bin=int(snakemake.wildcards.bin), threads=snakemake.threads,  # noqa: F821
     **{k: getattr(snakemake.params, k) for k in ("thickness_px", "tomogram_bin")})  # noqa: F821
