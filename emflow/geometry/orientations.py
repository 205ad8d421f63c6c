"""Orientation generators (EMAN ``Symmetry3D.gen_orientations``): eman, even, saff, rand, single.

Every generator returns an ``(n, 3)`` float64 array of EMAN Euler angles ``(az, alt, phi)`` in
degrees; ``eman_to_matrix(*o.T)`` gives the rotations. Directions ``(alt, az)`` cover the asymmetric
unit of the symmetry (see :mod:`emflow.geometry.symmetry`); ``phitoo > 0`` adds in-plane rotations
``phi = k·phitoo`` for every direction (3D searches use ``phitoo = delta, inc_mirror=True``).

EMAN quirks kept on purpose (so lists match EMAN's): the ``eman`` generator with ``inc_mirror``
on c symmetry emits two orientations at alt = 180 (az 0 and az_max/2.1); without mirror the arc at
``az = az_max`` is included for d and oct/icos; rings may stop short of a platonic unit's 3-fold
corner (icos at δ = 6° leaves a ~10° hole there, δ = 5° stays within 1.3δ).

The ``eman`` and ``even`` loops replay EMAN's single-precision arithmetic (``alt += delta`` and
``az += h`` accumulated in float32) so the counts match EMAN's exactly, e.g. c1: 833 directions at
δ = 5° (1,665 with mirror), 372/743 at 7.5°, 25/49 at 30°.

Deliberate differences from EMAN, documented where they occur:

* helical ``inc_mirror`` adds the ring at ``180° − alt`` (EMAN mirrors about ``alt_min``, which
  for the default maxtilt = 90 duplicates upper-hemisphere directions);
* ``saff`` keeps the platonic alignment offset out of its spiral state (EMAN lets it leak in);
* ``rand`` honours ``inc_mirror=False`` by rejection (EMAN ignores it) and takes ``random_phi``;
* ``n=`` finds ``delta`` by EMAN's bisection on the generator's own count for every generator and,
  when no delta gives exactly ``n`` (the count jumps by a whole ring), returns the visited delta
  whose count is closest.
"""

from __future__ import annotations

import math

import numpy as np

from emflow.errors import InputError
from emflow.geometry.euler import direction_to_alt_az, eman_to_matrix, matrix_to_eman
from emflow.geometry.symmetry import Symmetry, get_symmetry

__all__ = ["orientations", "parse_orientgen", "orientations_from_string", "GENERATORS"]

GENERATORS = ("eman", "even", "saff", "rand", "single")

_F = np.float32
_DEG2RAD = math.pi / 180.0

# option name -> type, for parse_orientgen
_OPTION_TYPES = {
    "delta": float, "n": int, "inc_mirror": bool, "phitoo": float, "random_phi": bool,
    "perturb": bool, "alt_min": float, "alt_max": float, "breaksym": bool,
    "az": float, "alt": float, "phi": float,
}


# ------------------------------------------------------------------------- direction generators
def _az_max_adjusted(sym: Symmetry, alt_it, altmax, inc_mirror: bool, h, azmax):
    """EMAN's ``OrientationGenerator::get_az_max``: (adjusted az_max, d_odd_mirror_flag)."""
    at_edge = alt_it == altmax
    if sym.kind == "d" and at_edge and sym.order % 2 == 1:
        return (azmax / _F(4.0), True) if inc_mirror else (azmax / _F(2.0), False)
    if sym.kind == "d" and at_edge and sym.order % 2 == 0 and inc_mirror:
        return azmax / _F(2.0), False
    if sym.kind == "c" and not inc_mirror and at_edge and sym.order % 2 == 1:
        return azmax / _F(2.0), False
    if sym.kind in ("c", "tet"):
        return azmax - h / _F(4.0), False
    if inc_mirror and (sym.kind == "d" or sym.is_platonic):
        return azmax - h / _F(4.0), False
    return azmax, False


def _gen_bounds(sym: Symmetry, inc_mirror: bool, alt_max_p):
    """(alt_start, alt_max, az_max) for the ring generators, float32. Helical units use the
    mirror-free delimiters; the mirror ring is added separately."""
    b = sym.asym_unit_bounds(inc_mirror and sym.kind != "h")
    altmax = _F(b["alt_max"])
    if alt_max_p is not None and altmax > _F(alt_max_p):
        altmax = _F(alt_max_p)
    alt_start = _F(b["alt_min"]) if sym.kind == "h" else _F(0.0)
    return alt_start, altmax, _F(b["az_max"])


def _eman_directions(sym, delta, inc_mirror, alt_min_p, alt_max_p):
    """EMAN generator directions before phi expansion: arrays (az, alt, az_step), float64."""
    delta = _F(delta)
    alt_start, altmax, azmax = _gen_bounds(sym, inc_mirror, alt_max_p)
    paltmin = _F(alt_min_p)
    out_az, out_alt, out_h = [], [], []
    alt_it = alt_start
    while alt_it <= altmax:
        if alt_it == 0:
            h = azmax
        else:
            h = delta / np.sin(_F(_DEG2RAD * float(alt_it)))
            if azmax / h < _F(2.8):
                h = azmax / _F(2.1)
        azmax_adj, d_odd = _az_max_adjusted(sym, alt_it, altmax, inc_mirror, h, azmax)
        if alt_it < paltmin:
            alt_it = _F(alt_it + delta)
            continue
        ring = []
        az_it = _F(0.0)
        while az_it <= azmax_adj:
            if not (alt_it == 0 and az_it > 0):  # one orientation only at alt = 0
                ring.append(float(az_it))
            az_it = _F(az_it + h)
            if az_it > azmax_adj and d_odd:
                azmax_adj = azmax
                az_it = _F(az_it + azmax / _F(2.0))
        ring = np.asarray(ring, dtype=np.float64)
        if sym.is_platonic and ring.size:
            ring = ring[sym._in_unit_unrotated(np.full(ring.size, float(alt_it)), ring, inc_mirror)]
        out_az.append(ring)
        out_alt.append(np.full(ring.size, float(alt_it)))
        out_h.append(np.full(ring.size, float(h)))
        alt_it = _F(alt_it + delta)
    return _concat(out_az), _concat(out_alt), _concat(out_h)


def _even_directions(sym, delta, inc_mirror, alt_min_p, alt_max_p):
    """EMAN ``even``: latitude rings, az step δ/sin(alt) from 0 up to (excluding) az_max."""
    delta = _F(delta)
    alt_start, altmax, azmax = _gen_bounds(sym, inc_mirror, alt_max_p)
    out_az, out_alt, out_h = [], [], []
    alt = alt_start
    while alt <= altmax:
        if alt == 0 or alt == 180:
            detaz = _F(360.0)
        else:
            detaz = delta / _F(math.sin(float(alt) * _DEG2RAD))
        if alt >= _F(alt_min_p):
            ring = []
            az = _F(0.0)
            while az < azmax:
                ring.append(float(az))
                az = _F(az + detaz)
            ring = np.asarray(ring, dtype=np.float64)
            if sym.is_platonic and ring.size:
                ring = ring[sym._in_unit_unrotated(np.full(ring.size, float(alt)), ring, inc_mirror)]
            out_az.append(ring)
            out_alt.append(np.full(ring.size, float(alt)))
            out_h.append(np.full(ring.size, float(detaz)))
        alt = _F(alt + delta)
    return _concat(out_az), _concat(out_alt), _concat(out_h)


def _saff_directions(sym, delta, inc_mirror, alt_min_p, alt_max_p):
    """Saff & Kuijlaars spiral over the asymmetric unit (EMAN ``saff``)."""
    b = sym.asym_unit_bounds(inc_mirror)
    altmax = b["alt_max"] if alt_max_p is None else min(b["alt_max"], alt_max_p)
    altmin = max(b["alt_min"], alt_min_p)
    azmax = b["az_max"]
    dz_total = math.cos(math.radians(altmax)) - math.cos(math.radians(altmin))
    nfac = 3.6 / math.radians(delta)
    npts = int(nfac * nfac * abs(dz_total * azmax / 720.0))
    az_l, alt_l = [], []
    if sym.kind != "h" and altmin == 0.0:
        az_l.append(0.0)
        alt_l.append(0.0)
    if npts > 1:
        z = math.cos(math.radians(altmin)) + dz_total * np.arange(1, npts) / (npts - 1)
        r = np.sqrt(np.maximum(1.0 - z * z, 1e-300))
        # az_{i} = (az_{i-1} + δ/r_i) mod az_max: a running sum, wrapped.
        az = np.mod(np.cumsum(delta / r), azmax)
        alt = np.degrees(np.arccos(np.clip(z, -1.0, 1.0)))
        if sym.is_platonic:
            keep = sym._in_unit_unrotated(alt, az, inc_mirror)
            az, alt = az[keep], alt[keep]
        az_l.extend(az.tolist())
        alt_l.extend(alt.tolist())
    az = np.asarray(az_l, dtype=np.float64)
    return az, np.asarray(alt_l, dtype=np.float64), np.full(az.size, float(delta))


def _concat(parts):
    return np.concatenate(parts) if parts else np.zeros(0)


_DIRECTION_GENERATORS = {"eman": _eman_directions, "even": _even_directions,
                         "saff": _saff_directions}


def _optimal_delta(direction_fn, sym, n, inc_mirror, alt_min, alt_max, breaksym):
    """EMAN's ``get_optimal_delta``: bisection on delta ∈ (0, 180] for a target count ``n``."""
    mult = sym.nsym if breaksym else 1
    delta, lo, hi = 180.0, 0.0, 180.0
    best = (math.inf, 0, delta)
    while True:
        tally = mult * direction_fn(sym, delta, inc_mirror or breaksym, alt_min, alt_max)[0].size
        if tally == n:
            return delta
        # The count jumps where a ring enters/leaves; EMAN then returns the final midpoint, we
        # return the visited delta whose count is closest to n (ties: the larger count).
        best = min(best, (abs(tally - n), -tally, delta))
        if hi - lo < 1e-4:
            return best[2]
        if tally < n:
            hi = delta
            delta -= (delta - lo) / 2.0
        else:
            lo = delta
            delta += (hi - delta) / 2.0


# ------------------------------------------------------------------------- public API
def _expand_phi(az, alt, phitoo, base):
    """Attach phi to each direction: the base phi plus EMAN's phitoo copies (phi + k·phitoo)."""
    base = np.broadcast_to(np.asarray(base, dtype=np.float64), az.shape)
    extra = []
    if phitoo > 0:
        p = _F(phitoo)
        while p <= _F(360.0) - _F(phitoo):
            extra.append(float(p))
            p = _F(p + _F(phitoo))
    steps = np.concatenate([[0.0], extra])
    k = steps.size
    phi = base[:, None] + steps[None, :]
    phi = np.where(steps[None, :] > 0, np.mod(phi, 360.0), phi)
    return np.stack([np.repeat(az, k), np.repeat(alt, k), phi.ravel()], axis=1)


def orientations(gen: str = "eman", sym="c1", delta: float | None = None, n: int | None = None,
                 inc_mirror: bool = False, phitoo: float = 0.0, random_phi: bool = False,
                 perturb: bool = False, alt_min: float = 0.0, alt_max: float | None = None,
                 rng: np.random.Generator | None = None, *, breaksym: bool = False,
                 az: float = 0.0, alt: float = 0.0, phi: float = 0.0) -> np.ndarray:
    """Generate projection / search orientations covering the asymmetric unit of ``sym``.

    Parameters
    ----------
    gen : {"eman", "even", "saff", "rand", "single"}
    sym : str or Symmetry
    delta : float, optional
        Angular step between neighbouring directions, degrees (``eman``, ``even``, ``saff``).
    n : int, optional
        Target number of directions instead of ``delta`` (found by bisection; for ``rand`` the
        number of random orientations). Exactly one of ``delta``/``n`` for the grid generators.
    inc_mirror : bool
        Also cover the mirror half of the asymmetric unit.
    phitoo : float
        If > 0, add in-plane angles ``phi + k·phitoo`` (k = 1 … while ≤ 360 − phitoo) to each
        direction (EMAN order: all phis of a direction together).
    random_phi : bool
        Base phi uniform in [0, 360) instead of 0.
    perturb : bool
        ``eman`` only: Gaussian jitter σ = δ/8 in alt and h/8 in az (not the top view).
    alt_min, alt_max : float
        Altitude limits, degrees (grid generators).
    rng : numpy Generator, optional
        For ``rand``, ``random_phi`` and ``perturb``.
    breaksym : bool, keyword
        ``eman`` only: replicate one unit's directions through all operators (``R·S_j``); without
        ``inc_mirror`` keep only those with ``R[2, 2] ≥ 0`` (EMAN).
    az, alt, phi : float, keyword
        The orientation returned by ``single``.

    Returns
    -------
    ndarray, float64, shape ``(n_orient, 3)``: EMAN ``(az, alt, phi)`` degrees.

    Raises
    ------
    InputError
        Unknown generator, missing/extra ``delta``/``n``, non-positive values.
    """
    rng = np.random.default_rng() if rng is None else rng
    symm = get_symmetry(sym)
    src = f"orientation generator '{gen}'"
    if gen not in GENERATORS:
        raise InputError(f"unknown orientation generator '{gen}'", source="orientgen",
                         fix=f"use one of {', '.join(GENERATORS)}")
    if phitoo < 0:
        raise InputError(f"phitoo must be ≥ 0, got {phitoo}", source=src)
    if gen == "single":
        return np.array([[float(az), float(alt), float(phi)]])
    if gen == "rand":
        if n is None or n <= 0:
            raise InputError("the rand generator needs a positive n", source=src,
                             fix="e.g. rand:n=1000")
        R = _random_in_unit(symm, int(n), inc_mirror, random_phi, rng)
        o = matrix_to_eman(R)
        return _expand_phi(o[:, 0], o[:, 1], phitoo, o[:, 2]) if phitoo > 0 else o
    if (delta is None) == (n is None):
        raise InputError("give exactly one of delta and n", source=src,
                         fix="e.g. eman:delta=5 or eman:n=500")
    if (delta is not None and delta <= 0) or (n is not None and n <= 0):
        raise InputError("delta and n must be positive", source=src)
    fn = _DIRECTION_GENERATORS[gen]
    breaksym = breaksym and gen == "eman"
    if n is not None:
        delta = _optimal_delta(fn, symm, int(n), inc_mirror, alt_min, alt_max, breaksym)
    az_d, alt_d, h = fn(symm, float(delta), inc_mirror or breaksym, alt_min, alt_max)
    if perturb and gen == "eman":
        jitter = alt_d != 0
        alt_d = alt_d + np.where(jitter, rng.normal(0.0, 0.125 * delta, alt_d.size), 0.0)
        az_d = az_d + np.where(jitter, rng.normal(0.0, 1.0, az_d.size) * 0.125 * h, 0.0)
    if symm.is_platonic:
        az_d = az_d + symm.az_offset
    if symm.kind == "h" and inc_mirror and gen != "saff":
        # mirror ring at 180 − alt (not on the equator itself), interleaved as EMAN does;
        # saff already spirals over the whole mirrored band
        mirror = alt_d != 90.0
        az_d, alt_d = _interleave_mirror(az_d, alt_d, mirror)
    base = rng.uniform(0.0, 359.99999, az_d.size) if random_phi else 0.0
    out = _expand_phi(az_d, alt_d, phitoo, base)
    if breaksym:
        out = _break_symmetry(out, symm, inc_mirror)
    return out


def _interleave_mirror(az, alt, mirror):
    rows_az, rows_alt = [], []
    for a, b, m in zip(az, alt, mirror):
        rows_az.append(a)
        rows_alt.append(b)
        if m:
            rows_az.append(a)
            rows_alt.append(180.0 - b)
    return np.asarray(rows_az), np.asarray(rows_alt)


def _break_symmetry(o, symm, inc_mirror):
    R = eman_to_matrix(*o.T)
    allR = np.concatenate([R] + [R @ symm.matrices[j] for j in range(1, symm.nsym)])
    if not inc_mirror:
        allR = allR[allR[:, 2, 2] >= 0]
    return matrix_to_eman(allR)


def _random_in_unit(symm, n, inc_mirror, random_phi, rng):
    """Uniform random directions (Marsaglia), reduced into the unit by the operators; without
    mirror, directions in the mirror half are rejected and redrawn."""
    out = []
    have = 0
    while have < n:
        m = max(2 * (n - have), 16)
        u = rng.uniform(-1.0, 1.0, (m, 2))
        s = (u ** 2).sum(axis=1)
        u, s = u[s <= 1.0], s[s <= 1.0]
        a = 2.0 * np.sqrt(1.0 - s)
        v = np.stack([a * u[:, 0], a * u[:, 1], 2.0 * s - 1.0], axis=1)
        alt_az = direction_to_alt_az(v)
        phi = rng.uniform(0.0, 360.0, v.shape[0]) if random_phi else 0.0
        R = eman_to_matrix(alt_az[:, 1], alt_az[:, 0], phi)
        if symm.nsym > 1 and symm.kind != "h":
            R, _ = symm.reduce_to_asym_unit(R)
        if not inc_mirror:
            d = direction_to_alt_az(R[:, 2, :])
            R = R[symm.in_asym_unit(d[:, 0], d[:, 1], False)]
        out.append(R)
        have += R.shape[0]
    return np.concatenate(out)[:n]


def parse_orientgen(spec: str) -> tuple[str, dict]:
    """Parse an EMAN orientation-generator string, e.g. ``"eman:delta=5:inc_mirror=0:perturb=1"``.

    Returns
    -------
    (name, kwargs) : tuple
        ``kwargs`` are typed keyword arguments for :func:`orientations`.

    Raises
    ------
    InputError
        Unknown generator or option, or a value that does not parse.
    """
    src = f"orientgen string '{spec}'"
    fix = (f"write <generator>[:<option>=<value>...] with generator in {', '.join(GENERATORS)} "
           f"and options {', '.join(_OPTION_TYPES)}, e.g. eman:delta=5:inc_mirror=0")
    parts = str(spec).strip().split(":")
    name = parts[0].strip().lower()
    if name not in GENERATORS:
        raise InputError(f"unknown orientation generator '{parts[0]}'", source=src, fix=fix)
    kwargs: dict = {}
    for item in parts[1:]:
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        key, val = key.strip().lower(), val.strip()
        if not sep or key not in _OPTION_TYPES:
            raise InputError(f"bad option '{item}'", source=src, fix=fix)
        typ = _OPTION_TYPES[key]
        try:
            if typ is bool:
                low = val.lower()
                if low not in ("0", "1", "true", "false", "yes", "no"):
                    raise ValueError(val)
                kwargs[key] = low in ("1", "true", "yes")
            elif typ is int:
                kwargs[key] = int(float(val)) if float(val).is_integer() else int(val)
            else:
                kwargs[key] = float(val)
        except ValueError:
            raise InputError(f"option '{key}' needs a {typ.__name__}, got '{val}'",
                             source=src, fix=fix) from None
    return name, kwargs


def orientations_from_string(spec: str, sym="c1", rng: np.random.Generator | None = None
                             ) -> np.ndarray:
    """``orientations(*parse_orientgen(spec), sym=sym)``: orientations from an EMAN string."""
    name, kwargs = parse_orientgen(spec)
    return orientations(name, sym=sym, rng=rng, **kwargs)
