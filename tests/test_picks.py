"""Peak extraction, non-maximum suppression, thresholds, coordinate conversions, STAR round trip."""

from __future__ import annotations

import naive_tempmatch as naive
import numpy as np
import pytest
import scipy.special

from emflow.geometry import random_rotations
from emflow.sta import picks as pk


def test_nms_matches_numpy_reference(rng):
    xyz = rng.uniform(0, 30, (300, 3))
    score = rng.normal(size=300)
    got = pk.non_max_suppression(xyz, score, 4.0)
    assert list(got) == naive.greedy_nms(xyz, score, 4.0)
    d = np.linalg.norm(xyz[got][:, None] - xyz[got][None], axis=-1) + np.eye(len(got)) * 99
    assert d.min() >= 4.0


def test_find_peaks_positions_edges_volume(rng):
    shape = (20, 40, 40)
    s = rng.normal(0, 0.01, shape).astype(np.float32)
    zz, yy, xx = np.indices(shape)
    truth = np.array([[10, 10, 10], [25, 12, 9], [30, 30, 12], [2, 20, 10]])  # last one at the x edge
    for k, (x, y, z) in enumerate(truth):
        s += (1.0 - 0.1 * k) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / 2.0)
    found = pk.find_peaks(s, 0.3, min_distance_px=5, edge_px=4)
    assert np.allclose(found.xyz, truth[:3]) and np.all(np.diff(found.score) < 0)
    assert np.all(found.volume > 1)
    assert len(pk.find_peaks(s, 0.3, min_distance_px=5, edge_px=4, max_volume=3)) == 0
    assert len(pk.find_peaks(s, 0.3, min_distance_px=5, edge_px=4, max_peaks=2)) == 2


def test_false_alarm_threshold_rickgauer():
    thr = pk.false_alarm_threshold(0.0, 1.0, 1e8, 1.0)
    # P(Z > thr) = F / N for a standard normal
    assert np.isclose(0.5 * scipy.special.erfc(thr / np.sqrt(2)), 1e-8, rtol=1e-6)
    rng = np.random.default_rng(0)
    x = rng.normal(size=10**6)
    assert (x > pk.false_alarm_threshold(0.0, 1.0, 1e6, 10.0)).sum() in range(2, 25)


def test_binned_unbinned_round_trip():
    shape = (32, 128, 128)
    xyz = np.array([[64, 64, 16], [0, 127, 31]], float)
    u = pk.binned_to_unbinned(xyz, shape, 20.96, 5.24)
    assert np.allclose(u[0], 0) and np.allclose(u[1], [-256, 252, 60])
    assert np.allclose(pk.unbinned_to_binned(u, shape, 20.96, 5.24), xyz)


def test_star_round_trip_and_filter(rng):
    shape = (32, 64, 64)
    picks = pk.Picks(rng.integers(4, 28, (6, 3)).astype(float), np.linspace(0.9, 0.4, 6), np.ones(6, np.int64),
                     np.arange(6))
    rots = random_rotations(6, rng)
    table = pk.picks_to_star_table(picks, rots, tomo_name="t", shape_zyx=shape, apix_tomo=20.96, apix_unbin=5.24)
    back, R = pk.picks_from_star_table(table, shape_zyx=shape, apix_tomo=20.96, apix_unbin=5.24)
    assert np.allclose(back.xyz, picks.xyz) and np.allclose(back.score, picks.score)
    assert np.allclose(R, rots, atol=1e-9)
    assert np.allclose(table["rlnCoordinateX"], (picks.xyz[:, 0] - 32) * 4 + 128)
    mask = np.ones(shape)
    mask[:, :, :16] = 0
    f = pk.filter_picks(back, min_score=0.5, mask=mask, max_count=3)
    assert len(f) <= 3 and np.all(f.score >= 0.5) and np.all(f.xyz[:, 0] >= 16)


def test_match_picks_scores():
    truth = np.array([[0, 0, 0], [10, 0, 0], [20, 0, 0]], float)
    found = np.array([[1, 0, 0], [10, 1.5, 0], [40, 0, 0]], float)
    m = pk.match_picks(found, truth, 2.0)
    assert m.true_positives == 2 and np.isclose(m.recall, 2 / 3) and np.isclose(m.precision, 2 / 3)
    assert np.isclose(m.rms_px, np.sqrt((1 + 1.5**2) / 2))
    assert m["n_matched"] == 2 and m["f1"] == m.f1  # the older dict-style names
    with pytest.raises(KeyError):
        m["volume"]


@pytest.mark.parametrize(("n_found", "n_truth"), [(0, 3), (3, 0), (0, 0)])
def test_match_picks_empty_input_scores_zero(n_found, n_truth):
    """Defined behaviour on empty input: nothing to match scores 0 (an empty list never passes a bar)."""
    found = np.arange(3 * n_found, dtype=float).reshape(-1, 3)
    truth = np.arange(3 * n_truth, dtype=float).reshape(-1, 3) + 100
    m = pk.match_picks(found, truth, 2.0)
    assert (m.n_picks, m.n_truth, m.true_positives) == (n_found, n_truth, 0)
    assert (m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0)
    assert m.pairs.shape == (0, 2) and np.isnan(m.rms_px)
    assert m.to_dict()["median_distance_px"] is None


def test_one_match_picks():
    from emflow.demo import scores

    assert scores.match_picks is pk.match_picks and scores.PickScores is pk.PickScores


def test_review_figure_draws(rng):
    tomo = rng.normal(size=(16, 32, 32)).astype(np.float32)
    picks = pk.Picks(np.array([[10.0, 12, 8]]), np.array([0.5]), np.array([3]), np.array([0]))
    fig = pk.review_figure(tomo, picks, tomo, 1.0, 4.0)
    circles = sum(len(ax.patches) for ax in fig.axes)
    assert circles >= 1
