"""Slow, obvious numpy references for emflow.sta.tomo kernels."""

from __future__ import annotations

import numpy as np


def backproject(images: np.ndarray, matrices: np.ndarray, shifts: np.ndarray, shape_zyx) -> np.ndarray:
    """Sum over tilts of bilinear samples of ``images[i]`` at ``(R_i p)_xy + t_i + centre``.

    Voxels whose sample falls outside an image get nothing from that image.
    """
    nz, ny, nx = shape_zyx
    nimg_y, nimg_x = images.shape[1:]
    z, y, x = np.meshgrid(np.arange(nz) - nz // 2, np.arange(ny) - ny // 2, np.arange(nx) - nx // 2, indexing="ij")
    p = np.stack([x.ravel(), y.ravel(), z.ravel()]).astype(np.float64)
    out = np.zeros(p.shape[1])
    for img, R, t in zip(images, matrices, shifts):
        q = R @ p
        u = q[0] + t[0] + nimg_x // 2
        v = q[1] + t[1] + nimg_y // 2
        inside = (u >= 0) & (v >= 0) & (u <= nimg_x - 1) & (v <= nimg_y - 1)
        iu = np.minimum(np.floor(u[inside]).astype(int), nimg_x - 2)
        iv = np.minimum(np.floor(v[inside]).astype(int), nimg_y - 2)
        fu = u[inside] - iu
        fv = v[inside] - iv
        val = (img[iv, iu] * (1 - fu) * (1 - fv) + img[iv, iu + 1] * fu * (1 - fv)
               + img[iv + 1, iu] * (1 - fu) * fv + img[iv + 1, iu + 1] * fu * fv)
        out[inside] += val
    return out.reshape(nz, ny, nx)
