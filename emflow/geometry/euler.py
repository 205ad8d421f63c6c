"""Rotation conventions: EMAN Euler angles, quaternions, RELION angles, tilt geometry.

All matrices are ``float64`` arrays of shape ``(..., 3, 3)`` acting on column vectors
``(x, y, z)``: ``r' = R @ r`` (see ``docs/CONVENTIONS.md``). A map "transformed by R" is
``out(r) = in(R⁻¹ r)``; the projection with transform ``R`` samples the map's 3D Fourier
transform on the plane ``Rᵀ (kx, ky, 0)``. Its **viewing direction** in the map frame is therefore
``Rᵀ ẑ`` = the third row of ``R`` = ``(sin alt sin az, −sin alt cos az, cos alt)``.

Angles are in degrees at the API. Functions broadcast over leading dimensions.

RELION (rot, tilt, psi)
    RELION's ``Euler_angles2matrix(rot, tilt, psi)`` builds ``A = Rz(psi)·Ry(tilt)·Rz(rot)`` with
    passive elementary matrices (ZYZ), and its projector samples the 3D Fourier transform at
    ``A⁻¹ (kx, ky, 0) = Aᵀ (kx, ky, 0)`` (``Projector::project``). That is exactly our projection
    convention, so **the RELION matrix is our matrix**: ``relion_to_matrix(rot, tilt, psi) == A``.
    In EMAN angles this is the SPIDER relation ``az = rot + 90``, ``alt = tilt``,
    ``phi = psi − 90`` (tested). RELION origins/shifts are not handled here (that is the I/O layer).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "eman_to_matrix",
    "matrix_to_eman",
    "quat_to_matrix",
    "matrix_to_quat",
    "relion_to_matrix",
    "matrix_to_relion",
    "eman_to_relion",
    "relion_to_eman",
    "tilt_matrix",
    "rotvec_to_matrix",
    "angle_between",
    "mean_rotation",
    "random_rotations",
    "view_direction",
    "direction_to_alt_az",
    "rot_x",
    "rot_y",
    "rot_z",
]

# sin(alt) below this counts as alt = 0 or 180 (gimbal lock): az is then set to 0. phi is
# always re-solved from the full matrix, so the threshold does not limit accuracy.
_GIMBAL_EPS = 1e-12


def _stack_matrix(rows) -> np.ndarray:
    """Build a ``(..., 3, 3)`` array from a 3×3 nested list of broadcastable arrays."""
    flat = np.broadcast_arrays(*[np.asarray(v, dtype=np.float64) for row in rows for v in row])
    return np.stack(flat, axis=-1).reshape(flat[0].shape + (3, 3))


def rot_z(theta_deg) -> np.ndarray:
    """Passive rotation about z, EMAN's ``Rz(θ) = [[c, s, 0], [−s, c, 0], [0, 0, 1]]``."""
    t = np.deg2rad(np.asarray(theta_deg, dtype=np.float64))
    c, s, z, o = np.cos(t), np.sin(t), np.zeros_like(t), np.ones_like(t)
    return _stack_matrix([[c, s, z], [-s, c, z], [z, z, o]])


def rot_x(theta_deg) -> np.ndarray:
    """Passive rotation about x, ``Rx(θ) = [[1, 0, 0], [0, c, s], [0, −s, c]]``."""
    t = np.deg2rad(np.asarray(theta_deg, dtype=np.float64))
    c, s, z, o = np.cos(t), np.sin(t), np.zeros_like(t), np.ones_like(t)
    return _stack_matrix([[o, z, z], [z, c, s], [z, -s, c]])


def rot_y(theta_deg) -> np.ndarray:
    """Passive rotation about y as RELION/EMAN "xyz" use it, ``[[c, 0, −s], [0, 1, 0], [s, 0, c]]``."""
    t = np.deg2rad(np.asarray(theta_deg, dtype=np.float64))
    c, s, z, o = np.cos(t), np.sin(t), np.zeros_like(t), np.ones_like(t)
    return _stack_matrix([[c, z, -s], [z, o, z], [s, z, c]])


def eman_to_matrix(az, alt, phi) -> np.ndarray:
    """EMAN Euler angles → rotation matrix ``R = Rz(phi)·Rx(alt)·Rz(az)`` (spec §2.1).

    Parameters
    ----------
    az, alt, phi : float or array_like
        Degrees; broadcast against each other.

    Returns
    -------
    ndarray, float64, shape ``(..., 3, 3)``
    """
    a, b, p = (np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (az, alt, phi))
    ca, sa, cb, sb, cp, sp = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(p), np.sin(p)
    return _stack_matrix([
        [cp * ca - cb * sa * sp, cp * sa + cb * ca * sp, sb * sp],
        [-sp * ca - cb * sa * cp, -sp * sa + cb * ca * cp, sb * cp],
        [sb * sa, -sb * ca, cb],
    ])


def _wrap360(angle_deg):
    """Wrap degrees into ``[0, 360)`` (and map −0 / 360−ε rounding to 0)."""
    w = np.mod(angle_deg, 360.0)
    return np.where(w >= 360.0 - 1e-12, 0.0, w)


def matrix_to_eman(R) -> np.ndarray:
    """Rotation matrix → EMAN ``(az, alt, phi)`` in degrees.

    ``alt`` ∈ [0, 180]; ``az``, ``phi`` ∈ [0, 360). At the gimbal poles (alt = 0 or 180) only
    ``az ± phi`` is defined; as EMAN does, ``az`` is set to 0 and all of the in-plane angle goes
    into ``phi``. ``phi`` is always solved from the full matrix given ``az`` and ``alt``, so
    ``eman_to_matrix(*matrix_to_eman(R).T)`` reproduces ``R`` to rounding even near the poles.

    Parameters
    ----------
    R : array_like, shape ``(..., 3, 3)``

    Returns
    -------
    ndarray, float64, shape ``(..., 3)``: ``[az, alt, phi]``.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape (..., 3, 3), got {R.shape}")
    sin_alt = np.hypot(R[..., 2, 0], R[..., 2, 1])
    alt = np.rad2deg(np.arctan2(sin_alt, R[..., 2, 2]))
    gimbal = sin_alt < _GIMBAL_EPS
    az = np.where(gimbal, 0.0, np.rad2deg(np.arctan2(R[..., 2, 0], -R[..., 2, 1])))
    alt = np.where(gimbal, np.where(R[..., 2, 2] > 0, 0.0, 180.0), alt)
    # Rz(phi) = R · Rz(az)ᵀ · Rx(alt)ᵀ; read phi from its first row (robust near the poles).
    M = R @ np.swapaxes(rot_z(az), -1, -2) @ np.swapaxes(rot_x(alt), -1, -2)
    phi = np.rad2deg(np.arctan2(M[..., 0, 1], M[..., 0, 0]))
    return np.stack([_wrap360(az), alt, _wrap360(phi)], axis=-1)


def quat_to_matrix(q) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` → rotation matrix.

    Convention: Hamilton product, active rotation ``R v = q v q̄`` (so ``R[0, 1] = 2(xy − wz)``).
    EMAN's ``"quaternion"`` Transform type ``(e0, e1, e2, e3)`` is the conjugate:
    ``e0 = w, (e1, e2, e3) = −(x, y, z)``. The input is normalised first.

    Parameters
    ----------
    q : array_like, shape ``(..., 4)``

    Returns
    -------
    ndarray, float64, shape ``(..., 3, 3)``
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"q must have shape (..., 4), got {q.shape}")
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return _stack_matrix([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(R) -> np.ndarray:
    """Rotation matrix → unit quaternion ``(w, x, y, z)`` with ``w ≥ 0`` (inverse of
    :func:`quat_to_matrix`; Shepperd's method, stable for all angles).

    Returns
    -------
    ndarray, float64, shape ``(..., 4)``
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape (..., 3, 3), got {R.shape}")
    m = R.reshape(-1, 3, 3)
    tr = np.trace(m, axis1=1, axis2=2)
    # Four candidate formulas; use the one whose pivot (4w², 4x², 4y², 4z²) is largest.
    pivots = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    choice = np.argmax(pivots, axis=1)
    q = np.empty((m.shape[0], 4))
    for k in range(4):
        sel = choice == k
        if not np.any(sel):
            continue
        a = m[sel]
        if k == 0:
            s = 2.0 * np.sqrt(np.maximum(1.0 + tr[sel], 0.0))
            q[sel] = np.stack([0.25 * s, (a[:, 2, 1] - a[:, 1, 2]) / s,
                               (a[:, 0, 2] - a[:, 2, 0]) / s, (a[:, 1, 0] - a[:, 0, 1]) / s], axis=1)
        elif k == 1:
            s = 2.0 * np.sqrt(np.maximum(1.0 + a[:, 0, 0] - a[:, 1, 1] - a[:, 2, 2], 0.0))
            q[sel] = np.stack([(a[:, 2, 1] - a[:, 1, 2]) / s, 0.25 * s,
                               (a[:, 0, 1] + a[:, 1, 0]) / s, (a[:, 0, 2] + a[:, 2, 0]) / s], axis=1)
        elif k == 2:
            s = 2.0 * np.sqrt(np.maximum(1.0 + a[:, 1, 1] - a[:, 0, 0] - a[:, 2, 2], 0.0))
            q[sel] = np.stack([(a[:, 0, 2] - a[:, 2, 0]) / s, (a[:, 0, 1] + a[:, 1, 0]) / s,
                               0.25 * s, (a[:, 1, 2] + a[:, 2, 1]) / s], axis=1)
        else:
            s = 2.0 * np.sqrt(np.maximum(1.0 + a[:, 2, 2] - a[:, 0, 0] - a[:, 1, 1], 0.0))
            q[sel] = np.stack([(a[:, 1, 0] - a[:, 0, 1]) / s, (a[:, 0, 2] + a[:, 2, 0]) / s,
                               (a[:, 1, 2] + a[:, 2, 1]) / s, 0.25 * s], axis=1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1.0
    return q.reshape(R.shape[:-2] + (4,))


def relion_to_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION ``(rot, tilt, psi)`` (degrees, ZYZ) → our rotation matrix.

    Equals RELION's ``Euler_angles2matrix`` ``A = Rz(psi)·Ry(tilt)·Rz(rot)``; see the module
    docstring for why no transpose is needed.
    """
    return rot_z(psi) @ rot_y(tilt) @ rot_z(rot)


def matrix_to_relion(R) -> np.ndarray:
    """Rotation matrix → RELION ``(rot, tilt, psi)`` degrees, shape ``(..., 3)``.

    ``tilt`` ∈ [0, 180], ``rot`` and ``psi`` ∈ (−180, 180] (RELION's ranges); at tilt = 0/180
    ``rot`` is 0.
    """
    az_alt_phi = matrix_to_eman(R)
    return eman_to_relion(*np.moveaxis(az_alt_phi, -1, 0))


def _wrap180(angle_deg):
    """Wrap degrees into ``(−180, 180]``."""
    return 180.0 - np.mod(180.0 - np.asarray(angle_deg, dtype=np.float64), 360.0)


def eman_to_relion(az, alt, phi) -> np.ndarray:
    """EMAN ``(az, alt, phi)`` → RELION ``(rot, tilt, psi)`` for the same matrix, shape ``(..., 3)``.

    ``rot = az − 90``, ``tilt = alt``, ``psi = phi + 90`` (the SPIDER offsets). At the poles
    (alt = 0/180) the in-plane angle is moved into ``psi`` so that ``rot = 0``.
    """
    az, alt, phi = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (az, alt, phi)))
    rot = az - 90.0
    psi = phi + 90.0
    # Pole: Rz(psi)·Ry(0)·Rz(rot) = Rz(psi + rot); Ry(180) flips the sign of the rot term.
    north = np.abs(np.sin(np.deg2rad(alt))) < _GIMBAL_EPS
    sign = np.where(np.cos(np.deg2rad(alt)) > 0, 1.0, -1.0)
    psi = np.where(north, psi + sign * rot, psi)
    rot = np.where(north, 0.0, rot)
    return np.stack([_wrap180(rot), alt, _wrap180(psi)], axis=-1)


def relion_to_eman(rot, tilt, psi) -> np.ndarray:
    """RELION ``(rot, tilt, psi)`` → EMAN ``(az, alt, phi)``, shape ``(..., 3)``, canonical ranges
    of :func:`matrix_to_eman` (goes through the matrix so that tilt < 0 or > 180 also work)."""
    return matrix_to_eman(relion_to_matrix(rot, tilt, psi))


def tilt_matrix(tilt, axis_rot=0.0, offtilt=0.0) -> np.ndarray:
    """Specimen rotation for one tilt image: EMAN ``Transform({"type": "xyz", "ytilt": tilt,
    "xtilt": offtilt, "ztilt": axis_rot})``.

    The matrix is ``Rz(axis_rot) · Ry(tilt) · Rx(offtilt)`` (passive elementary rotations, as in
    EMAN's ``transform.cpp``): first the off-axis tilt about x, then the tilt about y, then the
    in-plane rotation of the tilt axis about z. A tomogram point ``p`` (px from the centre) lands in
    the tilt image at ``(R p)_x, (R p)_y`` (plus the image shift) at depth ``(R p)_z``.

    Sense: for a positive ``tilt`` (and no other angles) ``R = [[c, 0, −s], [0, 1, 0], [s, 0, c]]``,
    so a point above the specimen plane, ``p = (0, 0, z>0)``, appears at ``x = −z·sin(tilt)``
    (it moves toward −x), and a point at ``+x`` moves up in depth (``(R p)_z = x·sin(tilt)``).
    IMOD's tilt angles have the opposite sense (EMAN ``ytilt = −θ_IMOD``); convert them only with
    :func:`emflow.sta.importer.imod_to_tlt_params` (``docs/CONVENTIONS.md``, IMOD ↔ EMAN2).

    Parameters
    ----------
    tilt, axis_rot, offtilt : float or array_like
        Degrees; broadcast against each other.

    Returns
    -------
    ndarray, float64, shape ``(..., 3, 3)``
    """
    return rot_z(axis_rot) @ rot_y(tilt) @ rot_x(offtilt)


def rotvec_to_matrix(w_deg) -> np.ndarray:
    """Rotation by the vector ``w`` (unit axis × angle in degrees; Rodrigues), float64 ``(3, 3)``.

    Small rotation vectors are the natural local-search parameters of the 3D aligners: the
    rotation is about ``w/|w|`` by ``|w|`` degrees, counter-clockwise (active, column vectors).
    """
    w = np.radians(np.asarray(w_deg, dtype=np.float64))
    a = float(np.sqrt(w @ w))
    if a < 1e-12:
        return np.eye(3)
    kx, ky, kz = w / a
    K = np.array([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]])
    return np.eye(3) + np.sin(a) * K + (1.0 - np.cos(a)) * (K @ K)


def angle_between(R1, R2) -> np.ndarray:
    """Rotation angle (degrees, in [0, 180]) of ``R1ᵀ R2``; broadcasts over leading dimensions.

    Uses ``atan2(|axial part|, (tr − 1)/2)``, accurate for small and large angles alike
    (EMAN's "spin" omega of ``A⁻¹B``).
    """
    R1 = np.asarray(R1, dtype=np.float64)
    R2 = np.asarray(R2, dtype=np.float64)
    M = np.swapaxes(R1, -1, -2) @ R2
    cos_t = 0.5 * (M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2] - 1.0)
    ax = np.stack([M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0],
                   M[..., 1, 0] - M[..., 0, 1]], axis=-1)
    sin_t = 0.5 * np.linalg.norm(ax, axis=-1)
    return np.rad2deg(np.arctan2(sin_t, cos_t))


def mean_rotation(Rs) -> np.ndarray:
    """Chordal L2 mean (3, 3) of rotations ``Rs`` (k, 3, 3): the arithmetic mean projected onto SO(3)
    by SVD (the rotation closest to it in the Frobenius norm)."""
    U, _, Vt = np.linalg.svd(np.asarray(Rs, dtype=np.float64).mean(axis=0))
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt


def random_rotations(n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``n`` rotations drawn uniformly (Haar measure) from SO(3).

    Quaternion method: a 4D standard normal vector normalised to unit length is uniform on S³,
    which maps to the uniform distribution on SO(3).

    Returns
    -------
    ndarray, float64, shape ``(n, 3, 3)``
    """
    rng = np.random.default_rng() if rng is None else rng
    q = rng.standard_normal((int(n), 4))
    return quat_to_matrix(q)


def view_direction(R) -> np.ndarray:
    """Viewing direction ``Rᵀ ẑ`` (the third row of ``R``) of projection transform(s) ``R``,
    shape ``(..., 3)``; equals ``(sin alt sin az, −sin alt cos az, cos alt)``."""
    return np.array(np.asarray(R, dtype=np.float64)[..., 2, :])


def direction_to_alt_az(v) -> np.ndarray:
    """Unit vector(s) → EMAN ``(alt, az)`` degrees, shape ``(..., 2)``; inverse of the third row of
    :func:`eman_to_matrix`. ``alt`` ∈ [0, 180], ``az`` ∈ [0, 360) (0 at the poles)."""
    v = np.asarray(v, dtype=np.float64)
    rho = np.hypot(v[..., 0], v[..., 1])
    alt = np.rad2deg(np.arctan2(rho, v[..., 2]))
    az = np.where(rho < _GIMBAL_EPS, 0.0, np.rad2deg(np.arctan2(v[..., 0], -v[..., 1])))
    return np.stack([alt, _wrap360(az)], axis=-1)
