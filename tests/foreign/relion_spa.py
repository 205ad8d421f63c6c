"""RELION 3.1+ single-particle files written from RELION's own layout, for tests (no emflow imports).

Layout (RELION 3.1 "optics groups", https://relion.readthedocs.io/en/release-3.1/Reference/Conventions.html
and src/metadata_label.h of github 3dem/relion): a ``data_optics`` loop with rlnOpticsGroupName,
rlnOpticsGroup, rlnMicrographOriginalPixelSize, rlnVoltage (kV), rlnSphericalAberration (mm),
rlnAmplitudeContrast (fraction), rlnImagePixelSize (Å), rlnImageSize, rlnImageDimensionality; then
``data_particles`` with rlnImageName ``k@stack.mrcs`` (k 1-based), rlnDefocusU/V (Å, underfocus
positive), rlnDefocusAngle (deg), rlnOpticsGroup, angles and rlnOriginX/YAngst. The stack is an MRC
mode-2 file (``.mrcs``) with the voxel size in its header.

:func:`relion_ctf_2d` evaluates RELION's CTF (src/ctf.cpp L249-258 and src/ctf.h getCTF, commit
73f0a3c0): ``γ = K1·(Axx·X² + 2·Axy·X·Y + Ayy·Y²) + K2·u⁴ − K5 − K3``, ``A = Qᵀ·diag(−U, −V)·Q``,
``Q = [[cos a, sin a], [−sin a, cos a]]``, CTF = −sin γ; X along image columns, Y along rows.
"""

from __future__ import annotations

import os

import mrcfile
import numpy as np


def write_stack(path, stack, apix: float) -> None:
    """MRC stack ``[n, y, x]`` float32 with voxel size ``apix`` (Å)."""
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(stack, np.float32))
        m.voxel_size = float(apix)


def write_particles_star(path, stack_path, *, defocus_u_a, defocus_v_a, defocus_angle_deg, optics_group,
                         optics: list[dict], eulers_rot_tilt_psi=None, origins_a=None, row_order=None) -> None:
    """RELION 3.1 particle STAR: ``optics`` one dict per group with keys voltage, cs, ampcont, apix, box
    (group numbers 1, 2, ... in list order); per-particle arrays (n,). ``row_order``: the stack image
    (0-based) of each STAR row (default: stack order)."""
    n = len(defocus_u_a)
    order = np.arange(n) if row_order is None else np.asarray(row_order)
    eul = np.zeros((n, 3)) if eulers_rot_tilt_psi is None else np.asarray(eulers_rot_tilt_psi, float)
    org = np.zeros((n, 2)) if origins_a is None else np.asarray(origins_a, float)
    out = ["", "# version 30001", "", "data_optics", "", "loop_"]
    ocols = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
             "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
             "rlnImageDimensionality"]
    out += [f"_{c} #{i + 1}" for i, c in enumerate(ocols)]
    for g, o in enumerate(optics, start=1):
        out.append(f"opticsGroup{g} {g} {o['apix']:.6f} {o['voltage']:.6f} {o['cs']:.6f} {o['ampcont']:.6f} "
                   f"{o['apix']:.6f} {int(o['box'])} 2")
    out += ["", "", "data_particles", "", "loop_"]
    pcols = ["rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnAngleRot", "rlnAngleTilt",
             "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup"]
    out += [f"_{c} #{i + 1}" for i, c in enumerate(pcols)]
    name = os.path.basename(str(stack_path))
    for i in order.tolist():
        out.append(f"{i + 1:06d}@{name} {defocus_u_a[i]:.6f} {defocus_v_a[i]:.6f} {defocus_angle_deg[i]:.6f} "
                   f"{eul[i, 0]:.6f} {eul[i, 1]:.6f} {eul[i, 2]:.6f} {org[i, 0]:.6f} {org[i, 1]:.6f} "
                   f"{int(optics_group[i])}")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n\n")


def wavelength_a(voltage_kv: float) -> float:
    """RELION's electron wavelength (src/ctf.cpp initialise): 12.2643247 / sqrt(V·(1 + V·0.978466e-6)), V in volts."""
    v = voltage_kv * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


def relion_ctf_2d(box: int, apix: float, defocus_u_a: float, defocus_v_a: float, angle_deg: float,
                  voltage_kv: float = 300.0, cs_mm: float = 2.7, ampcont: float = 0.1) -> np.ndarray:
    """RELION's CTF on the unshifted full FFT grid ``[y, x]`` of a ``box`` image (see module docstring)."""
    lam = wavelength_a(voltage_kv)
    k1 = np.pi * lam
    k2 = np.pi / 2 * cs_mm * 1e7 * lam**3
    k3 = np.arctan(ampcont / np.sqrt(1 - ampcont**2))
    a = np.deg2rad(angle_deg)
    q = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    amat = q.T @ np.diag([-defocus_u_a, -defocus_v_a]) @ q
    f = np.fft.fftfreq(box, d=apix)
    y, x = np.meshgrid(f, f, indexing="ij")
    u2 = x * x + y * y
    gamma = k1 * (amat[0, 0] * x * x + 2 * amat[0, 1] * x * y + amat[1, 1] * y * y) + k2 * u2 * u2 - k3
    return -np.sin(gamma)
