"""Real-space rotation and translation of volumes and images by trilinear / bilinear interpolation.

Convention (``docs/CONVENTIONS.md``, EMAN ``xform``): transforming a map by ``(R, t)`` moves the
object: ``out(r) = in(R⁻¹ (r − t))`` with ``r`` relative to the box centre ``n // 2`` and
``t = (tx, ty, tz)`` in pixels. Samples outside the input are zero.
"""

from __future__ import annotations

import numba
import numpy as np

from emflow._interp import bilinear, trilinear
from emflow._numba import pjit

__all__ = ["rotate_volume", "rotate_image", "rotation_2d"]


@pjit
def _rotate_volume(vol, Rinv, t, out):
    nz, ny, nx = out.shape
    iz, iy, ix = vol.shape
    cz, cy, cx = nz // 2, ny // 2, nx // 2
    jz, jy, jx = iz // 2, iy // 2, ix // 2
    for z in numba.prange(nz):
        rz = z - cz - t[2]
        for y in range(ny):
            ry = y - cy - t[1]
            bx = Rinv[0, 1] * ry + Rinv[0, 2] * rz + jx
            by = Rinv[1, 1] * ry + Rinv[1, 2] * rz + jy
            bz = Rinv[2, 1] * ry + Rinv[2, 2] * rz + jz
            for x in range(nx):
                rx = x - cx - t[0]
                px = Rinv[0, 0] * rx + bx
                py = Rinv[1, 0] * rx + by
                pz = Rinv[2, 0] * rx + bz
                x0 = int(np.floor(px))
                y0 = int(np.floor(py))
                z0 = int(np.floor(pz))
                if x0 < -1 or y0 < -1 or z0 < -1 or x0 >= ix or y0 >= iy or z0 >= iz:
                    out[z, y, x] = 0.0
                    continue
                out[z, y, x] = trilinear(vol, px, py, pz)


def rotate_volume(vol: np.ndarray, R, shift=None, out: np.ndarray | None = None) -> np.ndarray:
    """Rotate then translate a volume: ``out(r) = vol(R⁻¹ (r − t))`` (trilinear, zero outside).

    Parameters
    ----------
    vol : ndarray, float, (nz, ny, nx)
    R : ndarray, float64, (3, 3)
        Rotation acting on column vectors ``(x, y, z)``.
    shift : array-like (3,), optional
        ``t = (tx, ty, tz)`` pixels.
    out : ndarray, float32, optional
        Output buffer (any 3D shape; it is centred the same way); allocated like ``vol`` if None.

    Returns
    -------
    ndarray, float32
        ``out``. ``R = I``, ``t = 0`` returns an exact copy; 90° rotations about an axis are
        exact permutations (``np.rot90``).
    """
    vol = np.ascontiguousarray(vol, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"rotate_volume: vol must be 3D, got shape {vol.shape}")
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"rotate_volume: R must be (3, 3), got {R.shape}")
    t = np.zeros(3) if shift is None else np.asarray(shift, dtype=np.float64).reshape(3)
    if out is None:
        out = np.empty_like(vol)
    elif out.dtype != np.float32 or out.ndim != 3 or not out.flags.c_contiguous:
        raise ValueError("rotate_volume: out must be a C-contiguous float32 3D array")
    # R is orthonormal: R⁻¹ = Rᵀ; rounding keeps exact 90° cases exact
    Rinv = np.ascontiguousarray(R.T)
    Rinv[np.abs(Rinv) < 1e-12] = 0.0
    _rotate_volume(vol, Rinv, t, out)
    return out


def rotation_2d(angle_deg) -> np.ndarray:
    """2D rotation matrix of EMAN's in-plane angle: the (x, y) block of ``eman_to_matrix(angle, 0, 0)``.

    ``[[cos a, sin a], [−sin a, cos a]]``; vectorised over ``angle_deg`` → ``(..., 2, 2)``.
    With x right and y up, a positive angle turns the image content clockwise (EMAN's passive
    convention, the same as ``rotate_volume`` with a z rotation ``eman_to_matrix(a, 0, 0)``).
    """
    a = np.radians(np.asarray(angle_deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    return np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)


@pjit
def _rotate_images(img, Rinv, t, out):
    n, ny, nx = out.shape
    iy, ix = img.shape[1], img.shape[2]
    cy, cx = ny // 2, nx // 2
    jy, jx = iy // 2, ix // 2
    for job in numba.prange(n * ny):
        i = job // ny
        y = job % ny
        ry = y - cy - t[i, 1]
        for x in range(nx):
            rx = x - cx - t[i, 0]
            px = Rinv[i, 0, 0] * rx + Rinv[i, 0, 1] * ry + jx
            py = Rinv[i, 1, 0] * rx + Rinv[i, 1, 1] * ry + jy
            out[i, y, x] = bilinear(img[i], px, py)


def rotate_image(img: np.ndarray, angle_deg, shift=None) -> np.ndarray:
    """Rotate then translate images: ``out(r) = img(A⁻¹ (r − t))``, ``A = rotation_2d(angle)``.

    Parameters
    ----------
    img : ndarray, float, (ny, nx) or a stack (n, ny, nx)
    angle_deg : float or ndarray (n,)
        EMAN in-plane angle(s) in degrees (see :func:`rotation_2d` for the sense).
    shift : array-like, (2,) or (n, 2), optional
        ``(tx, ty)`` pixels applied after the rotation.

    Returns
    -------
    ndarray, float32, same shape as ``img`` (bilinear, zero outside).
    """
    img = np.asarray(img, dtype=np.float32)
    single = img.ndim == 2
    stack = np.ascontiguousarray(img[None] if single else img)
    if stack.ndim != 3:
        raise ValueError(f"rotate_image: img must be (ny, nx) or (n, ny, nx), got {img.shape}")
    n = stack.shape[0]
    ang = np.broadcast_to(np.asarray(angle_deg, dtype=np.float64), (n,))
    t = np.zeros((n, 2)) if shift is None else np.broadcast_to(np.asarray(shift, dtype=np.float64), (n, 2))
    Rinv = np.ascontiguousarray(np.swapaxes(rotation_2d(ang), -1, -2))
    Rinv[np.abs(Rinv) < 1e-12] = 0.0
    out = np.empty_like(stack)
    _rotate_images(stack, Rinv, np.ascontiguousarray(t), out)
    return out[0] if single else out
