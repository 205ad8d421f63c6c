"""Scoring demo results against the simulation's ground truth (``results/demo_scores.json``).

Pure functions: they take arrays (or the already-parsed truth/FSC data) and return numbers, so the
report script stays a thin adapter. Conventions as in ``docs/CONVENTIONS.md``: positions ``(x, y, z)``
in unbinned px from the tomogram centre, rotations ``R_p`` (reference → particle) as ``(n, 3, 3)``,
FSC frequencies in 1/Å.
"""

from __future__ import annotations

import numpy as np

from emflow.geometry import angle_between, mean_rotation
from emflow.sta.picks import PickScores, match_picks  # the one pick matcher (re-exported)


def orientation_errors(rot_est: np.ndarray, rot_true: np.ndarray, sym_matrices: np.ndarray | None = None) -> np.ndarray:
    """Angular error (degrees) of each estimated orientation, up to the particle's symmetry.

    A particle ``ref(R_p⁻¹ r)`` of a map with symmetry operators ``S`` (``ref(S r) = ref(r)``) is
    the same for every ``R_p · S``, so the error is ``min_S angle(R_est, R_true · S)``.

    Parameters
    ----------
    rot_est, rot_true : (n, 3, 3) arrays
        Estimated and true ``R_p`` (reference → particle).
    sym_matrices : (nsym, 3, 3) array, optional
        Symmetry operators of the reference (identity when omitted).

    Returns
    -------
    ndarray float64 (n,)
        Rotation angle of ``R_est⁻¹ · R_true · S`` minimised over ``S``, in [0, 180].
    """
    a = np.asarray(rot_est, np.float64).reshape(-1, 3, 3)
    b = np.asarray(rot_true, np.float64).reshape(-1, 3, 3)
    if a.shape != b.shape:
        raise ValueError(f"rot_est {a.shape} and rot_true {b.shape} differ in shape")
    sym = np.eye(3)[None] if sym_matrices is None else np.asarray(sym_matrices, np.float64).reshape(-1, 3, 3)
    # trace(Aᵀ B S) for every particle and operator; angle = arccos((trace − 1) / 2)
    rel = np.einsum("nji,njk->nik", a, b)  # Aᵀ B
    traces = np.einsum("nik,ski->ns", rel, sym)
    cos = np.clip((traces.max(axis=1) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def template_frame(rot_est: np.ndarray, rot_true: np.ndarray, sym_matrices: np.ndarray | None = None,
                   inlier_deg: float = 15.0) -> np.ndarray:
    """The template's own frame ``G`` (3, 3): the consensus rotation with ``R_true ≈ R_est · G · S``.

    A template made without the truth (e.g. the SGD initial model) sits in an arbitrary frame, so
    every pick's orientation differs from the truth by the same ``G`` (up to the symmetry ``S``).
    ``G`` is the chordal mean of the candidates ``R_est⁻¹ R_true S`` that agree, within
    ``inlier_deg``, with the candidate most others agree with (a robust consensus: wrong picks and
    flipped orientations do not move it).

    Parameters
    ----------
    rot_est, rot_true : (n, 3, 3) arrays
        Matched estimated and true ``R_p`` (reference → particle), n ≥ 1.
    sym_matrices : (nsym, 3, 3) array, optional
        Symmetry operators of the template (identity when omitted).
    """
    a = np.asarray(rot_est, np.float64).reshape(-1, 3, 3)
    b = np.asarray(rot_true, np.float64).reshape(-1, 3, 3)
    sym = np.eye(3)[None] if sym_matrices is None else np.asarray(sym_matrices, np.float64).reshape(-1, 3, 3)
    cand = np.einsum("nji,njk,skl->nsil", a, b, sym)  # (n, nsym, 3, 3): Aᵀ B S
    seeds = cand.reshape(-1, 3, 3)
    # per particle, the angle of its closest symmetry mate to each seed: the seed most agree with wins
    support = [int((angle_between(cand, g).min(axis=1) < inlier_deg).sum()) for g in seeds]
    ang = angle_between(cand, seeds[int(np.argmax(support))])  # (n, nsym)
    inl = ang.min(axis=1) < inlier_deg
    return mean_rotation(cand[np.flatnonzero(inl), ang.argmin(axis=1)[inl]])


def fsc_crossing(freq_inv_a: np.ndarray, fsc: np.ndarray, threshold: float) -> float | None:
    """Resolution (Å) where an FSC curve first falls below ``threshold``, linearly interpolated.

    Parameters
    ----------
    freq_inv_a : (n,) array
        Spatial frequency of each shell (1/Å), increasing, without the DC shell.
    fsc : (n,) array
        FSC per shell.

    Returns
    -------
    float or None
        ``1/f`` at the crossing; the last shell's resolution when the curve never drops below the
        threshold (the map is at least that good); ``None`` when even the first shell is below.
    """
    f = np.asarray(freq_inv_a, np.float64)
    c = np.asarray(fsc, np.float64)
    below = np.flatnonzero(c < threshold)
    if not len(below):
        return float(1.0 / f[-1])
    i = int(below[0])
    if i == 0:
        return None
    # linear interpolation between shells i-1 (above) and i (below)
    w = (c[i - 1] - threshold) / (c[i - 1] - c[i])
    return float(1.0 / (f[i - 1] + w * (f[i] - f[i - 1])))


def mirror_map(vol: np.ndarray) -> np.ndarray:
    """The map's mirror image ``z → −z`` about the box centre ``n//2`` (the other hand)."""
    return np.roll(np.asarray(vol)[::-1], 1, axis=0)  # index n//2 stays at n//2


def map_vs_truth(vol: np.ndarray, truth: np.ndarray, apix: float, sym_matrices: np.ndarray | None = None,
                 bar_px: float = 2.5, band=(0.1, 0.3)) -> dict:
    """How a map in the truth's frame compares with the truth: resolution, hand and symmetry.

    Parameters
    ----------
    vol, truth : (n, n, n) arrays on the same grid and in the same frame.
    apix : float
        Å per pixel.
    sym_matrices : (nsym, 3, 3) array, optional
        The structure's own symmetry: ``symmetry_fsc`` is the mean FSC over ``band`` of the map with
        its symmetrised copy (``truth_symmetry_fsc`` the same for the truth: the value a perfectly
        symmetric map reaches through the interpolation of symmetrising). A map refined in c1 that
        found the structure's symmetry comes close to it.
    bar_px : float
        ``fsc_at_bar`` is the FSC (linearly interpolated) at the resolution ``bar_px`` pixels.
    band : (lo, hi) cycles/px
        Shells over which the hand and symmetry checks average the FSC.

    Returns
    -------
    dict: ``fsc_truth_05_a``, ``fsc_truth_0143_a`` (Å, :func:`fsc_crossing`), ``fsc_truth_05_px``,
    ``fsc_at_bar`` with ``bar_px``, ``hand_fsc_true`` / ``hand_fsc_mirror`` (mean FSC over ``band``
    against the truth and its mirror image) and ``hand_correct``; the symmetry entries when asked.
    """
    from emflow.filters import apply_symmetry
    from emflow.fsc import fsc

    c = fsc(vol, truth)
    f_inv_a = c.freq[1:] / apix
    inband = (c.freq >= band[0]) & (c.freq <= band[1])
    out = {"fsc_truth_05_a": fsc_crossing(f_inv_a, c.fsc[1:], 0.5),
           "fsc_truth_0143_a": fsc_crossing(f_inv_a, c.fsc[1:], 0.143),
           "bar_px": bar_px, "fsc_at_bar": float(np.interp(1.0 / bar_px, c.freq, c.fsc)),
           "hand_fsc_true": float(c.fsc[inband].mean()),
           "hand_fsc_mirror": float(fsc(vol, mirror_map(truth)).fsc[inband].mean())}
    out["fsc_truth_05_px"] = None if out["fsc_truth_05_a"] is None else out["fsc_truth_05_a"] / apix
    out["hand_correct"] = out["hand_fsc_true"] > out["hand_fsc_mirror"]
    if sym_matrices is not None:
        out["symmetry_fsc"] = float(fsc(vol, apply_symmetry(vol, sym_matrices)).fsc[inband].mean())
        out["truth_symmetry_fsc"] = float(fsc(truth, apply_symmetry(truth, sym_matrices)).fsc[inband].mean())
    return out


def fsc_summary(freq_inv_a: np.ndarray, fsc: np.ndarray, thresholds=(0.5, 0.143)) -> dict:
    """``{"fsc_0.5_A": ..., "fsc_0.143_A": ...}`` crossings of one curve (see :func:`fsc_crossing`)."""
    return {f"fsc_{thr:g}_A": fsc_crossing(freq_inv_a, fsc, thr) for thr in thresholds}


def _match_truth(picks_xyz: np.ndarray, truth: dict) -> tuple["PickScores", np.ndarray]:
    """Picks matched to the truth's particles (:func:`match_picks` within ``radius_px``) and the
    true rotations ``R_p`` (n_truth, 3, 3)."""
    parts = truth.get("particles", [])
    t_xyz = np.array([p["xyz_px"] for p in parts], np.float64).reshape(-1, 3)
    t_rot = np.array([p["matrix"] for p in parts], np.float64).reshape(-1, 3, 3)
    return match_picks(picks_xyz, t_xyz, tolerance_px=float(truth["radius_px"])), t_rot


def matched_rotations(picks_xyz: np.ndarray, picks_rot: np.ndarray, truth: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(R_est, R_true)``, each (tp, 3, 3), of the picks matched to true particles (as in
    :func:`score_tomogram_picks`): the input of :func:`template_frame`."""
    res, t_rot = _match_truth(picks_xyz, truth)
    return np.asarray(picks_rot, np.float64).reshape(-1, 3, 3)[res.pairs[:, 0]], t_rot[res.pairs[:, 1]]


def score_tomogram_picks(picks_xyz: np.ndarray, picks_rot: np.ndarray | None, truth: dict,
                         sym_matrices: np.ndarray | None = None,
                         frame: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Score one tomogram's picks against its simulation truth.

    Parameters
    ----------
    picks_xyz : (n, 3) array
        Picks (x, y, z) in unbinned px from the tomogram centre.
    picks_rot : (n, 3, 3) array or None
        Their orientations ``R_p`` (template → particle); ``None`` skips the orientation score.
    truth : dict
        The demo's ``{tomo}_truth.json`` (``particles[i]["xyz_px"]``, ``["matrix"]``, ``radius_px``),
        positions in the same frame and pixel size as ``picks_xyz``.
    sym_matrices : (nsym, 3, 3) array, optional
        Symmetry of the template (orientations equal up to it count as equal).
    frame : (3, 3) array, optional
        The template's own frame ``G`` (:func:`template_frame`): errors are those of ``R_est · G``.

    Returns
    -------
    summary : dict
        :meth:`PickScores.to_dict` plus ``median_orientation_error_deg`` (``None`` without matches).
    errors_deg : ndarray (tp,)
        Orientation error of every matched pick.
    """
    res, t_rot = _match_truth(picks_xyz, truth)
    errors = np.zeros(0)
    if picks_rot is not None and res.true_positives:
        est = np.asarray(picks_rot, np.float64)[res.pairs[:, 0]]
        if frame is not None:
            est = est @ np.asarray(frame, np.float64)
        errors = orientation_errors(est, t_rot[res.pairs[:, 1]], sym_matrices)
    out = res.to_dict()
    out["median_orientation_error_deg"] = float(np.median(errors)) if len(errors) else None
    return out, errors


def read_tomogram_picks(truth_path: str, picks_path: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """(truth dict, picks xyz ``(n, 3)`` unbinned px from the centre, R_p ``(n, 3, 3)``) of one demo
    tomogram: its truth json and the picks STAR (RELION 5 centred Å, rlnAngle*)."""
    import json
    import pathlib

    from emflow.geometry import relion_to_matrix
    from emflow.io import read_star

    truth = json.loads(pathlib.Path(truth_path).read_text())
    table = next(iter(read_star(picks_path).values()), {})
    truth.setdefault("tomogram", pathlib.Path(truth_path).name)
    if "rlnCenteredCoordinateXAngst" not in table:
        return truth, np.zeros((0, 3)), np.zeros((0, 3, 3))
    xyz = np.stack([np.asarray(table[f"rlnCenteredCoordinate{a}Angst"], np.float64) for a in "XYZ"], 1)
    rots = relion_to_matrix(*(np.asarray(table[k], np.float64) for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    return truth, xyz / float(truth["apix"]), rots.reshape(-1, 3, 3)


def demo_scores(truth_paths, picks_paths, spa_fsc_truth, spa_eval, spt_eval, sym: str) -> dict:
    """The demo's scores against its truth (``results/demo_scores.json``): picks per tomogram (one-to-one
    match, orientation errors after the template's own frame), the final SPA and subtomogram maps' FSC
    against the true maps (files of the spa_fsc and spt_refine_truth_summary jobs)."""
    import json
    import pathlib

    from emflow.geometry import get_symmetry
    from emflow.io import read_fsc_txt

    sym_matrices = get_symmetry(sym).matrices
    result: dict = {"picks": {}, "orientation_errors_deg": {}, "maps": {},
                    "notes": "picks: one-to-one (Hungarian) match within the particle radius; orientation error up to "
                             f"the template symmetry {sym}, after the template's own frame (template_frame_deg, "
                             "fitted to all matches) is removed; maps: FSC vs the true map, Å at 0.5 and 0.143"}
    tomos = [read_tomogram_picks(t, p) for t, p in zip(truth_paths, picks_paths)]
    # the template (e.g. the SGD model) has its own frame, common to all tomograms: found from all matches
    pairs = [matched_rotations(xyz, rots, truth) for truth, xyz, rots in tomos]
    est, true = (np.concatenate([p[k] for p in pairs]) if pairs else np.zeros((0, 3, 3)) for k in (0, 1))
    frame = template_frame(est, true, sym_matrices) if len(est) else np.eye(3)
    result["template_frame_deg"] = float(orientation_errors(frame[None], np.eye(3)[None])[0])
    for truth, xyz, rots in tomos:
        name = truth["tomogram"]
        summary, errors = score_tomogram_picks(xyz, rots, truth, sym_matrices, frame=frame)
        result["picks"][name] = summary
        result["orientation_errors_deg"][name] = np.round(errors, 3).tolist()
        if truth.get("picks_px"):  # the demo's simulated manual picks: a check of the frames used above
            manual, _ = score_tomogram_picks(np.asarray(truth["picks_px"]), None, truth)
            result.setdefault("manual_picks", {})[name] = manual
    keys = ("fsc_truth_05_px", "bar_px", "fsc_at_bar", "hand_correct", "hand_fsc_true", "hand_fsc_mirror",
            "symmetry_fsc", "truth_symmetry_fsc")
    for path, eval_path in zip(spa_fsc_truth, spa_eval):
        freq, fsc = read_fsc_txt(path)
        ev = json.loads(pathlib.Path(eval_path).read_text())
        result["maps"]["spa_final"] = fsc_summary(freq, fsc) | {"file": path, **{k: ev.get(k) for k in keys}}
    for path in spt_eval:
        final = json.loads(pathlib.Path(path).read_text())["final"]
        result["maps"]["spt_final"] = {"fsc_0.5_A": final["fsc_truth_05_a"], "fsc_0.143_A": final["fsc_truth_0143_a"],
                                       "gold_0.143_A": final["gold_0143_a"], "file": path,
                                       "median_orientation_deg": final["median_orientation_deg"],
                                       "median_translation_px": final["median_translation_px"]}
    return result
