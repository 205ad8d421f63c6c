"""The subtomogram-refinement jobs (rules spt_refine_setup, _align, _postprocess, _truth_eval; spec §3.6):
read the job's files, call :mod:`emflow.sta.spt_refine`, :mod:`emflow.sta.subtilt_refine`,
:mod:`emflow.sta.postprocess` and :mod:`emflow.sta.spt_eval`, write the outputs. The workflow scripts
only map the rule's named inputs, outputs and params onto these functions."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np

from emflow.errors import InputError
from emflow.geometry import angle_between, matrix_to_eman
from emflow.io import atomic_write, read_fsc_txt, read_hdf_stack, read_lst, write_fsc_curve, write_hdf_stack, write_mrc
from emflow.io.relion_tomo import write_relion5_particles
from emflow.pipeline import plots
from emflow.pipeline.log import progress_logger
from emflow.pixel_size import check_pixel_size
from emflow.reconstruct import Reconstructor
from emflow.sta.postprocess import next_resolution, postprocess_halves
from emflow.sta.spt_eval import evaluate_iteration, match_truth, read_truth, tomogram_of
from emflow.sta.spt_files import (
    ImageLoader,
    gather_metadata,
    load_reference,
    read_map,
    read_state,
    read_tables,
    starting_references,
    write_state,
    write_tables,
)
from emflow.sta.spt_refine import (
    AlignParams,
    RefineState,
    align_particles_p,
    chunk_ranges,
    parse_keep,
    reconstruct_halves,
    select_subtilts,
)
from emflow.sta.subtilt_refine import refine_subtilts

__all__ = ["setup_run", "align_chunk", "gather_chunks", "reconstruct_chunk", "merge_partial_halves",
           "postprocess_iteration", "export_relion", "truth_eval_iteration", "summarize_truth_evals"]

log = logging.getLogger(__name__)

# the partial reconstructions of spt_refine_make3d (emflow.sta.spt_refine.reconstruct_halves)
_PARTIAL_PAD, _PARTIAL_KERNEL = 2, "trilinear"


def _write_map(path: str, vol: np.ndarray, apix: float) -> None:
    write_hdf_stack(path, np.asarray(vol, np.float32)[None], [{"apix_x": apix, "apix_y": apix, "apix_z": apix}],
                    apix=apix)


def setup_run(*, lst: str, ref: str, halves: tuple[str, str] | None, out: Mapping[str, str], spt: Mapping,
              shrink: float, user_ref: bool, apix_override: Mapping) -> None:
    """Set ``lst`` + reference → run tables, identity alignments, threed_00 even/odd (spec §3.6 steps 0-1).

    ``out`` maps the output names (info3d, info2d, ali3d, ali2d, even, odd, threed, res, params) to paths;
    ``halves`` are the goldcontinue half maps (None otherwise).
    """
    table = gather_metadata(read_lst(lst), shrink=shrink, maxtilt_deg=spt["maxtilt_deg"], source=lst)
    if table.n3d == 0 or table.n2d == 0:
        raise InputError("the particle set is empty", source=lst, fix="check picking and extraction")
    img, heads = read_hdf_stack(table.path3d[0], [table.idx3d[0]])
    box = img.shape[-1]
    apix = check_pixel_size(heads[0].get("apix_x"), source=table.path3d[0], kind="hdf",
                            what="particle header (apix_x)")
    write_tables(table, out["info3d"], out["info2d"])
    write_state(table, RefineState.identity(table), out["ali3d"], out["ali2d"])
    even, odd = starting_references(ref, box, apix, startres=spt["startres"], goldstandard=spt["goldstandard"],
                                    goldcontinue=spt["goldcontinue"], halves=halves,
                                    key="spt_refine.ref" if user_ref else ref, overrides=dict(apix_override))
    if spt["goldcontinue"] and halves is not None:
        log.info("goldcontinue: the halves start from %s and %s (unfiltered, independent)", *halves)
    elif not spt["goldstandard"]:
        log.warning("goldstandard is off: both halves start from the same unfiltered reference (model bias possible)")
    for name, vol in (("even", even), ("odd", odd), ("threed", 0.5 * (even + odd))):
        _write_map(out[name], vol, apix)
    res0 = spt["maxres"] if spt["maxres"] > 0 else spt["startres"]
    with atomic_write(out["res"]) as tmp, open(tmp, "w") as f:
        json.dump({"iteration": 0, "maxres_a": res0, "box": box, "apix": apix}, f, indent=1)
    with atomic_write(out["params"]) as tmp, open(tmp, "w") as f:
        json.dump({**spt, "ref": ref, "box": box, "apix": apix, "n_particles": table.n3d, "n_subtilts": table.n2d},
                  f, indent=1)
    log.info("%d particles (%d even, %d odd), %d subtilts, box %d, %.3f Å/px", table.n3d,
             int((table.cls == 0).sum()), int((table.cls == 1).sum()), table.n2d, box, apix)


def align_chunk(*, inp: Mapping[str, str], chunk_out: str, it: int, chunk: int, spt: Mapping,
                microscope: Mapping) -> None:
    """One chunk of particles, one iteration (p: align3d; t/r/d: subtilt refinement) → npz.

    ``inp`` maps info3d, info2d, ali3d, ali2d, even, odd, res to paths; ``spt`` holds this
    iteration's keys (:func:`emflow.sta.spt_refine.iteration_params`).
    """
    kind = spt["kind"]
    table = read_tables(inp["info3d"], inp["info2d"])
    state = read_state(table, inp["ali3d"], inp["ali2d"])
    even, apix = read_map(inp["even"])
    odd, _ = read_map(inp["odd"])
    if apix is None:
        raise InputError("the reference has no pixel size", source=inp["even"], fix="rerun spt_refine_setup")
    refs = [even, odd] if spt["goldstandard"] else [0.5 * (even + odd)] * 2
    with open(inp["res"]) as f:
        res_a = float(json.load(f)["maxres_a"])
    a, b = chunk_ranges(table.n3d, spt["chunk_size"])[chunk]
    parts = np.arange(a, b)
    loader = ImageLoader(table, even.shape[0])
    prog = progress_logger(log, f"iteration {it} ({kind}) particles {a}-{b - 1}", 1.0)
    minres = spt["minres"] or None
    if kind == "p":
        mode = spt["mode"]
        mode_keys = ({"maxang_deg": spt["maxang"]} if mode == "local"
                     else {"delta_deg": spt["delta_deg"], "npos": spt["npos"]})
        new = align_particles_p(table, state, parts, loader, refs, apix,
                                AlignParams(maxres_a=res_a, minres_a=minres, mode=mode, sym=spt["sym"],
                                            maxshift_px=spt["maxshift"], **mode_keys), progress=prog)
        log.info("p (%s) at %.1f Å: mean score %.4f", mode, res_a, float(new.score3d[parts].mean()))
    else:
        # neighbours may lie outside the chunk: the loader serves any subtilt of the run
        new = refine_subtilts(table, state, table.rows_of(parts), loader, refs, apix, kind, res_a, minres,
                              smooth=spt["smooth"], smooth_n=spt["smoothN"], maxshift_px=spt["maxshift"],
                              microscope=dict(microscope), progress=prog)
        r = table.rows_of(parts)
        dds = np.hypot(*(new.dshift[r] - state.dshift[r]).T)
        drot = angle_between(state.drot[r], new.drot[r])
        log.info("%s at %.1f Å: shift change rms %.2f px, rotation change median %.2f°, |ddefocus| median %.3f µm",
                 kind, res_a, float(np.sqrt(np.mean(dds ** 2))), float(np.median(drot)),
                 float(np.median(np.abs(new.ddef_um[r]))))
    rows = table.rows_of(parts)
    with atomic_write(chunk_out) as tmp, open(tmp, "wb") as f:
        np.savez(f, particles=parts, rows=rows, rot=new.rot[parts], shift=new.shift[parts],
                 score3d=new.score3d[parts], drot=new.drot[rows], dshift=new.dshift[rows],
                 score2d=new.score2d[rows], ddef_um=new.ddef_um[rows])


def gather_chunks(*, info3d: str, info2d: str, ali3d: str, ali2d: str, chunks: Sequence[str], ali3d_out: str,
                  ali2d_out: str) -> None:
    """Chunk results of one iteration (:func:`align_chunk`) → aliptcls3d_XX.lst / aliptcls2d_XX.lst (input order)."""
    table = read_tables(info3d, info2d)
    state = read_state(table, ali3d, ali2d)
    for path in chunks:
        with np.load(path) as d:
            p, r = d["particles"], d["rows"]
            state.rot[p], state.shift[p], state.score3d[p] = d["rot"], d["shift"], d["score3d"]
            state.drot[r], state.dshift[r] = d["drot"], d["dshift"]
            state.score2d[r], state.ddef_um[r] = d["score2d"], d["ddef_um"]
    write_state(table, state, ali3d_out, ali2d_out)
    log.info("%d chunks, mean particle score %.4f", len(chunks), float(state.score3d.mean()))


def reconstruct_chunk(*, inp: Mapping[str, str], rec_out: str, chunk: int, spt: Mapping, microscope: Mapping) -> None:
    """Partial even/odd reconstruction of one particle chunk (keep + score weights) → npz (summed by
    :func:`merge_partial_halves`). ``inp`` maps info3d, info2d, ali3d, ali2d, even to paths."""
    table = read_tables(inp["info3d"], inp["info2d"])
    state = read_state(table, inp["ali3d"], inp["ali2d"])
    ref, apix = read_map(inp["even"])
    if apix is None:
        raise InputError("the reference has no pixel size", source=inp["even"], fix="rerun spt_refine_setup")
    box = ref.shape[0]
    keep, w = select_subtilts(table, state, parse_keep(spt["keep"]))  # global quantiles: same in every chunk
    a, b = chunk_ranges(table.n3d, spt["chunk_size"])[chunk]
    rows = table.rows_of(np.arange(a, b))
    even, odd = reconstruct_halves(table, state, rows, ImageLoader(table, box), box, sym=spt["sym"], keep_mask=keep,
                                   weights=w, apix=apix, microscope=dict(microscope))
    with atomic_write(rec_out) as tmp, open(tmp, "wb") as f:
        np.savez(f, F_even=even.F, W_even=even.W, F_odd=odd.F, W_odd=odd.W, box=box, apix=apix,
                 n_even=even.n_inserted, n_odd=odd.n_inserted)
    log.info("particles %d-%d: %d of %d subtilts inserted (even %d, odd %d)", a, b - 1, int(keep[rows].sum()),
             rows.size, even.n_inserted, odd.n_inserted)


def merge_partial_halves(paths: Sequence[str], sym: str) -> tuple[Reconstructor, Reconstructor, int, float]:
    """Sum the partial even/odd reconstructions of the spt_refine_make3d chunks with
    :meth:`emflow.reconstruct.Reconstructor.merge` → ``(even, odd, box, apix)``."""
    halves: list[Reconstructor] = []
    box, apix = 0, 0.0
    for path in paths:
        with np.load(path) as d:
            box, apix = int(d["box"]), float(d["apix"])
            if not halves:
                halves = [Reconstructor(box, pad=_PARTIAL_PAD, kernel=_PARTIAL_KERNEL, sym=sym) for _ in range(2)]
            for acc, h in zip(halves, ("even", "odd")):
                part = Reconstructor(box, pad=_PARTIAL_PAD, kernel=_PARTIAL_KERNEL, sym=sym)
                part.F, part.W = d[f"F_{h}"], d[f"W_{h}"]
                part.n_inserted = int(d[f"n_{h}"]) if f"n_{h}" in d else 0
                acc.merge(part)
    if not halves:
        raise ValueError("merge_partial_halves: no partial reconstructions")
    return halves[0], halves[1], box, apix


def postprocess_iteration(*, recs: Sequence[str], res_in: str, out: Mapping[str, str], it: int, spt: Mapping) -> None:
    """Merge the partial reconstructions, postprocess (FSCs, masks, filtering), the next resolution, the
    FSC figure. ``out`` maps threed, threed_mrc, even, odd, mask, fsc_unmasked, fsc_masked, fsc_tight,
    res, png to paths; the FSC files follow :func:`emflow.io.write_fsc_curve`."""
    even, odd, box, apix = merge_partial_halves(recs, spt["sym"])
    with open(res_in) as f:
        res_prev = float(json.load(f)["maxres_a"])
    pp = postprocess_halves(even.finish(), odd.finish(), apix, res_prev, sym=spt["sym"])
    res_next = next_resolution(pp.fsc_masked, apix, res_prev, spt["maxres"])
    for name, vol in (("threed", pp.final), ("even", pp.even), ("odd", pp.odd), ("mask", pp.mask)):
        _write_map(out[name], vol, apix)
    write_mrc(out["threed_mrc"], pp.final, apix)
    curves = (("unmasked", pp.fsc_unmasked), ("masked", pp.fsc_masked), ("tight", pp.fsc_tight))
    for (_, c), name in zip(curves, ("fsc_unmasked", "fsc_masked", "fsc_tight")):
        write_fsc_curve(out[name], c, apix)
    summary = {"iteration": it, "kind": spt["kind"], "maxres_a": res_next, "aligned_at_a": res_prev,
               "res_0143_masked_a": pp.res_0143_a, "box": box, "apix": apix, "odd_to_even": pp.align_info}
    with atomic_write(out["res"]) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    plots.fsc_curves([(lab, c.freq_inv_a(apix), c.fsc) for lab, c in curves], out["png"],
                     f"iteration {it:02d} ({summary['kind']}): {pp.res_0143_a:.1f} Å at 0.143", thresholds=(0.143,))
    log.info("iteration %d: %.1f Å (masked FSC 0.143), next alignment resolution %.1f Å", it, pp.res_0143_a,
             res_next)


def export_relion(*, info3d: str, info2d: str, ali3d: str, ali2d: str, star_out: str, microscope: Mapping,
                  shrink: float) -> None:
    """Final alignments → particles_final.star in RELION 5's tomography layout
    (:func:`emflow.io.relion_tomo.write_relion5_particles`: optics with rlnTomoTiltSeriesPixelSize,
    rlnTomoName, rlnCenteredCoordinateX/Y/ZAngst, rlnAngleRot/Tilt/Psi)."""
    table = read_tables(info3d, info2d)
    state = read_state(table, ali3d, ali2d)
    # the refined centre is coord + t (px of the extraction shrink) → unbinned px from the tomogram centre
    xyz = (table.coord + state.shift) * shrink
    tomo = np.array([os.path.basename(p).split("__")[0] for p in table.path3d])
    particles = {name: (xyz[tomo == name], matrix_to_eman(state.rot[tomo == name]))
                 for name in dict.fromkeys(tomo.tolist())}
    order = np.concatenate([np.flatnonzero(tomo == name) for name in particles])
    write_relion5_particles(star_out, particles, apix=float(microscope["apix"]), voltage_kv=microscope["voltage_kv"],
                            cs_mm=microscope["cs_mm"], ampcont=microscope["ampcont"],
                            extra={"rlnRandomSubset": (table.cls + 1)[order],
                                   "rlnLogLikeliContribution": -np.asarray(state.score3d)[order]})
    log.info("%d particles of %d tomograms written (RELION 5: rlnCenteredCoordinate*Angst, rlnTomoName)", table.n3d,
             len(particles))


def truth_eval_iteration(*, inp: Mapping, out: Mapping[str, str], it: int, shrink: float) -> None:
    """(demo) One iteration vs the simulation truth → truth_eval json + FSC figure (gold standard and
    vs truth). ``inp`` maps info3d, info2d, ali3d, ali2d, threed, fsc_masked, res, truth (list),
    truth_map to paths."""
    table = read_tables(inp["info3d"], inp["info2d"])
    state = read_state(table, inp["ali3d"], inp["ali2d"])
    final, apix = read_map(inp["threed"])
    if apix is None:
        raise InputError("the map has no pixel size", source=inp["threed"], fix="rerun spt_refine_postprocess")
    truth = {tomogram_of(p.replace("_truth.json", "__x")): read_truth(p) for p in inp["truth"]}
    rot, pos = match_truth(table, truth, shrink=shrink)
    truth_map = load_reference(inp["truth_map"], final.shape[0], apix, key=inp["truth_map"])
    res = evaluate_iteration(table, state, final, truth_map, apix, rot, pos)
    with open(inp["res"]) as f:
        gold = json.load(f)
    res.update(iteration=it, kind=gold["kind"], gold_0143_a=gold["res_0143_masked_a"],
               aligned_at_a=gold["aligned_at_a"])
    with atomic_write(out["json"]) as tmp, open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    s_gold, f_gold = read_fsc_txt(inp["fsc_masked"])
    title = (f"iteration {res['iteration']:02d} ({res['kind']}): {res['median_orientation_deg']:.2f}°, "
             f"{res['median_translation_px']:.2f} px median error")
    plots.fsc_curves([(f"gold standard, masked ({res['gold_0143_a']:.1f} Å at 0.143)", s_gold, f_gold),
                      (f"vs truth ({res['fsc_truth_05_a']:.1f} Å at 0.5)", res["freq_inv_a"], res["fsc_truth"])],
                     out["png"], title)
    log.info("iteration %s (%s): gold %.1f Å, vs truth %.1f Å (0.5), %.2f°, %.2f px", res["iteration"], res["kind"],
             res["gold_0143_a"], res["fsc_truth_05_a"], res["median_orientation_deg"], res["median_translation_px"])


def summarize_truth_evals(evals: Sequence[str], json_out: str) -> None:
    """(demo) Per-iteration truth evaluations → truth_eval.json (table, the last iteration, pass/fail bars)."""
    keys = ("iteration", "kind", "aligned_at_a", "gold_0143_a", "fsc_truth_05_a", "fsc_truth_0143_a",
            "median_orientation_deg", "median_translation_px", "n_inliers", "n_particles")
    rows = []
    for path in evals:
        with open(path) as f:
            d = json.load(f)
        rows.append({k: d[k] for k in keys})
    last = rows[-1]
    summary = {"iterations": rows, "final": last,
               "bars": {"truth_05_within_1.3x_gold": last["fsc_truth_05_a"] <= 1.3 * last["gold_0143_a"],
                        "orientation_le_3deg": last["median_orientation_deg"] <= 3.0,
                        "translation_le_1px": last["median_translation_px"] <= 1.0}}
    with atomic_write(json_out) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    for r in rows:
        log.info("%(iteration)02d %(kind)s gold %(gold_0143_a).1f Å truth0.5 %(fsc_truth_05_a).1f Å "
                 "%(median_orientation_deg).2f° %(median_translation_px).2f px", r)
