"""Snakemake adapter: user tilt series + .tlt/.xf/.defocus/tilt.com/picks → results/import/{tomo}.tlt + info json.

The IMOD → EMAN2 conversion happens in :func:`emflow.sta.importer.build_info`; the ``.tlt`` written
here is in IMOD's convention again (``IMOD_TILT_SIGN × ytilt``), so it means what any ``.tlt`` means.
"""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.io import write_info_json, write_tlt  # noqa: E402
from emflow.io.tiltseries import tilt_series_apix, tilt_series_shape  # noqa: E402
from emflow.sta.import_picks import declared_thickness_unbin  # noqa: E402
from emflow.sta.importer import IMOD_TILT_SIGN, build_info  # noqa: E402


def main(tilt_series, out_tlt, out_info, entry, apix, voltage_kv, cs_mm, ampcont, apix_override=None):
    n, ny, nx = tilt_series_shape(tilt_series)
    apix = tilt_series_apix(tilt_series, expected=apix, override=apix_override)
    info = build_info(name=entry["name"], shape_xy=(nx, ny), apix=apix, voltage_kv=voltage_kv, cs_mm=cs_mm,
                      tlt=entry["tlt"], xf=entry["xf"], info_json=entry["info_json"], picks=entry["picks"],
                      defocus_um=entry["defocus_um"], defocus_file=entry.get("defocus_file"),
                      tilt_com=entry.get("tilt_com"), thickness_unbin_px=declared_thickness_unbin(entry, apix, (ny, nx)),
                      pick_label=entry.get("picks_label"), allow_empty_picks=bool(entry.get("allow_empty_picks")),
                      tilt_series_star=entry.get("tilt_series_star"), tomo_hand=entry.get("tomo_hand"),
                      ampcont=ampcont)
    tilts = np.array([row[3] for row in info["tlt_params"]])
    if len(tilts) != n:
        raise InputError(f"the tilt series has {n} images but {len(tilts)} tilt angles were given",
                         source=entry["tlt"] or entry["info_json"] or entry.get("tilt_series_star"),
                         fix=f"give one tilt angle per image of {tilt_series}")
    info["tlt_file"] = tilt_series
    write_tlt(out_tlt, IMOD_TILT_SIGN * tilts)  # an IMOD-convention .tlt (EMAN ytilt = -IMOD angle)
    write_info_json(out_info, info)
    log.info("%s: %d tilts (%.1f to %.1f deg), %d picks", entry["name"], n, tilts.min(), tilts.max(),
             len(info.get("boxes_3d", [])))


main(snakemake.input.tilt_series, snakemake.output.tlt, snakemake.output.info,  # noqa: F821
     **{k: getattr(snakemake.params, k) for k in ("entry", "apix", "voltage_kv", "cs_mm", "ampcont")},  # noqa: F821
     apix_override=getattr(snakemake.params, "apix_override", None))  # noqa: F821
