"""Figures of the SPA workflow (matplotlib, Agg, no pyplot state), saved atomically as PNG.

Kept beside :mod:`emflow.pipeline.plots` (the report's figures) so the SPA stages own theirs:
the convergence plot and class gallery of the 2012 loop, and the gold-standard FSC per iteration.
FSC frequencies in 1/Å.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from emflow.io import atomic_write  # noqa: E402


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _fsc_axes(ax, title: str) -> None:
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.axhline(0.143, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="spatial frequency (1/Å)", ylabel="FSC", title=title, ylim=(-0.1, 1.02))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def gold_fsc_plot(curves: Sequence[dict], rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Left: every iteration's corrected masked FSC (solid) and unmasked FSC (dotted); right: the
    0.143 resolutions per iteration. ``curves``: one dict per iteration with ``freq`` (1/Å), ``true``,
    ``unmasked`` arrays; ``rows``: gold.json's iteration rows."""
    fig = Figure(figsize=(10, 4))
    ax, ax2 = fig.subplots(1, 2)
    for k, (c, r) in enumerate(zip(curves, rows)):
        color = f"C{k % 10}"
        ax.plot(c["freq"], c["true"], color=color, label=f"it {r['iter']} masked, corrected")
        ax.plot(c["freq"], c["unmasked"], color=color, ls=":", lw=0.8)
    _fsc_axes(ax, "gold-standard FSC (dotted: unmasked)")
    x = np.arange(1, len(rows) + 1)  # e2refine iterations "01", … then the local ones "L1", …
    for key, label in (("gold_0143_a", "masked, corrected"), ("unmasked_0143_a", "unmasked")):
        ax2.plot(x, [r[key] for r in rows], "o-", label=label)
    ax2.set_xticks(x, [str(r["iter"]) for r in rows])
    ax2.set(xlabel="iteration", ylabel="FSC 0.143 resolution (Å)", title="gold-standard resolution")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def convergence_plot(iters: Sequence[str], fsc_prev: Sequence[tuple], fsc_truth: Sequence[tuple | None],
                     bar_freq: float | None, path: str | os.PathLike) -> None:
    """FSC vs the truth (demo; panel dropped without truth) and between iterations, one line per iteration."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for it, (f, c), truth in zip(iters, fsc_prev, fsc_truth):
        axes[1].plot(f, c, label=f"it {it} vs {int(it) - 1:02d}")
        if truth is not None:
            axes[0].plot(truth[0], truth[1], label=f"it {it}")
    if bar_freq is not None:
        axes[0].axvline(bar_freq, color="red", lw=0.8, ls=":", label="2.5 px bar")
    no_truth = all(t is None for t in fsc_truth)
    for ax, title in zip(axes, ("FSC vs truth", "FSC between iterations")):
        _fsc_axes(ax, title)
    if no_truth:  # user data: no ground truth, only the iteration-to-iteration panel
        fig.delaxes(axes[0])
    fig.tight_layout()
    _save(fig, path)


def class_gallery(avgs: np.ndarray, ptcl_repr: Sequence[int], path: str | os.PathLike, n_max: int = 48) -> None:
    """The ``n_max`` most populated class averages, titled ``class: particles``."""
    order = np.argsort([-int(p) for p in ptcl_repr])[:n_max]
    ncol = 8
    nrow = max(1, int(np.ceil(len(order) / ncol)))
    fig = Figure(figsize=(ncol * 1.2, nrow * 1.3))
    axs = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax in axs:
        ax.axis("off")
    for ax, c in zip(axs, order):
        ax.imshow(avgs[c], cmap="gray")
        ax.set_title(f"{c}: {int(ptcl_repr[c])}", fontsize=6)
    _save(fig, path)
