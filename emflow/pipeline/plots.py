"""Figures for the Snakemake report (matplotlib, Agg; no pyplot global state).

Every function draws one figure from arrays it is given and saves it (PNG) to the path it is given
through :func:`emflow.io.atomic_write`, so a killed job never leaves half a picture. Conventions:
volumes ``(nz, ny, nx)`` float32, FSC frequencies in 1/Å, times in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from emflow.io import atomic_write  # noqa: E402

_DPI = 100


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)


def _grey_limits(images: Sequence[np.ndarray]) -> tuple[float, float]:
    """1st–99th percentile over all images (robust to a few hot voxels)."""
    vals = np.concatenate([np.asarray(i, np.float32).ravel() for i in images])
    lo, hi = np.percentile(vals, [1, 99]) if vals.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def map_overview(vol: np.ndarray, apix: float, path: str | os.PathLike, title: str) -> dict:
    """Central XY, XZ, YZ sections and the projection along z of a map.

    Parameters
    ----------
    vol : (nz, ny, nx) array
        The map; sections go through the box centre ``n // 2`` (the rotation centre).
    apix : float
        Voxel size (Å), printed in the title.
    path : path
        Output PNG.
    title : str

    Returns
    -------
    dict
        ``{"std": ..., "min": ..., "max": ...}`` of the map (for the log).
    """
    v = np.asarray(vol, np.float32)
    if v.ndim != 3:
        raise ValueError(f"vol must be 3D (nz, ny, nx), got shape {v.shape}")
    nz, ny, nx = v.shape
    sections = {"XY (z centre)": v[nz // 2], "XZ (y centre)": v[:, ny // 2, :], "YZ (x centre)": v[:, :, nx // 2]}
    lo, hi = _grey_limits(list(sections.values()))
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 4)
    for ax, (name, img) in zip(axes, sections.items()):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    proj = v.sum(axis=0, dtype=np.float64)
    axes[3].imshow(proj, cmap="gray", origin="lower", interpolation="nearest")
    axes[3].set_title("projection along z", fontsize=9)
    axes[3].set_xticks([])
    axes[3].set_yticks([])
    fig.suptitle(f"{title}: {nx}×{ny}×{nz} at {apix:.3g} Å/px")
    _save(fig, path)
    return {"std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def fsc_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | os.PathLike, title: str,
               thresholds: Sequence[float] = (0.5, 0.143)) -> None:
    """FSC curves on one axis with the threshold lines.

    Parameters
    ----------
    curves : list of (label, freq_inv_a, fsc)
        Frequencies in 1/Å (the x axis is labelled in Å too).
    """
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for label, f, c in curves:
        ax.plot(f, c, label=label, lw=1.3)
    for thr, ls in zip(thresholds, ("-", "--", ":")):
        ax.axhline(thr, color="grey", lw=0.7, ls=ls, label=f"FSC = {thr:g}")
    ax.set(xlabel="spatial frequency (1/Å)", ylabel="FSC", ylim=(-0.1, 1.02), title=title)
    if curves:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no FSC curves", ha="center", transform=ax.transAxes)
    _save(fig, path)


def runtimes(records: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Horizontal bar chart of wall time per rule (sum over that rule's jobs), longest at the top.

    Parameters
    ----------
    records : list of dict
        One per job: ``{"stage": str, "rule": str, "job": str, "seconds": float, "max_rss_mb": float}``
        (see :func:`emflow.pipeline.benchmarks.read_benchmark_tables`).
    """
    totals: dict[str, list] = {}
    for r in records:
        t = totals.setdefault(f"{r['stage']}/{r['rule']}", [0.0, 0, 0.0])
        t[0] += float(r["seconds"])
        t[1] += 1
        t[2] = max(t[2], float(r.get("max_rss_mb") or 0.0))
    order = sorted(totals, key=lambda k: totals[k][0])
    fig = Figure(figsize=(9, 1.2 + 0.32 * max(1, len(order))), layout="constrained")
    ax = fig.subplots()
    secs = [totals[k][0] for k in order]
    ax.barh(range(len(order)), secs, color="tab:blue")
    ax.set_yticks(range(len(order)), order, fontsize=8)
    for i, k in enumerate(order):
        s, n, rss = totals[k]
        ax.text(s, i, f"  {s:.1f} s, {n} job{'s' if n > 1 else ''}, ≤{rss:.0f} MB", va="center", fontsize=7)
    total = sum(secs)
    ax.set(xlabel="wall time (s, summed over jobs)", title=f"Run time per rule (total {total:.0f} s of jobs)")
    ax.set_xlim(0, max(secs + [1.0]) * 1.45)
    _save(fig, path)


def demo_scores(scores: Mapping, path: str | os.PathLike) -> None:
    """Summary picture of ``demo_scores.json``: pick precision/recall/F1 per tomogram, orientation
    errors and FSC-vs-truth resolutions of the final maps."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    ax_p, ax_o, ax_f = fig.subplots(1, 3)
    picks = scores.get("picks", {})
    names = list(picks)
    width = 0.25
    for k, key in enumerate(("precision", "recall", "f1")):
        ax_p.bar(np.arange(len(names)) + (k - 1) * width, [picks[n][key] for n in names], width, label=key)
    ax_p.set_xticks(range(len(names)), names, fontsize=8)
    ax_p.set(ylim=(0, 1.05), title="picks vs truth", ylabel="fraction")
    ax_p.legend(fontsize=7)
    drawn = 0
    errors = scores.get("orientation_errors_deg", {})
    top = max([30.0] + [float(np.max(v)) for v in errors.values() if len(v)])  # zoom on small errors
    for name, values in errors.items():
        if len(values):
            ax_o.hist(values, bins=np.linspace(0, min(180.0, top), 31), alpha=0.6,
                      label=f"{name}: median {np.median(values):.1f}°")
            drawn += 1
    ax_o.set(xlabel="orientation error (deg)", ylabel="particles",
             title="orientation error of matched picks\n(after the template's own frame)")
    if drawn:
        ax_o.legend(fontsize=7)
    else:
        ax_o.text(0.5, 0.5, "no matched picks", ha="center", transform=ax_o.transAxes)
    maps = scores.get("maps", {})
    ax_f.axis("off")
    rows = [[m, _fmt(v.get("fsc_0.5_A")), _fmt(v.get("fsc_0.143_A"))] for m, v in maps.items()]
    if rows:
        table = ax_f.table(cellText=rows, colLabels=["map", "FSC 0.5 (Å)", "FSC 0.143 (Å)"], loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
    else:
        ax_f.text(0.5, 0.5, "no final maps vs truth yet", ha="center")
    ax_f.set_title("final maps vs truth")
    _save(fig, path)


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.1f}"


# ----------------------------------------------------------------------------- STA job figures (helper B)


def class_central_slices(maps: np.ndarray | Sequence[np.ndarray], path: str | os.PathLike) -> None:
    """Central xy, xz and yz slices of each class map (one row per class), grey, origin lower."""
    fig = Figure(figsize=(7.5, 2.6 * len(maps)))
    axes = fig.subplots(len(maps), 3, squeeze=False)
    for ic, m in enumerate(maps):
        c = m.shape[0] // 2
        for j, (img, name) in enumerate(((m[c], "xy (z=c)"), (m[:, c], "xz (y=c)"), (m[:, :, c], "yz (x=c)"))):
            axes[ic, j].imshow(img, cmap="gray", origin="lower")
            axes[ic, j].set_title(f"class {ic} {name}", fontsize=8)
            axes[ic, j].axis("off")
    fig.tight_layout()
    _save(fig, path)


def sgd_convergence(mean_score: np.ndarray, map_change: np.ndarray, path: str | os.PathLike) -> None:
    """SGD convergence: mean score of the kept particles and ``1 − CC(map, previous map)`` per
    iteration, ``(n_iter, n_class)`` each."""
    fig = Figure(figsize=(8, 3))
    a, b = fig.subplots(1, 2)
    it = np.arange(1, len(mean_score) + 1)
    for ic in range(mean_score.shape[1]):
        a.plot(it, mean_score[:, ic], "o-", label=f"class {ic}")
        b.semilogy(it, np.maximum(map_change[:, ic], 1e-6), "o-", label=f"class {ic}")
    a.set_xlabel("iteration"), a.set_ylabel("mean score of kept particles (lower = better)")
    b.set_xlabel("iteration"), b.set_ylabel("1 − CC(map, previous map)")
    a.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def tomogram_slices(slices: Mapping[str, np.ndarray], limits: tuple[float, float], shape_zyx: tuple[int, int, int],
                    apix: float, title: str, path: str | os.PathLike) -> None:
    """Central XY, XZ and YZ slices of a tomogram (:func:`emflow.sta.tomo.central_slices`) on one
    grey scale ``limits``, panel widths in proportion to the slices."""
    nz, ny, nx = shape_zyx
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[nx, nx, ny])
    for ax, (name, img) in zip(axes, slices.items()):
        ax.imshow(img, cmap="gray", vmin=limits[0], vmax=limits[1], origin="lower", interpolation="nearest")
        ax.set_title(f"{name} (central)")
        ax.set_xlabel({"XY": "x", "XZ": "x", "YZ": "y"}[name] + " (px)")
        ax.set_ylabel({"XY": "y", "XZ": "z", "YZ": "z"}[name] + " (px)")
    fig.suptitle(f"{title}: {nx}×{ny}×{nz} at {apix:.3g} Å/px")
    _save(fig, path)
