"""Peaks of a template-matching score map → particle picks; filtering, scoring, review.

Coordinates: peaks are found at voxel indices of the binned tomogram, ``(x, y, z)`` from
the corner. EMAN2's info json stores ``boxes_3d`` in **unbinned pixels from the tomogram
centre** (spec §3.0/§3.1): ``x_unbin = (x_bin − nx//2) · apix_tomo / apix_unbin``.
RELION ≤ 4 STAR files use unbinned pixels from the corner (``x_unbin + NX_unbin//2``,
``NX_unbin = nx · apix_tomo / apix_unbin``) and RELION 5 centred Ångström; both are written.

Thresholds (documented choice):

* ``"sigma"``: ``median + k·σ`` of the best-score map, σ = 1.4826·MAD over the searched
  voxels — EMAN-like, robust against the particles themselves;
* ``"false_alarms"``: Rickgauer et al. (2017), as in pytom-match-pick: the per-orientation
  scores of noise are ~Normal(μ, σ) (μ, σ measured over all voxels × orientations during
  the search); with ``N = n_voxels · n_orientations`` tests the threshold at which ``F``
  false positives are expected is ``μ + σ·√2·erfc⁻¹(2F/N)``. Neighbouring voxels and
  orientations are correlated, so the true number of independent tests is smaller and
  the threshold is conservative.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage
import scipy.optimize
import scipy.spatial
import scipy.special

from emflow._numba import jit


@dataclasses.dataclass
class Picks:
    """Particle picks in a binned tomogram.

    Attributes
    ----------
    xyz : (n, 3) float64
        Voxel coordinates (x, y, z) from the corner of the binned tomogram.
    score : (n,) float64
        Peak score (the score map's value).
    volume : (n,) int64
        Voxels of the connected component above threshold that holds the peak.
    rot_index : (n,) int64
        Index of the best orientation (−1 if unknown).
    """

    xyz: np.ndarray
    score: np.ndarray
    volume: np.ndarray
    rot_index: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    def take(self, idx) -> Picks:
        """Subset (index array or boolean mask), order kept."""
        return Picks(self.xyz[idx], self.score[idx], self.volume[idx], self.rot_index[idx])

    @staticmethod
    def empty() -> Picks:
        return Picks(np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))


# ----------------------------------------------------------------------------- thresholds


def robust_background(scores: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """``(median, 1.4826·MAD)`` of ``scores`` over ``valid`` voxels (the bulk is background)."""
    v = np.asarray(scores)[valid] if valid is not None else np.asarray(scores).ravel()
    if v.size == 0:
        return 0.0, 0.0
    med = float(np.median(v))
    return med, float(1.4826 * np.median(np.abs(v - med)))


def false_alarm_threshold(mean: float, std: float, n_tests: float, n_false_alarms: float = 1.0) -> float:
    """Score above which ``n_false_alarms`` noise peaks are expected in ``n_tests`` Gaussian tests.

    ``mean + std·√2·erfc⁻¹(2F/N)`` (Rickgauer et al. 2017, eLife 6:e25648).
    """
    if n_tests <= 0 or std <= 0:
        raise ValueError("n_tests and std must be positive")
    p = min(2.0 * n_false_alarms / n_tests, 1.0)
    return float(mean + std * np.sqrt(2.0) * scipy.special.erfcinv(p))


# ----------------------------------------------------------------------------- peaks


@jit
def _greedy_nms(xyz, min_dist2, max_keep):
    """Indices kept by greedy suppression of ``xyz`` (sorted best-first) within √min_dist2."""
    n = xyz.shape[0]
    kept = np.empty(n, np.int64)
    nk = 0
    for i in range(n):
        ok = True
        for j in range(nk):
            k = kept[j]
            d2 = 0.0
            for a in range(3):
                d = xyz[i, a] - xyz[k, a]
                d2 += d * d
            if d2 < min_dist2:
                ok = False
                break
        if ok:
            kept[nk] = i
            nk += 1
            if nk == max_keep:
                break
    return kept[:nk]


def non_max_suppression(xyz: np.ndarray, score: np.ndarray, min_distance_px: float,
                        max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: walk peaks best-first, drop any within ``min_distance_px``
    (Euclidean, px) of one already kept. Returns kept indices into the inputs, best first."""
    order = np.argsort(-np.asarray(score), kind="stable")
    pts = np.ascontiguousarray(np.asarray(xyz, np.float64)[order])
    keep = _greedy_nms(pts, float(min_distance_px) ** 2, int(max_keep or len(order) or 1))
    return order[keep]


def edge_mask(shape_zyx: tuple[int, int, int], edge_px: int) -> np.ndarray:
    """Boolean (nz, ny, nx): True at least ``edge_px`` voxels from every face."""
    m = np.zeros(shape_zyx, bool)
    e = int(edge_px)
    if all(n > 2 * e for n in shape_zyx):
        m[e:shape_zyx[0] - e, e:shape_zyx[1] - e, e:shape_zyx[2] - e] = True
    return m


def find_peaks(
    scores: np.ndarray,
    threshold: float,
    *,
    min_distance_px: float,
    max_peaks: int | None = None,
    edge_px: int = 0,
    mask: np.ndarray | None = None,
    best_index: np.ndarray | None = None,
    min_volume: int = 0,
    max_volume: int | None = None,
) -> Picks:
    """Local maxima of a score map above ``threshold``, with EMAN-like filters.

    Parameters
    ----------
    scores : (nz, ny, nx) float32
    threshold : float
        Minimum peak score.
    min_distance_px : float
        Greedy non-maximum suppression distance (binned px).
    max_peaks : int, optional
        Keep at most this many (best first).
    edge_px : int
        Exclude peaks closer than this to any face (use half the template box).
    mask : (nz, ny, nx), optional
        Peaks where ``mask ≤ 0.5`` are dropped.
    best_index : (nz, ny, nx) int, optional
        Best-orientation index map; copied into :attr:`Picks.rot_index`.
    min_volume, max_volume : int
        Connected component (6-connectivity, voxels above ``threshold``) volume limits, as
        EMAN's ``--minvol/--maxvol``; small components are noise spikes, huge ones gold/edges.

    Returns
    -------
    Picks, sorted by descending score.
    """
    s = np.asarray(scores, np.float32)
    above = s > threshold
    allowed = edge_mask(s.shape, edge_px)
    if mask is not None:
        allowed &= np.asarray(mask) > 0.5
    labels, _ = scipy.ndimage.label(above)
    sizes = np.bincount(labels.ravel())
    local_max = s == scipy.ndimage.maximum_filter(s, size=3, mode="nearest")
    cand = above & allowed & local_max
    z, y, x = np.nonzero(cand)
    vol = sizes[labels[z, y, x]]
    ok = vol >= min_volume
    if max_volume is not None:
        ok &= vol <= max_volume
    z, y, x, vol = z[ok], y[ok], x[ok], vol[ok]
    if len(z) == 0:
        return Picks.empty()
    xyz = np.stack([x, y, z], axis=1).astype(np.float64)
    sc = s[z, y, x].astype(np.float64)
    keep = non_max_suppression(xyz, sc, min_distance_px, max_peaks)
    rot = best_index[z, y, x].astype(np.int64) if best_index is not None else np.full(len(z), -1, np.int64)
    return Picks(xyz[keep], sc[keep], vol[keep].astype(np.int64), rot[keep])


def filter_picks(picks: Picks, *, min_score: float | None = None, min_distance_px: float | None = None,
                 mask: np.ndarray | None = None, max_count: int | None = None) -> Picks:
    """Re-filter picks: by score, by distance (greedy, best first), by a mask, then the top ``max_count``."""
    keep = np.ones(len(picks), bool)
    if min_score is not None:
        keep &= picks.score >= min_score
    if mask is not None and len(picks):
        ijk = np.clip(np.rint(picks.xyz).astype(int), 0, np.array(mask.shape[::-1]) - 1)
        keep &= np.asarray(mask)[ijk[:, 2], ijk[:, 1], ijk[:, 0]] > 0.5
    out = picks.take(np.nonzero(keep)[0])
    order = (non_max_suppression(out.xyz, out.score, min_distance_px) if min_distance_px
             else np.argsort(-out.score, kind="stable"))
    if max_count is not None:
        order = order[:max_count]
    return out.take(order)


# ----------------------------------------------------------------------------- coordinates


def binned_to_unbinned(xyz: np.ndarray, shape_zyx: tuple[int, int, int], apix_tomo: float,
                       apix_unbin: float) -> np.ndarray:
    """Binned voxel coordinates from the corner → unbinned px from the tomogram centre (EMAN2)."""
    centre = np.array([shape_zyx[2] // 2, shape_zyx[1] // 2, shape_zyx[0] // 2], np.float64)
    return (np.asarray(xyz, np.float64) - centre) * (apix_tomo / apix_unbin)


def unbinned_to_binned(xyz_unbin: np.ndarray, shape_zyx: tuple[int, int, int], apix_tomo: float,
                       apix_unbin: float) -> np.ndarray:
    """Inverse of :func:`binned_to_unbinned`."""
    centre = np.array([shape_zyx[2] // 2, shape_zyx[1] // 2, shape_zyx[0] // 2], np.float64)
    return np.asarray(xyz_unbin, np.float64) * (apix_unbin / apix_tomo) + centre


# ----------------------------------------------------------------------------- scoring


@dataclasses.dataclass(frozen=True)
class PickScores:
    """Picks matched one-to-one to true positions.

    Attributes
    ----------
    n_picks, n_truth, true_positives : int
    precision, recall, f1 : float
        ``tp/n_picks``, ``tp/n_truth`` and their harmonic mean. Empty input scores 0: no picks gives
        precision 0, no truth gives recall 0, and f1 is 0 unless both are positive, so an empty
        pick list never passes a bar.
    pairs : ndarray int (tp, 2)
        ``(pick index, truth index)`` of every match.
    distances_px : ndarray float (tp,)
        Distance of each matched pick from its true position (unbinned px).
    tolerance_px : float
        A pick counts only when it lies within this distance of its matched true position.
    """

    n_picks: int
    n_truth: int
    true_positives: int
    precision: float
    recall: float
    f1: float
    pairs: np.ndarray
    distances_px: np.ndarray
    tolerance_px: float

    @property
    def rms_px(self) -> float:
        """RMS distance of the matched picks from their true positions (NaN without matches)."""
        d = self.distances_px
        return float(np.sqrt(np.mean(d * d))) if len(d) else float("nan")

    _KEYS = {"n_found": "n_picks", "n_true": "n_truth", "n_matched": "true_positives"}

    def __getitem__(self, key: str):
        """Dict-style access (``m["f1"]``, and the older names ``n_found``, ``n_true``, ``n_matched``)."""
        name = self._KEYS.get(key, key)
        if name not in self._KEYS.values() and name not in ("precision", "recall", "f1", "pairs", "distances_px",
                                                            "tolerance_px", "rms_px"):
            raise KeyError(key)
        return getattr(self, name)

    def to_dict(self) -> dict:
        """JSON-ready summary (without the per-pair arrays, plus the median matched distance)."""
        return {
            "n_picks": self.n_picks, "n_truth": self.n_truth, "true_positives": self.true_positives,
            "false_positives": self.n_picks - self.true_positives,
            "false_negatives": self.n_truth - self.true_positives,
            "precision": self.precision, "recall": self.recall, "f1": self.f1,
            "tolerance_px": self.tolerance_px,
            "median_distance_px": float(np.median(self.distances_px)) if len(self.distances_px) else None,
        }


def match_picks(picks_xyz: np.ndarray, truth_xyz: np.ndarray, tolerance_px: float) -> PickScores:
    """Score picks against true positions with an optimal one-to-one assignment.

    A greedy nearest-neighbour match can pair two picks with one particle or steal a particle from
    the pick that needed it; the Hungarian assignment (minimum total distance, pairs farther than
    ``tolerance_px`` forbidden) gives each particle at most one pick and maximises the matches.

    Parameters
    ----------
    picks_xyz : (n, 3) array
        Picked positions (x, y, z), unbinned px from the tomogram centre.
    truth_xyz : (m, 3) array
        True positions in the same frame.
    tolerance_px : float
        Largest distance (unbinned px) at which a pick still counts as finding the particle;
        the demo uses the particle radius.
    """
    p = np.asarray(picks_xyz, np.float64).reshape(-1, 3)
    t = np.asarray(truth_xyz, np.float64).reshape(-1, 3)
    if tolerance_px <= 0:
        raise ValueError(f"tolerance_px must be > 0, got {tolerance_px}")
    pairs = np.zeros((0, 2), np.int64)
    dist = np.zeros(0)
    if len(p) and len(t):
        d = np.linalg.norm(p[:, None, :] - t[None, :, :], axis=-1)
        # Forbidden pairs get a cost larger than any allowed total, so they are only used when
        # nothing else is possible, and are then dropped below.
        big = tolerance_px * (len(p) + len(t) + 1) * 10.0
        rows, cols = scipy.optimize.linear_sum_assignment(np.where(d <= tolerance_px, d, big))
        ok = d[rows, cols] <= tolerance_px
        pairs = np.stack([rows[ok], cols[ok]], axis=1).astype(np.int64)
        dist = d[rows[ok], cols[ok]]
    tp = len(pairs)
    precision = tp / len(p) if len(p) else 0.0
    recall = tp / len(t) if len(t) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return PickScores(len(p), len(t), tp, float(precision), float(recall), float(f1), pairs, dist,
                      float(tolerance_px))



# ----------------------------------------------------------------------------- review


def review_figure(tomogram: np.ndarray, picks: Picks, scores: np.ndarray, threshold: float,
                  radius_px: float, title: str = "", n_slices: int = 4, searched: np.ndarray | None = None):
    """Matplotlib figure for checking picks by eye.

    Top row: ``n_slices`` z-slabs (5 slices averaged) through the tomogram with every pick
    whose sphere (``radius_px``) cuts the slice drawn as a circle of the cut's radius,
    colour = score. Bottom: histogram of the score map (log counts) with the threshold line.
    Returns the figure (the caller saves it).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    vol = np.asarray(tomogram, np.float32)
    nz = vol.shape[0]
    zs = np.linspace(0, nz - 1, n_slices + 2)[1:-1].round().astype(int)
    fig = plt.figure(figsize=(4 * n_slices, 8.2), layout="constrained")
    grid = fig.add_gridspec(2, n_slices, height_ratios=[vol.shape[1] / vol.shape[2] * 1.0, 0.55])
    cmap = plt.get_cmap("autumn")
    smin, smax = (picks.score.min(), picks.score.max()) if len(picks) else (0.0, 1.0)
    for k, z in enumerate(zs):
        ax = fig.add_subplot(grid[0, k])
        slab = vol[max(z - 2, 0):z + 3].mean(axis=0)
        lo, hi = np.percentile(slab, [1, 99])
        ax.imshow(slab, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        dz = np.abs(picks.xyz[:, 2] - z)
        for (x, y, _), s, d in zip(picks.xyz, picks.score, dz):
            if d < radius_px:
                c = cmap(0.0 if smax == smin else (s - smin) / (smax - smin))
                ax.add_patch(Circle((x, y), np.sqrt(radius_px**2 - d**2), fill=False, lw=1.2, color=c))
        ax.set_title(f"z = {z} (n = {int((dz < radius_px).sum())})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, :])
    vals = np.asarray(scores)[searched] if searched is not None else np.asarray(scores).ravel()
    ax.hist(vals, bins=200, log=True, color="0.4")
    ax.axvline(threshold, color="r", lw=1.5, label=f"threshold {threshold:.4g}")
    if len(picks):
        ax.plot(picks.score, np.ones(len(picks)), "|", color="orange", ms=12, label=f"{len(picks)} picks")
    ax.set_xlabel("best score")
    ax.set_ylabel("voxels")
    ax.legend(fontsize=8)
    fig.suptitle(title or "template-matching picks", fontsize=11)
    return fig


# ----------------------------------------------------------------------------- STAR


def picks_to_star_table(picks: Picks, rotations: np.ndarray | None, *, tomo_name: str,
                        shape_zyx: tuple[int, int, int], apix_tomo: float, apix_unbin: float) -> dict:
    """RELION particle table: unbinned corner px (RELION ≤ 4), centred Å (RELION 5), angles, score.

    ``rotations[rot_index]`` is ``R_p`` (template → particle), written as
    ``rlnAngleRot/Tilt/Psi`` via :func:`emflow.geometry.matrix_to_relion`.
    """
    from emflow.geometry import matrix_to_relion

    centred = binned_to_unbinned(picks.xyz, shape_zyx, apix_tomo, apix_unbin)
    scale = apix_tomo / apix_unbin
    full_unbin = np.array([shape_zyx[2], shape_zyx[1], shape_zyx[0]]) * scale
    corner = centred + np.floor(full_unbin / 2)
    n = len(picks)
    if rotations is not None and n and np.all(picks.rot_index >= 0):
        ang = matrix_to_relion(np.asarray(rotations)[picks.rot_index]).reshape(n, 3)
    else:
        ang = np.zeros((n, 3))
    return {
        "rlnTomoName": [tomo_name] * n,
        "rlnCoordinateX": corner[:, 0], "rlnCoordinateY": corner[:, 1], "rlnCoordinateZ": corner[:, 2],
        "rlnCenteredCoordinateXAngst": centred[:, 0] * apix_unbin,
        "rlnCenteredCoordinateYAngst": centred[:, 1] * apix_unbin,
        "rlnCenteredCoordinateZAngst": centred[:, 2] * apix_unbin,
        "rlnAngleRot": ang[:, 0], "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2],
        "rlnAutopickFigureOfMerit": picks.score,
    }


def picks_from_star_table(table, *, shape_zyx: tuple[int, int, int], apix_tomo: float,
                          apix_unbin: float) -> tuple[Picks, np.ndarray]:
    """Inverse of :func:`picks_to_star_table`: ``(Picks in binned voxels, R_p (n, 3, 3))``."""
    from emflow.geometry import relion_to_matrix

    n = len(table["rlnCoordinateX"])
    if n == 0:
        return Picks.empty(), np.zeros((0, 3, 3))
    scale = apix_tomo / apix_unbin
    full_unbin = np.array([shape_zyx[2], shape_zyx[1], shape_zyx[0]]) * scale
    corner = np.stack([np.asarray(table[f"rlnCoordinate{a}"], np.float64) for a in "XYZ"], axis=1)
    xyz = unbinned_to_binned(corner - np.floor(full_unbin / 2), shape_zyx, apix_tomo, apix_unbin)
    score = np.asarray(table.get("rlnAutopickFigureOfMerit", np.zeros(n)), np.float64)
    rots = relion_to_matrix(*(np.asarray(table[k], np.float64) for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    return Picks(xyz, score, np.zeros(n, np.int64), np.arange(n, dtype=np.int64)), rots.reshape(n, 3, 3)
