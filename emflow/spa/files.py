"""File-level helpers of the SPA workflow scripts: particles with CTFs, EMAN header ↔ arrays.

Kept out of the kernels so they stay I/O free; scripts call these and then the stage functions.
"""

from __future__ import annotations

import numpy as np

from emflow.ctf import CTF
from emflow.errors import InputError


def relion_defocus_to_eman(defocus_u_a, defocus_v_a, angle_deg):
    """RELION astigmatism ``(rlnDefocusU, rlnDefocusV, rlnDefocusAngle)`` → EMAN/emflow
    ``(defocus_um, dfdiff_um, dfang_deg)``, for any U, V (the one place this is converted).

    RELION (github 3dem/relion, src/ctf.cpp L249-258, commit 73f0a3c0): the defocus quadratic form is
    ``A = Qᵀ·diag(−U, −V)·Q`` with ``Q`` the rotation by ``rlnDefocusAngle``, i.e. the defocus along
    the frequency direction θ is ``(U+V)/2 + (U−V)/2·cos(2(θ − angle))`` (src/ctf.h L304-314,
    ``getDeltaF``): ``U`` lies along ``angle``, whichever of U, V is larger.
    EMAN2 (github cryoem/eman2 libEM/ctf.h L241, L302): ``df(θ) = defocus + dfdiff/2·cos(2θ − 2·dfang)``,
    ``dfang`` the major (larger-defocus) axis counter-clockwise from x; emflow.ctf uses the same.
    So ``defocus = (U+V)/2``, ``dfdiff = |U−V|`` and ``dfang = angle`` when U ≥ V, ``angle + 90°``
    when V > U (the larger defocus lies along V), folded into [0, 180).

    Returns three float64 arrays (µm, µm, degrees).
    """
    u = np.asarray(defocus_u_a, np.float64)
    v = np.asarray(defocus_v_a, np.float64)
    ang = np.asarray(angle_deg, np.float64)
    dfang = np.where(u >= v, ang, ang + 90.0) % 180.0
    return (u + v) / 2e4, np.abs(u - v) / 1e4, dfang


def _particle_table(star: dict, source: str) -> dict:
    parts = star.get("particles")
    if parts is None:  # RELION 3.0: one unnamed (data_) block
        parts = next((t for t in star.values() if isinstance(t, dict) and "rlnDefocusU" in t), None)
    if not parts or "rlnDefocusU" not in parts:
        raise InputError("no particle table with rlnDefocusU", source=source,
                         fix="give a RELION particle STAR with CTF columns (data_particles with rlnDefocusU/V/Angle)")
    return parts


def star_optics_values(star: dict, key: str, source: str, required: bool = True) -> np.ndarray | None:
    """Per-particle values of ``key``: the particle column if present (RELION 3.0), else the
    value of the particle's optics group (RELION 3.1+ ``data_optics``, matched by ``rlnOpticsGroup``).

    Returns float64 ``(n,)``, or None when absent and not ``required`` (InputError when required).
    """
    parts = _particle_table(star, source)
    n = len(parts["rlnDefocusU"])
    if key in parts:
        return np.asarray(parts[key], np.float64)
    optics = star.get("optics")
    if optics and key in optics:
        groups = np.asarray(optics.get("rlnOpticsGroup", np.arange(1, len(optics[key]) + 1)), np.int64)
        values = dict(zip(groups.tolist(), np.asarray(optics[key], np.float64).tolist()))
        if "rlnOpticsGroup" in parts:
            pg = np.asarray(parts["rlnOpticsGroup"], np.int64)
        elif len(values) == 1:
            pg = np.full(n, groups[0])
        else:
            raise InputError(f"{len(values)} optics groups but the particles have no rlnOpticsGroup column",
                             source=source, fix="add rlnOpticsGroup to data_particles")
        missing = sorted(set(pg.tolist()) - set(values))
        if missing:
            raise InputError(f"particles refer to optics group(s) {missing[:5]} that data_optics does not list",
                             source=source,
                             fix="use the STAR file RELION wrote (data_optics and data_particles together)")
        return np.array([values[g] for g in pg.tolist()], np.float64)
    if required:
        raise InputError(f"no {key} in the particles or in data_optics", source=source,
                         fix=f"add {key} (RELION 3.1+: a column of data_optics; RELION 3.0: a particle column)")
    return None


def star_stack_order(star: dict, n: int, stack_path: str, source: str) -> np.ndarray:
    """Row of the STAR table of each stack image: ``rlnImageName`` ``k@stack`` (1-based k) must name
    every image of the one stack once (any row order). Without rlnImageName rows follow the stack."""
    import os

    parts = _particle_table(star, source)
    rows = len(parts["rlnDefocusU"])
    if rows != n:
        raise InputError(f"{rows} STAR rows but {n} particles in {stack_path}", source=source,
                         fix="use the STAR file of this stack")
    names = parts.get("rlnImageName")
    if names is None:
        return np.arange(n)
    idx, stacks = [], set()
    for name in names:
        k, _, stack = str(name).partition("@")
        if not stack or not k.isdigit():
            raise InputError(f"rlnImageName {name!r} is not 'k@stack'", source=source, fix="use RELION's k@stack names")
        idx.append(int(k) - 1)
        stacks.add(os.path.basename(stack))
    if len(stacks) > 1 or os.path.basename(stack_path) not in stacks:
        raise InputError(f"the particles are in stack(s) {sorted(stacks)[:3]}, not in {os.path.basename(stack_path)}",
                         source=source, fix="emflow reads one stack: join them, e.g. `relion_stack_create --i "
                         "particles.star --o joined` and use joined.mrcs with joined.star")
    idx = np.asarray(idx)
    if sorted(idx.tolist()) != list(range(n)):
        raise InputError("rlnImageName does not name every image of the stack exactly once", source=source,
                         fix="use the STAR file of this stack")
    order = np.empty(n, np.int64)
    order[idx] = np.arange(n)
    return order


def ctfs_from_star(star: dict, n: int, source: str, stack_path: str | None = None) -> list[CTF]:
    """Per-particle :class:`CTF` (in stack order) from a RELION 3.0 or 3.1+ particle STAR.

    Defocus U/V (Å) and angle per particle (:func:`relion_defocus_to_eman`); voltage, Cs and
    amplitude contrast per particle or per optics group (:func:`star_optics_values`); optional
    rlnPhaseShift (deg) and rlnCtfBfactor (Å², same ``exp(−B s²/4)`` envelope). Data whose CTF was
    already applied (``rlnCtfDataAreCtfPremultiplied`` = 1) are refused.
    """
    parts = _particle_table(star, source)
    pre = star_optics_values(star, "rlnCtfDataAreCtfPremultiplied", source, required=False)
    if pre is not None and np.any(pre != 0):
        raise InputError("rlnCtfDataAreCtfPremultiplied = 1: the images are already multiplied by their CTF",
                         source=source, fix="give the particles as extracted (not CTF-premultiplied)")
    order = star_stack_order(star, n, stack_path, source) if stack_path else np.arange(n)
    if not stack_path and len(parts["rlnDefocusU"]) != n:
        raise InputError(f"{len(parts['rlnDefocusU'])} STAR rows but {n} particles", source=source,
                         fix="use the STAR file of this stack")
    du = np.asarray(parts["rlnDefocusU"], np.float64)
    dv = np.asarray(parts.get("rlnDefocusV", du), np.float64)
    ang = np.asarray(parts.get("rlnDefocusAngle", np.zeros_like(du)), np.float64)
    defocus, dfdiff, dfang = relion_defocus_to_eman(du, dv, ang)
    volt, cs, amp = (star_optics_values(star, k, source)
                     for k in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"))
    phase = star_optics_values(star, "rlnPhaseShift", source, required=False)
    bfac = star_optics_values(star, "rlnCtfBfactor", source, required=False)
    phase = np.zeros_like(du) if phase is None else phase
    bfac = np.zeros_like(du) if bfac is None else bfac
    return [CTF(defocus_um=float(defocus[r]), voltage_kv=float(volt[r]), cs_mm=float(cs[r]), ampcont=float(amp[r]),
                bfactor=float(bfac[r]), dfdiff_um=float(dfdiff[r]), dfang_deg=float(dfang[r]),
                phase_shift_deg=float(phase[r])) for r in order.tolist()]


CONTRASTS = ("dark", "bright")


def _check_contrast_name(contrast: str, source: str = "input.spa_contrast") -> None:
    if contrast not in CONTRASTS:
        raise InputError(f"contrast {contrast!r} is not one of {CONTRASTS}", source=source,
                         fix="declare the particles' contrast: dark (as recorded) or bright (protein white)")


def to_protein_white(stack: np.ndarray, contrast: str, source: str = "input.spa_contrast") -> np.ndarray:
    """The one place the declared particle contrast is converted to emflow's protein-white
    convention: ``dark`` (protein darker than background, as recorded) is multiplied by −1,
    ``bright`` is kept."""
    _check_contrast_name(contrast, source)
    stack = np.asarray(stack, np.float32)
    return -stack if contrast == "dark" else stack


def contrast_score(stack: np.ndarray, inner: float = 0.15, outer: float = 0.38) -> float:
    """z-score of the mean particle's centre-minus-edge: per image, the mean inside radius
    ``inner·box`` minus the mean of the ring beyond ``outer·box`` (a low-pass, contrast-sign
    statistic), averaged over the stack and divided by its standard error.

    Positive for protein-white particles (phase-flipped, or with the CTF's low-frequency sign),
    negative for protein-dark ones; ``|z| < 3`` is inconclusive. stack: ``[n, y, x]``.
    """
    return _z_of(centre_minus_edge(stack, inner, outer))


def centre_minus_edge(stack: np.ndarray, inner: float = 0.15, outer: float = 0.38) -> np.ndarray:
    """Per image ``(n,)`` float: the mean inside radius ``inner·box`` minus the mean of the ring beyond
    ``outer·box`` (:func:`contrast_score` of a stack read in blocks: concatenate these, then :func:`_z_of`)."""
    stack = np.asarray(stack, np.float32)
    b = stack.shape[-1]
    yy, xx = np.indices(stack.shape[-2:])
    r = np.hypot(yy - stack.shape[-2] // 2, xx - b // 2)
    centre, edge = r < inner * b, r >= outer * b
    return stack[:, centre].mean(axis=1) - stack[:, edge].mean(axis=1)


def _z_of(d: np.ndarray) -> float:
    se = d.std() / np.sqrt(len(d)) if len(d) > 1 else 0.0
    return float(d.mean() / se) if se > 0 else 0.0


def check_contrast(stack: np.ndarray, declared: str, source: str, z_bar: float = 3.0) -> float:
    """Stop when the data contradict the declared contrast.

    ``stack``: particles already converted to protein white (:func:`to_protein_white`) and
    phase-flipped when CTFs are known. Returns the :func:`contrast_score`; raises
    :class:`InputError` when it is below ``−z_bar`` (the particles are the other contrast).
    """
    return _contrast_verdict(contrast_score(stack), declared, source, z_bar)


def _contrast_verdict(z: float, declared: str, source: str, z_bar: float = 3.0) -> float:
    if z < -z_bar:
        other = "bright" if declared == "dark" else "dark"
        raise InputError(
            f"the particles were declared {declared} but look {other}: after conversion to protein white the "
            f"mean particle is darker at its centre than at its edge (z = {z:.1f})", source=source,
            fix=f"set input.spa_contrast: {other} (if the particles are centred in their boxes)")
    return z


def ctf_header(c: CTF, apix: float) -> dict:
    """EMAN2 image attributes (``ctf`` object) of one particle's CTF."""
    from emflow.io import ctf_to_dict

    return ctf_to_dict({"defocus": c.defocus_um, "dfdiff": c.dfdiff_um, "dfang": c.dfang_deg, "bfactor": c.bfactor,
                        "ampcont": c.ampcont, "voltage": c.voltage_kv, "cs": c.cs_mm, "apix": apix})


def read_particles(path: str, rows=None):
    """``(stack float32 (n, b, b), ctfs list or None, apix)`` from an EMAN HDF written by spa_prepare;
    ``rows`` (indices) reads only those images and headers (a simmx chunk), else all."""
    from emflow.io import ctf_from_dict, read_hdf_stack

    stack, headers = read_hdf_stack(path, indices=rows)
    from emflow.pixel_size import check_pixel_size

    apix = check_pixel_size(headers[0].get("apix_x") if headers else None, source=path, kind="hdf")
    ctfs = None
    if headers and "ctf" in headers[0]:
        ctfs = []
        for h in headers:
            d = ctf_from_dict(h["ctf"], source=path)
            ctfs.append(CTF(defocus_um=d["defocus"], voltage_kv=d["voltage"], cs_mm=d["cs"], ampcont=d["ampcont"],
                            bfactor=d["bfactor"], dfdiff_um=d["dfdiff"], dfang_deg=d["dfang"]))
    return np.asarray(stack, np.float32), ctfs, apix


def read_projections(path: str):
    """``(projections, eulers (n, 3) EMAN degrees, rotations (n, 3, 3))`` from projections_XX.hdf."""
    from emflow.geometry import matrix_to_eman
    from emflow.io import read_hdf_stack, transform_from_dict

    stack, headers = read_hdf_stack(path)
    R = np.stack([np.asarray(transform_from_dict(h["xform.projection"])[0], float) for h in headers])
    return np.asarray(stack, np.float32), matrix_to_eman(R), R


def write_projections(path: str, proj: np.ndarray, R: np.ndarray, apix: float) -> None:
    """projections_XX.hdf: one image per orientation with ``xform.projection`` (e2project3d)."""
    from emflow.io import transform_to_dict, write_hdf_stack

    headers = [{"xform.projection": transform_to_dict(r), "ptcl_repr": 0, "model_id": 0} for r in R]
    write_hdf_stack(path, proj, headers, apix=apix)


def write_classes(path: str, result_path: str, avgs: np.ndarray, info: dict, R: np.ndarray, projections_path: str,
                  particles_path: str, apix: float) -> None:
    """classes_XX.hdf (e2classaverage headers, spec §4.4, with ``class_ssnr``) and cls_result_XX.hdf."""
    from emflow.io import transform_to_dict, write_hdf_stack
    from emflow.spa.classify import CLASSMX_PLANES

    headers = [{"xform.projection": transform_to_dict(R[c]), "projection_image": str(projections_path),
                "projection_image_idx": c, "ptcl_repr": int(info["ptcl_repr"][c]),
                "class_ptcl_idxs": [int(i) for i in info["members"][c]],
                "exc_class_ptcl_idxs": [int(i) for i in info["excluded"][c]], "class_ptcl_src": str(particles_path),
                "class_qual": float(np.nan_to_num(info["quality"][c], nan=0.0)),
                "class_ssnr": [round(float(v), 5) for v in info["class_ssnr"][c]]} for c in range(len(avgs))]
    write_hdf_stack(path, avgs, headers, apix=apix)
    write_hdf_stack(result_path, info["result"], [{"classmx_plane": p} for p in CLASSMX_PLANES])


def read_classes(path: str):
    """``(averages, rotations (n, 3, 3), ptcl_repr (n,), apix)`` from classes_XX.hdf."""
    from emflow.io import read_hdf_stack, transform_from_dict
    from emflow.pixel_size import check_pixel_size

    avgs, headers = read_hdf_stack(path)
    apix = check_pixel_size(headers[0].get("apix_x"), source=path, kind="hdf")
    R = np.stack([np.asarray(transform_from_dict(h["xform.projection"])[0], float) for h in headers])
    return np.asarray(avgs, np.float32), R, np.array([h.get("ptcl_repr", 0) for h in headers], float), apix


def prepare_particles(path: str, star: str | None, contrast: str, apix_expected, apix_key: str, apix_override,
                      out: str, block_mb: float | None = None) -> tuple[int, int, float, float, bool]:
    """spa_prepare: the particle stack (MRC/HDF, + RELION STAR CTFs) made protein white (declared
    ``contrast``), phase-flipped, contrast-checked and edge-mean normalised, written to ``out`` (EMAN2 HDF
    with CTF headers) a block of at most ``block_mb`` MB of images at a time (the input memory-mapped or read
    by rows): the job's memory does not grow with the stack. The contrast check uses every image; when it
    fails, ``out`` is not written (:class:`emflow.io.HdfStackWriter` is atomic).

    The pixel size comes from the files' own metadata (STAR optics rlnImagePixelSize, else the stack
    header); ``apix_expected`` (config ``apix_key``) is a check, ``apix_override`` the explicit fix for an
    unset header. Returns ``(n, box, apix, contrast_z, phase_flipped)``.
    """
    from emflow.io import HdfStackWriter, hdf_count, read_hdf_stack, read_mrc, read_star
    from emflow.io.hdf import hdf_image_shape
    from emflow.pipeline.resources import SPA_PREPARE_BLOCK_MB
    from emflow.pixel_size import particles_pixel_size
    from emflow.spa.classaverage import normalize_stack
    from emflow.spa.refine_loop import phase_flip_particles

    apix = particles_pixel_size(path, star, expected=apix_expected, key=apix_key, override=apix_override)
    if path.endswith(".hdf"):
        n = hdf_count(path)
        shape = (n,) + hdf_image_shape(path) if n else (0,)  # from the dataspace, no image read

        def rows(a, b):
            return read_hdf_stack(path, indices=np.arange(a, b))[0]
    else:
        data = read_mrc(path, mmap=True, check_apix=False)[0]  # float32 files stay on disk
        shape, n = data.shape, len(data)

        def rows(a, b):
            return data[a:b]
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] % 2:
        raise InputError(f"particles must be a stack of square, even boxes, got {shape}", source=path)
    _check_contrast_name(contrast)  # before the STAR is read and anything is written
    ctfs = ctfs_from_star(read_star(star), n, star, stack_path=path) if star else None
    block = max(1, int((block_mb or SPA_PREPARE_BLOCK_MB) * 1e6 / (4.0 * shape[1] * shape[2])))
    d = []
    with HdfStackWriter(out, apix=apix) as w:  # nothing is committed if the contrast check below fails
        for a in range(0, n, block):
            b = min(n, a + block)
            stack = to_protein_white(rows(a, b), contrast)
            if ctfs:
                stack = phase_flip_particles(stack, ctfs[a:b], apix)
            d.append(centre_minus_edge(stack))
            headers = [{"ctf": ctf_header(c, apix)} for c in ctfs[a:b]] if ctfs else [{} for _ in range(b - a)]
            w.append(normalize_stack(stack, "normalize.edgemean"), headers)
        z = _contrast_verdict(_z_of(np.concatenate(d) if d else np.zeros(0)), contrast,
                              source="config key 'input.spa_contrast'")
    return n, shape[-1], apix, z, bool(ctfs)


def write_gold_iteration(out, k: int, r: dict, apix: float) -> dict:
    """Write iteration ``k``'s half maps and FSC curves of a :func:`emflow.spa.gold.gold_iteration` result
    ``r`` to the spa_gold outputs ``out`` (``even``/``odd``/``fsc``/``fsc_unmasked`` lists); returns the
    curves for the plot (``freq`` 1/Å, ``true``, ``unmasked``). FSC files: :func:`emflow.io.write_fsc_curve`."""
    from emflow.io import write_fsc_curve, write_mrc

    g = r["fsc_all"]
    write_mrc(out.even[k], r["maps"]["even"], apix)
    write_mrc(out.odd[k], r["maps"]["odd"], apix)
    write_fsc_curve(out.fsc[k], g["true"], apix)
    write_fsc_curve(out.fsc_unmasked[k], g["unmasked"], apix)
    return {"freq": g["true"].freq / apix, "true": g["true"].fsc, "unmasked": g["unmasked"].fsc}


def particles_box_apix(path: str, star: str | None, expected: float | None, override: float | None):
    """``(box, Å/px)`` of a user's particle stack before the run (header, STAR optics; as spa_prepare)."""
    from emflow.io import read_hdf_stack, read_mrc_header
    from emflow.pixel_size import particles_pixel_size

    box = read_hdf_stack(path, indices=[0])[0].shape[-1] if path.endswith(".hdf") else read_mrc_header(path)["shape"][-1]
    return int(box), particles_pixel_size(path, star, expected=expected, override=override)


def start_model(kind: str, box: int, apix: float, source: str | None, blob_radius_a: float | None) -> np.ndarray:
    """threed_00 from ``spa.startingmodel``: ``blob`` (soft sphere of ``blob_radius_a``), ``truth_lowpass30``
    (the map ``source`` tophat-filtered to 30 Å) or a map path (``source``) with the particles' box and
    pixel size (else an :class:`InputError` with the e2proc3d command that resamples it). float32."""
    from emflow.filters import lowpass_tophat
    from emflow.io import read_mrc
    from emflow.spa.initial_model import blob_model

    if kind == "blob":
        return np.asarray(blob_model(box, apix, radius_a=blob_radius_a), np.float32)
    model, mapix = read_mrc(source)
    resample = (f"resample the model to box {box} at {apix:.3f} Å/px, e.g. `e2proc3d.py {source} model_resampled.mrc "
                f"--scale={mapix / apix:.4f} --clip={box} --apix={apix:.3f}`, and set spa.startingmodel to the result")
    if model.shape != (box, box, box):
        raise InputError(f"starting model box {model.shape} differs from particle box {box}",
                         source="spa.startingmodel", fix=resample)
    if abs(mapix - apix) > 0.01 * apix:
        raise InputError(f"starting model pixel size {mapix:.3f} Å differs from the particles' {apix:.3f} Å",
                         source="spa.startingmodel", fix=resample)
    return np.asarray(lowpass_tophat(model, apix, 30.0) if kind == "truth_lowpass30" else model, np.float32)
