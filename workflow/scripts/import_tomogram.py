"""Snakemake adapter: user tilt series + .tlt/.xf/picks → results/import/{tomo}.tlt + info json."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.sta.importer import build_info  # noqa: E402
from emflow.io import hdf_count, read_hdf_stack, read_mrc_header, write_info_json, write_tlt  # noqa: E402
from emflow.pixel_size import pixel_size  # noqa: E402


def tilt_series_geometry(path: str, apix_config: float, apix_override: float | None = None) -> tuple[int, int, int]:
    """(n tilts, nx, ny) of a tilt series, checking its pixel size against the config."""
    if path.endswith(".hdf"):
        images, _ = read_hdf_stack(path, indices=[0])
        n, (ny, nx) = hdf_count(path), images.shape[-2:]
    else:
        header = read_mrc_header(path)
        n, ny, nx = header["shape"]
    pixel_size(path, expected=apix_config, key="microscope.apix", override=apix_override)
    return n, nx, ny


def main(tilt_series, out_tlt, out_info, entry, apix, voltage_kv, cs_mm, thickness_unbin_px, apix_override=None):
    n, nx, ny = tilt_series_geometry(tilt_series, apix, apix_override)
    info = build_info(name=entry["name"], shape_xy=(nx, ny), apix=apix, voltage_kv=voltage_kv, cs_mm=cs_mm,
                      tlt=entry["tlt"], xf=entry["xf"], info_json=entry["info_json"], picks=entry["picks"],
                      defocus_um=entry["defocus_um"], thickness_unbin_px=thickness_unbin_px)
    tilts = np.array([row[3] for row in info["tlt_params"]])
    if len(tilts) != n:
        raise InputError(f"the tilt series has {n} images but {len(tilts)} tilt angles were given",
                         source=entry["tlt"] or entry["info_json"],
                         fix=f"give one tilt angle per image of {tilt_series}")
    info["tlt_file"] = tilt_series
    write_tlt(out_tlt, tilts)
    write_info_json(out_info, info)
    log.info("%s: %d tilts (%.1f to %.1f deg), %d picks", entry["name"], n, tilts.min(), tilts.max(),
             len(info.get("boxes_3d", [])))


main(snakemake.input.tilt_series, snakemake.output.tlt, snakemake.output.info,  # noqa: F821
     **{k: getattr(snakemake.params, k) for k in ("entry", "apix", "voltage_kv", "cs_mm", "thickness_unbin_px")},  # noqa: F821
     apix_override=getattr(snakemake.params, "apix_override", None))  # noqa: F821
