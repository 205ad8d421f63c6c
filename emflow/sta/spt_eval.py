"""Ground-truth evaluation of a subtilt refinement run on simulated data (demo).

Each refined particle is matched to its simulated particle by the nearest pick of the same
tomogram; then :func:`emflow.sta.postprocess.evaluate_alignment` removes the map's free global frame
(rotation ``G``, shift ``g``) and gives orientation / translation errors, and the refined map is
compared with the truth map moved into that frame (FSC at 0.5 and 0.143).
"""

from __future__ import annotations

import json
import os

import numpy as np

from emflow.errors import InputError
from emflow.fsc import fsc, resolution
from emflow.sta.postprocess import evaluate_alignment, truth_in_map_frame
from emflow.sta.spt_refine import ParticleTable, RefineState

__all__ = ["read_truth", "match_truth", "evaluate_iteration"]


def read_truth(path: str) -> dict:
    """A demo ``<tomo>_truth.json`` → ``{"picks": (n,3), "positions": (n,3), "rotations": (n,3,3)}``
    (px of the tilt series from the tomogram centre; rotations reference → particle)."""
    with open(path) as f:
        d = json.load(f)
    try:
        parts = d["particles"]
        return {"picks": np.asarray(d.get("picks_px") or [p["xyz_px"] for p in parts], float).reshape(-1, 3),
                "positions": np.asarray([p["xyz_px"] for p in parts], float).reshape(-1, 3),
                "rotations": np.asarray([p["matrix"] for p in parts], float).reshape(-1, 3, 3)}
    except (KeyError, TypeError) as exc:
        raise InputError(f"not a demo truth file ({exc})", source=path) from None


def tomogram_of(path3d: str) -> str:
    """Tomogram name of a particle file ``particles3d/<tomo>__<label>.hdf``."""
    return os.path.basename(path3d).split("__")[0]


def match_truth(table: ParticleTable, truth: dict, shrink: float = 1.0, max_px: float = 8.0):
    """True rotations (n,3,3) and positions (n,3) (particle px) of the table's particles.

    ``truth`` maps tomogram name → :func:`read_truth` dict. A particle is matched to the simulated
    pick nearest its ``coord`` (scaled by ``shrink`` to tilt-series px), else to the nearest true
    position; a particle farther than ``max_px`` from both (a false positive of template matching)
    gets NaN rows, which :func:`evaluate_iteration` leaves out and counts.
    """
    rot = np.full((table.n3d, 3, 3), np.nan)
    pos = np.full((table.n3d, 3), np.nan)
    for i in range(table.n3d):
        name = tomogram_of(table.path3d[i])
        if name not in truth:
            raise InputError(f"no truth for tomogram {name!r}", source=table.path3d[i])
        t = truth[name]
        xyz = table.coord[i] * shrink
        for ref in (t["picks"], t["positions"]):
            d = np.linalg.norm(ref - xyz, axis=1)
            k = int(np.argmin(d))
            if d[k] <= max_px:
                rot[i], pos[i] = t["rotations"][k], t["positions"][k] / shrink
                break
    return rot, pos


def evaluate_iteration(table: ParticleTable, state: RefineState, final_map: np.ndarray, truth_map: np.ndarray,
                       apix: float, rot_true: np.ndarray, pos_true: np.ndarray) -> dict:
    """Errors of one iteration's alignments and map against the truth.

    Returns
    -------
    dict (JSON-ready): ``median_orientation_deg``, ``median_translation_px``, ``n_inliers``,
    ``fsc_truth_05_a``, ``fsc_truth_0143_a``, ``fsc_truth`` (list) and ``freq_inv_a`` (list).
    """
    ok = np.isfinite(rot_true).all(axis=(1, 2))  # particles that match a true particle
    ev = evaluate_alignment(state.rot[ok], (table.coord + state.shift)[ok], rot_true[ok], pos_true[ok])
    curve = fsc(np.asarray(final_map, np.float32), truth_in_map_frame(truth_map, ev["G"], ev["g"]))
    return {"median_orientation_deg": ev["median_orientation_deg"],
            "median_translation_px": ev["median_translation_px"], "n_inliers": ev["n_inliers"],
            "n_particles": int(table.n3d), "n_unmatched": int((~ok).sum()),
            "fsc_truth_05_a": resolution(curve, apix, 0.5),
            "fsc_truth_0143_a": resolution(curve, apix, 0.143),
            "freq_inv_a": curve.freq_inv_a(apix).tolist(), "fsc_truth": curve.fsc.tolist(),
            "frame_rotation": np.asarray(ev["G"]).tolist(), "frame_shift_px": np.asarray(ev["g"]).tolist()}
