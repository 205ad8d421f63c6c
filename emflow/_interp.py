"""Linear interpolation at one point, shared by the real-space numba kernels.

Arrays are indexed ``[z, y, x]`` (``[y, x]`` in 2D); the point is in array index units. Samples
outside the array contribute zero, so a point within one voxel of the border is partly zero.
Inlined into the calling kernels (``inline="always"``), so there is no call overhead.
"""

from __future__ import annotations

import numpy as np

from emflow._numba import jit


@jit(inline="always")
def trilinear(vol, px, py, pz):
    """Trilinear sample of ``vol (nz, ny, nx)`` at ``(px, py, pz)``; zero outside."""
    nz, ny, nx = vol.shape
    x0 = int(np.floor(px))
    y0 = int(np.floor(py))
    z0 = int(np.floor(pz))
    fx = px - x0
    fy = py - y0
    fz = pz - z0
    acc = 0.0
    for oz in range(2):
        zz = z0 + oz
        if zz < 0 or zz >= nz:
            continue
        wz = fz if oz else 1.0 - fz
        for oy in range(2):
            yy = y0 + oy
            if yy < 0 or yy >= ny:
                continue
            wzy = wz * (fy if oy else 1.0 - fy)
            for ox in range(2):
                xx = x0 + ox
                if xx < 0 or xx >= nx:
                    continue
                acc += wzy * (fx if ox else 1.0 - fx) * vol[zz, yy, xx]
    return acc


@jit(inline="always")
def bilinear(img, px, py):
    """Bilinear sample of ``img (ny, nx)`` at ``(px, py)``; zero outside."""
    ny, nx = img.shape
    x0 = int(np.floor(px))
    y0 = int(np.floor(py))
    fx = px - x0
    fy = py - y0
    acc = 0.0
    for oy in range(2):
        yy = y0 + oy
        if yy < 0 or yy >= ny:
            continue
        wy = fy if oy else 1.0 - fy
        for ox in range(2):
            xx = x0 + ox
            if xx < 0 or xx >= nx:
                continue
            acc += wy * (fx if ox else 1.0 - fx) * img[yy, xx]
    return acc
