"""Point-group symmetry in EMAN's conventions: operators, asymmetric units, reduction.

Symmetry strings (case-insensitive): ``c<N>``, ``d<N>``, ``h<N>[:<nstart>:<daz>:<tz>[:<maxtilt>]]``
(``,`` also accepted as separator), ``tet``, ``oct``, ``icos`` (``icos5`` is an alias).

Operators follow EMAN's ``get_sym(n)`` (libEM/symmetry.cpp), in EMAN's order, identity first:

* ``cN``: ``az = 360·n/N``; ``dN``: ``n < N`` as cN, ``n ≥ N`` ``az = 360·(n−N)/N, alt = 180``.
* ``tet`` (12, a 3-fold on z), ``oct`` (24, 4-folds on x, y, z), ``icos`` (60, a 5-fold on z and
  a 2-fold on y; EMAN adds ``+90`` to az and ``−90`` to phi of Baldwin's table, and generated
  directions get the 234° azimuthal alignment offset, which puts the unit's corners on the
  5-fold z, a 2-fold at (alt 31.72°, az 234°) and a 3-fold at (alt 37.38°, az 270°), i.e. in the
  x–z plane; all verified in the tests).
* ``hN:nstart:daz:tz``: operator n is a rotation ``ii·daz`` about z with a z shift ``ii·tz`` Å,
  ``ii = 0, 1, −1, 2, −2, …``. Only ``nstart = 1`` is supported (EMAN raises for other values).
  **Reconstruction treats h as c1** (:attr:`Symmetry.reconstruction_matrices` is the identity only),
  as EMAN's reconstruction programs do; the helical operators are for imposing symmetry on maps.

Symmetry of a map means the map transformed by any operator is unchanged, so a particle orientation
``R`` (``xform.projection`` sense) is equivalent to every ``R·S_i`` (right multiplication, as in
EMAN's ``Symmetry3D::reduce``).

Asymmetric units are described on the sphere of viewing directions ``(alt, az)`` (the third row of
``R``, see :mod:`emflow.geometry.euler`); ``inc_mirror=True`` is the unit under the rotation group
alone, ``False`` additionally removes the mirror half (a projection along ``−d`` is the mirror image
of the projection along ``d``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from emflow.errors import InputError
from emflow.geometry.euler import angle_between, direction_to_alt_az, eman_to_matrix

__all__ = ["Symmetry", "get_symmetry", "symmetry_angle_between", "ACCEPTED_FORMS"]

ACCEPTED_FORMS = "c<N>, d<N>, h<N>[:<nstart>:<daz>:<tz>[:<maxtilt>]], tet, oct, icos (N ≥ 1)"


def _platonic_table(kind: str) -> np.ndarray:
    """EMAN's (az, alt, phi) operator table (Baldwin) for tet/oct/icos, shape (nsym, 3)."""
    if kind == "tet":
        l1 = math.degrees(math.acos(-1.0 / 3.0))
        rows = [(0, 0, p) for p in (0, 120, 240)]
        rows += [(az, l1, p) for az in (0, 120, 240) for p in (60, 180, 300)]
        return np.array(rows, dtype=np.float64)
    if kind == "oct":
        rows = [(0, 0, p) for p in (0, 90, 180, 270)]
        rows += [(az, 90, p) for az in (0, 90, 180, 270) for p in (0, 90, 180, 270)]
        rows += [(0, 180, p) for p in (0, 90, 180, 270)]
        return np.array(rows, dtype=np.float64)
    # icos: pentagon normal to z.
    l1 = math.degrees(math.atan(2.0))
    l2 = 180.0 - l1
    phis_top = (0, 288, 216, 144, 72)
    phis_l1 = (36, 324, 252, 180, 108)
    rows = [(0, 0, p) for p in phis_top]
    rows += [(az, l1, p) for az in (0, 72, 144, 216, 288) for p in phis_l1]
    rows += [(az, l2, p) for az in (36, 108, 180, 252, 324) for p in phis_top]
    rows += [(0, 180, p) for p in phis_top]
    t = np.array(rows, dtype=np.float64)
    t[:, 0] += 90.0  # EMAN's choice with the 234° alignment offset
    t[:, 2] -= 90.0
    return t


@dataclass(frozen=True, eq=False)
class Symmetry:
    """A symmetry group in EMAN's conventions (build it with :func:`get_symmetry`).

    Attributes
    ----------
    name : str
        Canonical string (``"c4"``, ``"d7"``, ``"icos"``, ``"h1:1:27.5:4.8:90"``).
    kind : str
        ``"c"``, ``"d"``, ``"h"``, ``"tet"``, ``"oct"`` or ``"icos"``.
    order : int
        N of cN/dN/hN (0 for platonic groups).
    matrices : ndarray, float64, shape ``(nsym, 3, 3)``
        Operators, identity first, EMAN's order.
    max_csym : int
        Highest rotational order about z (EMAN ``get_max_csym``).
    az_offset : float
        Degrees added to the azimuth of generated directions (234 for icos, else 0).
    helical_shifts_a : ndarray, shape ``(nsym,)``
        z translation of each operator in Å (helical symmetry only; zeros otherwise).
    maxtilt : float
        Helical asymmetric unit half-width about the equator, degrees (90 for non-helical).
    """

    name: str
    kind: str
    order: int
    matrices: np.ndarray = field(repr=False)
    max_csym: int
    az_offset: float = 0.0
    helical_shifts_a: np.ndarray = field(default=None, repr=False)
    maxtilt: float = 90.0

    @property
    def nsym(self) -> int:
        """Number of operators."""
        return int(self.matrices.shape[0])

    @property
    def is_platonic(self) -> bool:
        return self.kind in ("tet", "oct", "icos")

    @property
    def reconstruction_matrices(self) -> np.ndarray:
        """Operators a reconstruction imposes: ``matrices``, but identity only for helical."""
        return self.matrices[:1] if self.kind == "h" else self.matrices

    # ------------------------------------------------------------------ asymmetric unit
    def _platonic_params(self):
        """(cap_sigma, alpha, theta_c/2) in radians (Baldwin & Penczek 2007)."""
        sig = 2.0 * math.pi / self.max_csym
        alpha = math.acos(1.0 / (math.sqrt(3.0) * math.tan(sig / 2.0)))
        tc2 = 0.5 * math.acos(math.cos(sig) / (1.0 - math.cos(sig)))
        return sig, alpha, tc2

    def asym_unit_bounds(self, inc_mirror: bool = False) -> dict:
        """EMAN's delimiters of the asymmetric unit, degrees.

        Returns ``{"alt_min", "alt_max", "az_max", "az_offset"}``. Directions have
        ``alt_min ≤ alt ≤ alt_max`` and ``0 ≤ az − az_offset < az_max``; platonic units are further
        cut by the great-circle bound (see :meth:`in_asym_unit`).
        """
        alt_min = 0.0
        if self.kind == "c":
            alt_max, az_max = (180.0 if inc_mirror else 90.0), 360.0 / self.order
        elif self.kind == "d":
            alt_max, az_max = 90.0, (360.0 if inc_mirror else 180.0) / self.order
        elif self.kind == "h":
            alt_min = 90.0 - self.maxtilt
            alt_max, az_max = (90.0 + self.maxtilt if inc_mirror else 90.0), 360.0
        else:
            sig, alpha, _ = self._platonic_params()
            az_max = math.degrees(sig)
            if not inc_mirror and self.kind in ("icos", "oct"):
                az_max *= 0.5
            alt_max = math.degrees(alpha)
        return {"alt_min": alt_min, "alt_max": alt_max, "az_max": az_max,
                "az_offset": self.az_offset}

    def _platonic_bound(self, az_rad, alpha):
        """Baldwin's altitude bound (radians) of the platonic triangle at azimuth ``az_rad``."""
        sig, _, tc2 = self._platonic_params()
        b = (np.sin(sig / 2.0 - az_rad) / math.tan(tc2) + np.sin(az_rad) / math.tan(alpha))
        return np.arctan(1.0 / (b / math.sin(sig / 2.0)))

    def _in_unit_unrotated(self, alt, az, inc_mirror: bool, tol: float = 0.0) -> np.ndarray:
        """EMAN's ``is_in_asym_unit`` in the generator frame (az before the alignment offset).

        ``tol`` (degrees) widens every bound slightly (used to break ties on boundaries).
        """
        alt = np.asarray(alt, dtype=np.float64)
        az = np.asarray(az, dtype=np.float64)
        b = self.asym_unit_bounds(inc_mirror)
        ok = (alt >= b["alt_min"] - tol) & (alt <= b["alt_max"] + tol)
        ok &= (az >= -tol) & (az < b["az_max"] + tol)
        if not self.is_platonic:
            return ok
        sig, alpha, _ = self._platonic_params()
        az_r = np.deg2rad(az)
        az_r = np.minimum(az_r, sig - az_r)
        alt_r = np.deg2rad(alt)
        tol_r = math.radians(tol)
        with np.errstate(divide="ignore", invalid="ignore"):
            ok &= self._platonic_bound(az_r, alpha) + tol_r > alt_r
            if self.kind == "tet" and not inc_mirror:
                ok &= self._platonic_bound(az_r, alpha / 2.0) + tol_r >= alt_r
        return ok

    def in_asym_unit(self, alt, az, inc_mirror: bool = False) -> np.ndarray:
        """Whether viewing direction(s) ``(alt, az)`` (degrees, map frame, i.e. as returned by
        :func:`emflow.geometry.orientations`) lie in the asymmetric unit; vectorised.

        Same tests as EMAN's ``is_in_asym_unit``, after removing the platonic alignment offset
        from ``az`` and wrapping az into [0, 360).
        """
        az = np.mod(np.asarray(az, dtype=np.float64) - self.az_offset, 360.0)
        return self._in_unit_unrotated(alt, az, inc_mirror)

    def reduce_to_asym_unit(self, R):
        """Map rotation(s) into the asymmetric unit (with mirror) using the operators.

        Finds ``i`` such that the viewing direction of ``R·S_iᵀ`` lies in the unit (EMAN's
        ``Symmetry3D::reduce``: ``t · get_sym(i)⁻¹``) and returns that rotation. Helical symmetry
        returns ``R`` unchanged.

        Parameters
        ----------
        R : array_like, shape ``(..., 3, 3)``

        Returns
        -------
        reduced : ndarray, shape ``(..., 3, 3)``
        op_index : ndarray of int, shape ``(...)``
        """
        R = np.asarray(R, dtype=np.float64)
        lead = R.shape[:-2]
        Rf = R.reshape(-1, 3, 3)
        if self.kind == "h" or self.nsym == 1:
            return R.copy(), np.zeros(lead, dtype=np.int64)
        S = self.matrices
        # viewing direction of R·S_iᵀ is S_i·d with d = third row of R.
        dirs = np.einsum("sij,nj->nsi", S, Rf[:, 2, :])
        alt_az = direction_to_alt_az(dirs)
        alt, az = alt_az[..., 0], np.mod(alt_az[..., 1] - self.az_offset, 360.0)
        inside = self._in_unit_unrotated(alt, az, True)
        missing = ~inside.any(axis=1)
        if np.any(missing):
            # Directions on a boundary: accept a small tolerance, and az just below 360 as ~0.
            az_m = np.where(az[missing] > 360.0 - 1e-4, az[missing] - 360.0, az[missing])
            inside[missing] = self._in_unit_unrotated(alt[missing], az_m, True, tol=1e-4)
        idx = np.argmax(inside, axis=1)
        out = Rf @ np.swapaxes(S[idx], -1, -2)
        return out.reshape(R.shape), idx.reshape(lead)


def _h_operators(order: int, nstart: int, daz: float, tz: float):
    ii = np.array([(n + 1) // 2 * (-1 if (n > 1 and n % 2 == 0) else 1) for n in range(order)])
    az = (ii % nstart) * (360.0 / nstart) + np.floor(ii / nstart) * daz
    return eman_to_matrix(az, 0.0, 0.0), (ii // nstart) * tz


_CACHE: dict[str, Symmetry] = {}


def get_symmetry(name: "str | Symmetry") -> Symmetry:
    """Parse a symmetry string into a :class:`Symmetry` (cached; case-insensitive).

    Raises
    ------
    InputError
        For anything not in :data:`ACCEPTED_FORMS` (source ``"symmetry string '<name>'"``).
    """
    if isinstance(name, Symmetry):
        return name
    key = str(name).strip().lower()
    if key in _CACHE:
        return _CACHE[key]

    def bad(what: str) -> InputError:
        return InputError(what, source=f"symmetry string '{name}'",
                          fix=f"use one of: {ACCEPTED_FORMS}, e.g. c1, d7, icos")

    if key == "icos5":
        key = "icos"
    if key in ("tet", "oct", "icos"):
        table = _platonic_table(key)
        sym = Symmetry(name=key, kind=key, order=0, matrices=eman_to_matrix(*table.T),
                       max_csym={"tet": 3, "oct": 4, "icos": 5}[key],
                       az_offset=234.0 if key == "icos" else 0.0,
                       helical_shifts_a=np.zeros(len(table)))
    elif m := re.fullmatch(r"([cd])(\d+)", key):
        kind, order = m.group(1), int(m.group(2))
        if order < 1:
            raise bad(f"the order must be ≥ 1, got {order}")
        k = np.arange(order)
        if kind == "c":
            mats = eman_to_matrix(360.0 * k / order, 0.0, 0.0)
        else:
            az = np.concatenate([360.0 * k / order, 360.0 * k / order])
            alt = np.concatenate([np.zeros(order), np.full(order, 180.0)])
            mats = eman_to_matrix(az, alt, 0.0)
        sym = Symmetry(name=key, kind=kind, order=order, matrices=mats, max_csym=order,
                       helical_shifts_a=np.zeros(len(mats)))
    elif key.startswith("h"):
        parts = re.split(r"[:,]", key[1:])
        try:
            order = int(parts[0])
            nstart = int(parts[1]) if len(parts) > 1 else 1
            daz = float(parts[2]) if len(parts) > 2 else 0.0
            tz = float(parts[3]) if len(parts) > 3 else 0.0
            maxtilt = float(parts[4]) if len(parts) > 4 else 90.0
        except (ValueError, IndexError):
            raise bad("cannot read helical parameters nsym:nstart:daz:tz[:maxtilt]") from None
        if len(parts) > 5 or order < 1:
            raise bad("expected h<nsym>:<nstart>:<daz>:<tz>[:<maxtilt>] with nsym ≥ 1")
        if nstart != 1:
            raise bad(f"helical nstart={nstart} is not supported (EMAN: broken for nstart > 1)")
        if not 0.0 < maxtilt <= 90.0:
            raise bad(f"maxtilt must be in (0, 90], got {maxtilt}")
        mats, shifts = _h_operators(order, nstart, daz, tz)
        canon = f"h{order}:{nstart}:{daz:g}:{tz:g}:{maxtilt:g}"
        sym = Symmetry(name=canon, kind="h", order=order, matrices=mats, max_csym=nstart,
                       helical_shifts_a=shifts.astype(np.float64), maxtilt=maxtilt)
    else:
        raise bad("unknown symmetry")
    # shared through the cache: make the arrays read-only
    sym.matrices.setflags(write=False)
    sym.helical_shifts_a.setflags(write=False)
    _CACHE[str(name).strip().lower()] = sym
    return sym


def symmetry_angle_between(R1, R2, sym="c1") -> np.ndarray:
    """Smallest rotation angle (degrees) between ``R1`` and any symmetry mate ``R2·S_i``.

    For orientations in the ``xform.projection`` / particle sense (map transformed by ``R``).
    For ``xform.align3d``-style inverses use ``R1ᵀ, R2ᵀ``. Broadcasts over leading dimensions.
    Helical symmetry uses its rotational operators.
    """
    S = get_symmetry(sym).matrices
    R1 = np.asarray(R1, dtype=np.float64)[..., None, :, :]
    R2 = np.asarray(R2, dtype=np.float64)[..., None, :, :] @ S
    return angle_between(R1, R2).min(axis=-1)
