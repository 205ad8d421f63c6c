"""File-level helpers of the SPA workflow scripts: particles with CTFs, EMAN header ↔ arrays.

Kept out of the kernels so they stay I/O free; scripts call these and then the stage functions.
"""

from __future__ import annotations

import numpy as np

from emflow.ctf import CTF
from emflow.errors import InputError


def ctfs_from_star(star: dict, n: int, microscope: dict, source: str) -> list[CTF]:
    """Per-particle :class:`CTF` from a RELION particle STAR table (defocus in Å → µm)."""
    parts = star.get("particles") or next((t for t in star.values() if isinstance(t, dict) and "rlnDefocusU" in t), None)
    if parts is None or "rlnDefocusU" not in parts:
        raise InputError("no particle table with rlnDefocusU", source=source, fix="give a RELION particle STAR with CTF columns")
    optics = star.get("optics", {})
    du = np.asarray(parts["rlnDefocusU"], float)
    dv = np.asarray(parts.get("rlnDefocusV", du), float)
    ang = np.asarray(parts.get("rlnDefocusAngle", np.zeros_like(du)), float)
    if len(du) != n:
        raise InputError(f"{len(du)} STAR rows but {n} particles", source=source, fix="use the STAR file of this stack")

    def opt(key, default):
        for table in (parts, optics):
            if key in table:
                return float(np.asarray(table[key], float)[0])
        return float(default)

    volt, cs, amp = (opt("rlnVoltage", microscope["voltage_kv"]), opt("rlnSphericalAberration", microscope["cs_mm"]),
                     opt("rlnAmplitudeContrast", microscope["ampcont"]))
    return [CTF(defocus_um=float((u + v) / 2e4), voltage_kv=volt, cs_mm=cs, ampcont=amp, dfdiff_um=float(abs(u - v) / 1e4),
                dfang_deg=float(a)) for u, v, a in zip(du, dv, ang)]


def ctf_header(c: CTF, apix: float) -> dict:
    from emflow.io import ctf_to_dict

    return ctf_to_dict({"defocus": c.defocus_um, "dfdiff": c.dfdiff_um, "dfang": c.dfang_deg, "bfactor": c.bfactor,
                        "ampcont": c.ampcont, "voltage": c.voltage_kv, "cs": c.cs_mm, "apix": apix})


def read_particles(path: str):
    """``(stack float32 (n, b, b), ctfs list or None, apix)`` from an EMAN HDF written by spa_prepare."""
    from emflow.io import ctf_from_dict, read_hdf_stack

    stack, headers = read_hdf_stack(path)
    apix = float(headers[0].get("apix_x", 1.0)) if headers else 1.0
    ctfs = None
    if headers and "ctf" in headers[0]:
        ctfs = []
        for h in headers:
            d = ctf_from_dict(h["ctf"], source=path)
            ctfs.append(CTF(defocus_um=d["defocus"], voltage_kv=d["voltage"], cs_mm=d["cs"], ampcont=d["ampcont"],
                            bfactor=d["bfactor"], dfdiff_um=d["dfdiff"], dfang_deg=d["dfang"]))
    return np.asarray(stack, np.float32), ctfs, apix


def read_projections(path: str):
    """``(projections, eulers (n, 3) EMAN degrees, rotations (n, 3, 3))`` from projections_XX.hdf."""
    from emflow.geometry import matrix_to_eman
    from emflow.io import read_hdf_stack, transform_from_dict

    stack, headers = read_hdf_stack(path)
    R = np.stack([np.asarray(transform_from_dict(h["xform.projection"])[0], float) for h in headers])
    return np.asarray(stack, np.float32), matrix_to_eman(R), R
