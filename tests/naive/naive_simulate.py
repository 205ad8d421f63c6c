"""Slow, obvious numpy references for the numba kernels of emflow.demo.phantom."""

from __future__ import annotations

import numpy as np


def paste_patches(image: np.ndarray, patches: np.ndarray, centres_yx: np.ndarray) -> np.ndarray:
    """Return ``image`` plus every patch (centre ``p//2``) at its integer centre, clipped."""
    out = image.astype(np.float64).copy()
    p = patches.shape[1]
    big = np.zeros((out.shape[0] + 2 * p, out.shape[1] + 2 * p))
    big[p:-p, p:-p] = out
    for patch, (cy, cx) in zip(patches, centres_yx):
        y0, x0 = cy - p // 2 + p, cx - p // 2 + p
        big[y0 : y0 + p, x0 : x0 + p] += patch
    return big[p:-p, p:-p]


def footprint_mask(shape_yx, centres_yx, radius) -> np.ndarray:
    """Union of discs: pixel (y, x) is in if it is within ``radius`` of any centre."""
    y, x = np.mgrid[0 : shape_yx[0], 0 : shape_yx[1]]
    mask = np.zeros(shape_yx, bool)
    for cy, cx in centres_yx:
        mask |= (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    return mask
