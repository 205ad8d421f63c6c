"""Metadata of simulated demo data in the formats users' tools read.

Pure functions that turn :mod:`emflow.demo.simulate` ground truth into an EMAN2 ``info`` dict
(spec §3.0), RELION particle columns and truth tables; the workflow scripts write them with
:mod:`emflow.io`.
"""

from __future__ import annotations

import numpy as np

from emflow.demo.simulate import SpaTruth, TiltSeriesTruth
from emflow.geometry import matrix_to_relion
from emflow.io import add_boxes

__all__ = ["tilt_series_info", "tomo_truth_star", "spa_particle_columns", "spa_image_names"]


def tilt_series_info(
    truth: TiltSeriesTruth, picks_px: np.ndarray, *, label: str, tlt_file: str | None = None
) -> dict:
    """EMAN2 ``info/<name>_info.json`` content of a simulated tilt series.

    Parameters
    ----------
    truth : TiltSeriesTruth
    picks_px : ndarray (n, 3)
        Pick positions ``(x, y, z)`` in unbinned px from the tomogram centre (spec §3.0), stored
        in ``boxes_3d`` as ``"manual"`` boxes of class ``label`` with box size ``truth.box``.
    label : str
        Class name of the picks.
    tlt_file : str, optional
        Path of the tilt series, stored as ``tlt_file``.

    Returns
    -------
    dict
        ``apix_unbin``; ``tlt_params`` rows ``[tx=0, ty=0, rot=tilt_axis, tilt, offtilt=0]``
        (the simulated series is already aligned); per-tilt ``defocus`` (µm, mid-plane, as recorded:
        ``truth.defocus_recorded_um``) and ``phase`` (0°); ``voltage`` (kV); ``cs`` (mm); ``boxes_3d``; ``class_list``.
    """
    ntilt = truth.tilts_deg.size
    info: dict = {
        "apix_unbin": float(truth.apix),
        "tlt_params": [[0.0, 0.0, float(truth.tilt_axis_deg), float(t), 0.0] for t in truth.tilts_deg],
        "ali_loss": [0.0] * ntilt,
        "defocus": [float(d) for d in truth.defocus_recorded_um],
        "phase": [0.0] * ntilt,
        "voltage": float(truth.voltage_kv),
        "cs": float(truth.cs_mm),
    }
    if tlt_file is not None:
        info["tlt_file"] = str(tlt_file)
    add_boxes(info, picks_px, label, int(truth.box), method="manual")
    return info


def tomo_truth_star(truth: TiltSeriesTruth, tomo_name: str) -> dict:
    """RELION-style table of the true particles of one tomogram (``{"particles": columns}``).

    ``rlnCoordinateX/Y/Z`` are voxel indices of the unbinned volume (px from its corner,
    0-based: centre + ``shape//2``); angles are RELION ``(rot, tilt, psi)`` of ``R_p``;
    ``emanAz/Alt/Phi`` the same orientation in EMAN angles; ``emflowX/Y/Z`` px from the centre.
    """
    n = truth.positions_px.shape[0]
    corner = truth.positions_px + np.array(truth.shape_xyz, dtype=np.float64) // 2
    rel = matrix_to_relion(truth.rotations).reshape(n, 3)
    eman = truth.eman_eulers.reshape(n, 3)
    return {"particles": {
        "rlnTomoName": [tomo_name] * n,
        "rlnCoordinateX": corner[:, 0], "rlnCoordinateY": corner[:, 1], "rlnCoordinateZ": corner[:, 2],
        "rlnAngleRot": rel[:, 0], "rlnAngleTilt": rel[:, 1], "rlnAnglePsi": rel[:, 2],
        "emanAz": eman[:, 0], "emanAlt": eman[:, 1], "emanPhi": eman[:, 2],
        "emflowX": truth.positions_px[:, 0], "emflowY": truth.positions_px[:, 1],
        "emflowZ": truth.positions_px[:, 2],
    }}


def spa_image_names(n: int, stack_name: str) -> list[str]:
    """RELION image names ``000001@<stack_name>`` … (1-based)."""
    return [f"{i + 1:06d}@{stack_name}" for i in range(n)]


def spa_particle_columns(truth: SpaTruth) -> dict:
    """Arguments of :func:`emflow.io.write_particles_star` for the simulated particles.

    RELION angles of the projection transforms; ``rlnOriginX/YAngst = −t · apix`` (RELION's
    origin points from the particle centre back to the box centre); defocus U = V = the
    particle's defocus (no astigmatism); plus EMAN angles and shifts as extra columns
    (``emanAz, emanAlt, emanPhi, emanTx, emanTy``, px) for scoring.
    """
    eman = truth.eman_eulers
    return {
        "eulers_relion": matrix_to_relion(truth.rotations),
        "shifts_a": -truth.shifts_px * truth.apix,
        "apix": truth.apix,
        "image_size": truth.box,
        "voltage": truth.voltage_kv,
        "cs": truth.cs_mm,
        "ampcont": truth.ampcont,
        "defocus_u_um": truth.defocus_um,
        "defocus_v_um": truth.defocus_um,
        "defocus_angle": np.zeros_like(truth.defocus_um),
        "extra": {"emanAz": eman[:, 0], "emanAlt": eman[:, 1], "emanPhi": eman[:, 2],
                  "emanTx": truth.shifts_px[:, 0], "emanTy": truth.shifts_px[:, 1]},
    }
