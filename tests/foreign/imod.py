"""IMOD-format fixtures written from IMOD's own documentation (numpy/mrcfile only, no emflow).

Sources (IMOD 4.6 sources as mirrored in github:LabShare-Archive/IMOD @8c592ce, and the IMOD man
pages at bio3d.colorado.edu/imod/doc/man):

* **Projection** (``flib/tilt/tilt.f90`` L3161-3178 and L1231-1240, L1335): ``tilt`` back-projects
  the point at ``(X, Zr)`` of an output slice (``Zr`` = row within the slice, from its centre) onto
  the aligned image position ``u = X cos θ + Zr sinBeta`` with ``sinBeta = -sin θ`` ("all equations
  are written for rotations in the X/Z plane, viewed from the negative Y axis"); ``v`` = the slice's
  Y. The raw ``tilt`` output stores slices perpendicular to the specimen, file axes
  ``(X, Zr, Y)``, "a 90 degree rotation about X but no change in handedness" (``tilt`` man page,
  DESCRIPTION); ``clip rotx`` / ``trimvol -rx`` rotate it by -90° about X (``clip`` man page,
  rotx: "preserves the handedness"), giving the usual ``(x, y, z)`` tomogram with ``z = -Zr``.
  Hence, in the rotated (x, y, z) frame, **a tilt image of angle θ is ``u = x cos θ + z sin θ``,
  ``v = y``** -- :func:`aligned_position`.
* **Centres**: ``tilt`` puts the output centre at ``n/2 + 0.5`` (1-based, integer ``n/2``;
  ``tilt.f90`` L3263-3267), i.e. ``(n-1)/2`` 0-based for even ``n``; transforms are about the image
  centre ``(NX/2, NY/2)`` (``xfmodel`` man page). The fixtures use index ``n // 2`` for the
  projections (the half-pixel is irrelevant to the sign checks) and IMOD's ``(n-1)/2`` for the
  layout of a reconstruction (:func:`imod_raw_tomogram`).
* ``.xf`` (``newstack`` man page, "transform file"): ``A11 A12 A21 A22 DX DY`` per view, raw →
  aligned ``X' = A11 (X - Xci) + A12 (Y - Yci) + DX + Xco``; written ``4f12.7, 2f12.3``.
* ``.tlt``: one angle per line (``tilt`` man page, TILTFILE).
* ``.defocus`` version 2 (``ctfplotter/myapp.cpp`` L1164-1172): ``start end angle1 angle2 df_nm``
  tab-separated, the first line followed by the version ``2``; version 3 (``ctfphaseflip`` man
  page, "Defocus file format"): first line ``flags 0 0. 0. 0 3``, then ``start end angle1 angle2
  df1_nm df2_nm astig_deg [phase_deg]``. Views count from 1; defocus is underfocus, nm.
* **Defocus gradient** (``mrc/ctfphaseflip.cpp`` L368): the strip centred at column ``x`` of an
  aligned image of angle θ is corrected with ``defocus + (x - nx/2 - xshift) tan θ · pixel``, i.e.
  for θ > 0 the +x side is further underfocused -- :func:`ctfphaseflip_defocus_nm`.
* ``tilt.com`` (``tilt`` man page, OPTIONS): ``$tilt -StandardInput`` then one ``KEYWORD values``
  per line, as etomo writes it.
"""

from __future__ import annotations

import os

import mrcfile
import numpy as np


# ----------------------------------------------------------------------------- geometry
def aligned_position(points_xyz, tilt_deg: float) -> np.ndarray:
    """Aligned-image position ``(u, v)`` (px from the image centre) of tomogram points ``(n, 3)``
    (IMOD's rotated tomogram frame, px from its centre) in the view of IMOD tilt angle ``tilt_deg``:
    ``u = x cos θ + z sin θ``, ``v = y`` (module docstring)."""
    p = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    t = np.radians(tilt_deg)
    return np.column_stack([p[:, 0] * np.cos(t) + p[:, 2] * np.sin(t), p[:, 1]])


def raw_position(aligned_uv, xf_row) -> np.ndarray:
    """Raw-image position (px from the centre) of aligned positions ``(n, 2)``: the inverse of the
    ``.xf`` row ``[[A11, A12, DX], [A21, A22, DY]]`` (aligned = A raw + d, about the centres)."""
    m = np.asarray(xf_row, dtype=np.float64)
    return np.linalg.solve(m[:, :2], (np.asarray(aligned_uv, dtype=np.float64) - m[:, 2]).T).T


def xf_rows(rot_deg, shift_xy) -> np.ndarray:
    """``.xf`` rows ``(n, 2, 3)`` rotating raw images counter-clockwise by ``rot_deg`` then shifting."""
    r = np.radians(np.atleast_1d(np.asarray(rot_deg, dtype=np.float64)))
    sh = np.asarray(shift_xy, dtype=np.float64).reshape(-1, 2)
    c, s = np.cos(r), np.sin(r)
    out = np.zeros((max(len(r), len(sh)), 2, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, :, 2] = sh
    return out


def ctfphaseflip_defocus_nm(defocus_nm: float, x_px, tilt_deg: float, pixel_nm: float,
                            nx: int, xshift: float = 0.0):
    """Defocus (nm) ctfphaseflip uses for the strip centred at aligned-image column ``x_px``
    (``mrc/ctfphaseflip.cpp`` L368)."""
    return defocus_nm - (nx / 2 + xshift - np.asarray(x_px, dtype=np.float64)) * np.tan(np.radians(tilt_deg)) * pixel_nm


# ----------------------------------------------------------------------------- phantom
def blob_volume(blobs, shape_zyx, centre_zyx=None) -> np.ndarray:
    """Gaussian blobs rendered on a ``[z, y, x]`` grid (IMOD's rotated tomogram frame).

    ``blobs``: rows ``(x, y, z, amplitude, sigma)`` in px from ``centre_zyx`` (default ``n // 2``).
    """
    nz, ny, nx = shape_zyx
    cz, cy, cx = (nz // 2, ny // 2, nx // 2) if centre_zyx is None else centre_zyx
    z, y, x = np.meshgrid(np.arange(nz) - cz, np.arange(ny) - cy, np.arange(nx) - cx, indexing="ij")
    vol = np.zeros(shape_zyx)
    for bx, by, bz, amp, sig in np.asarray(blobs, dtype=np.float64):
        vol += amp * np.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * sig**2))
    return vol.astype(np.float32)


def project_blobs(blobs, tilts_deg, shape_yx, xf=None) -> np.ndarray:
    """Raw tilt series ``(n, ny, nx)`` float32 of Gaussian blobs, projected the way IMOD defines it.

    Each blob ``(x, y, z, amplitude, sigma)`` (IMOD tomogram frame) projects to the exact line
    integral ``amplitude · sigma · sqrt(2π) · exp(-r²/2σ²)`` about its aligned position
    (:func:`aligned_position`), which the inverse ``.xf`` (:func:`raw_position`) puts into the raw
    image; centres at index ``n // 2``.
    """
    blobs = np.asarray(blobs, dtype=np.float64)
    ny, nx = shape_yx
    n = len(tilts_deg)
    xf = np.tile(np.eye(2, 3), (n, 1, 1)) if xf is None else np.asarray(xf, dtype=np.float64)
    yy, xx = np.meshgrid(np.arange(ny) - ny // 2, np.arange(nx) - nx // 2, indexing="ij")
    out = np.zeros((n, ny, nx))
    for i, t in enumerate(tilts_deg):
        raw = raw_position(aligned_position(blobs[:, :3], t), xf[i])
        for (rx, ry), amp, sig in zip(raw, blobs[:, 3], blobs[:, 4]):
            out[i] += amp * sig * np.sqrt(2 * np.pi) * np.exp(-((xx - rx) ** 2 + (yy - ry) ** 2) / (2 * sig**2))
    return out.astype(np.float32)


def imod_raw_tomogram(blobs, nx: int, ny: int, thickness: int) -> np.ndarray:
    """A tomogram as IMOD's ``tilt`` writes it by default (PERPENDICULAR, not rotated): numpy array
    ``[Y, Zr, X]`` = MRC ``(NX, NY, NZ) = (nx, thickness, ny)`` with ``Zr = -z`` about IMOD's centre
    ``(n-1)/2`` (module docstring). ``blobs`` as in :func:`blob_volume` (rotated frame, from IMOD's
    centre)."""
    b = np.asarray(blobs, dtype=np.float64).copy()
    rows = np.column_stack([b[:, 0], -b[:, 2], b[:, 1], b[:, 3], b[:, 4]])  # (x, Zr, y) as (x, y, z) of the file
    return blob_volume(rows, (ny, thickness, nx), centre_zyx=((ny - 1) / 2, (thickness - 1) / 2, (nx - 1) / 2))


def imod_rotx(raw_file_array: np.ndarray) -> np.ndarray:
    """``clip rotx`` of a raw ``tilt`` output ``[Y, Zr, X]``: -90° about X → ``[z, y, x]`` with
    ``z = -Zr`` (clip man page, rotx)."""
    return np.ascontiguousarray(np.asarray(raw_file_array).transpose(1, 0, 2)[::-1])


# ----------------------------------------------------------------------------- writers
def write_mrc(path: str | os.PathLike, data, apix: float, *, stack: bool = False) -> None:
    """MRC file (mode 2) with the voxel size in the header; ``stack`` marks an image stack (ispg 0)."""
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.float32))
        if stack:
            m.set_image_stack()
        m.voxel_size = apix


def write_tlt(path: str | os.PathLike, angles) -> None:
    """IMOD ``.tlt``: one angle per line."""
    with open(path, "w") as f:
        f.writelines(f"{a:9.2f}\n" for a in np.asarray(angles, dtype=np.float64).ravel())


def write_xf(path: str | os.PathLike, xf) -> None:
    """IMOD ``.xf``: ``A11 A12 A21 A22 DX DY`` per view, ``4f12.7, 2f12.3``."""
    with open(path, "w") as f:
        for m in np.asarray(xf, dtype=np.float64):
            f.write(f"{m[0, 0]:12.7f}{m[0, 1]:12.7f}{m[1, 0]:12.7f}{m[1, 1]:12.7f}{m[0, 2]:12.3f}{m[1, 2]:12.3f}\n")


def write_defocus_v2(path: str | os.PathLike, rows) -> None:
    """ctfplotter version-2 ``.defocus``: rows ``(start, end, angle1, angle2, defocus_nm)``."""
    with open(path, "w") as f:
        for i, (s, e, a1, a2, df) in enumerate(rows):
            f.write(f"{int(s)}\t{int(e)}\t{a1:5.2f}\t{a2:5.2f}\t{df:6.0f}" + ("   2\n" if i == 0 else "\n"))


def write_defocus_v3(path: str | os.PathLike, rows, flags: int = 1) -> None:
    """ctfplotter version-3 ``.defocus``: flag line, then rows ``(start, end, angle1, angle2, df1_nm,
    df2_nm, astig_deg[, phase])`` (columns as the flags say)."""
    with open(path, "w") as f:
        f.write(f"{flags}\t0\t0.\t0.\t0\t3\n")
        for r in rows:
            s, e, a1, a2, *vals = r
            f.write(f"{int(s)}\t{int(e)}\t{a1:.2f}\t{a2:.2f}\t" + "\t".join(f"{v:.2f}" for v in vals) + "\n")


def write_tilt_com(path: str | os.PathLike, *, thickness: int, tiltfile: str = "TS.tlt", extra: dict | None = None,
                   full_image: tuple[int, int] | None = None, image_binned: int = 1) -> None:
    """An etomo-style ``tilt.com``."""
    lines = ["# Command file to run Tilt", "$tilt -StandardInput", "InputProjections TS.ali",
             "OutputFile TS_full_rec.mrc", f"IMAGEBINNED {image_binned}", f"TILTFILE {tiltfile}",
             f"THICKNESS {thickness}", "RADIAL 0.35 0.035", "FalloffIsTrueSigma 1", "XAXISTILT 0.0",
             "LOG 0.0", "SCALE 0.0 1000.0", "PERPENDICULAR", "MODE 2"]
    if full_image:
        lines.append(f"FULLIMAGE {full_image[0]} {full_image[1]}")
    lines += ["SUBSETSTART 0 0", "AdjustOrigin", "ActionIfGPUFails 1,2", "OFFSET 0.0", "SHIFT 0.0 0.0", "UseGPU 0"]
    for k, v in (extra or {}).items():
        lines = [ln for ln in lines if ln.split()[0] != k]
        lines.append(f"{k} {v}".rstrip())
    lines.append("$if (-e ./savework) ./savework")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
