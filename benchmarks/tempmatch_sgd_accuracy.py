"""Picking accuracy of template matching on the demo tomograms vs the simulation's truth (issue #3).

Each ``--run NAME=DIR`` is a workflow directory that has run template matching and pick filtering
(``DIR/results/picks/{tomo}__picks.star``) on demo data (``DIR/results/demo/truth/{tomo}_truth.json``).
A pick is correct when it is matched one-to-one (Hungarian) to a true particle within
``--tol-binned`` voxels of the binned tomogram (``--bin``). Writes JSON with recall, precision and
F1 per tomogram and pooled, per run; ``--meta NAME=JSON`` attaches settings to a run.
``--edge-px N`` adds, per run, the same scores re-extracted from ``results/tempmatch/{tomo}__scores.mrc``
with the workflow's threshold and NMS distance (``__candidates.json``) but an edge exclusion of ``N``
voxels instead of the template half-box (which, in a thin slab, drops particles near the faces).

    .venv/bin/python benchmarks/tempmatch_sgd_accuracy.py --run sgd=/tmp/run1 --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from emflow.io import read_mrc, read_star
from emflow.sta.picks import binned_to_unbinned, find_peaks, match_picks


def _reextract(root: pathlib.Path, name: str, apix_unbin: float, edge_px: int) -> np.ndarray:
    """Peaks of the saved score map with the workflow's threshold/NMS and another edge (unbinned px)."""
    doc = json.loads((root / f"results/tempmatch/{name}__candidates.json").read_text())
    scores, _ = read_mrc(root / f"results/tempmatch/{name}__scores.mrc")
    angle_map, _ = read_mrc(root / f"results/tempmatch/{name}__angles.mrc")
    found = find_peaks(scores, doc["threshold"], min_distance_px=doc["min_distance_px"], edge_px=edge_px,
                       mask=angle_map >= 0)
    return binned_to_unbinned(found.xyz, scores.shape, doc["apix"], apix_unbin)


def score_run(root: pathlib.Path, bin_factor: int, tol_binned: float, edge_px: int | None = None) -> dict:
    """Recall/precision/F1 per demo tomogram in ``root`` and pooled over them."""
    out, n_true, n_found, n_matched = {}, 0, 0, 0
    for truth_path in sorted((root / "results/demo/truth").glob("*_truth.json")):
        truth = json.loads(truth_path.read_text())
        name = truth["tomogram"]
        star = root / f"results/picks/{name}__picks.star"
        if not star.exists():
            continue
        table = next(iter(read_star(star).values()), {})
        apix_unbin = float(truth["apix"])
        if table and len(table.get("rlnCenteredCoordinateXAngst", [])):
            found = np.stack([np.asarray(table[f"rlnCenteredCoordinate{a}Angst"], np.float64)
                              for a in "XYZ"], 1) / apix_unbin
        else:
            found = np.zeros((0, 3))
        true = np.array([p["xyz_px"] for p in truth["particles"]], np.float64)
        if edge_px is not None:
            found = _reextract(root, name, apix_unbin, edge_px)
        m = match_picks(found, true, tol_binned * bin_factor)
        out[name] = {k: m[k] for k in ("recall", "precision", "f1", "n_found", "n_true", "n_matched")}
        out[name]["rms_binned_px"] = m["rms_px"] / bin_factor
        out[name]["snr"] = truth.get("snr")
        cand = root / f"results/tempmatch/{name}__candidates.json"
        if cand.exists():  # how far the true peaks stand above the detection threshold
            out[name]["threshold"] = json.loads(cand.read_text())["threshold"]
        if edge_px is None and m["n_matched"] and "rlnAutopickFigureOfMerit" in table:
            fom = np.asarray(table["rlnAutopickFigureOfMerit"], np.float64)[m["pairs"][:, 0]]
            out[name]["median_matched_score"] = float(np.median(fom))
        n_true, n_found, n_matched = n_true + m["n_true"], n_found + m["n_found"], n_matched + m["n_matched"]
    rec = n_matched / n_true if n_true else float("nan")
    prec = n_matched / n_found if n_found else float("nan")
    f1 = 2 * rec * prec / (rec + prec) if n_true and n_found and rec + prec > 0 else 0.0
    return {"tomograms": out, "pooled": {"recall": rec, "precision": prec, "f1": f1, "n_true": n_true,
                                         "n_found": n_found, "n_matched": n_matched}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--meta", action="append", default=[], help="NAME=JSON settings of a run (repeatable)")
    ap.add_argument("--bin", type=int, default=4, dest="bin_factor")
    ap.add_argument("--tol-binned", type=float, default=2.0)
    ap.add_argument("--edge-px", type=int, default=None)
    ap.add_argument("--out", type=pathlib.Path)
    a = ap.parse_args(argv)
    meta = {k: json.loads(v) for k, v in (m.split("=", 1) for m in a.meta)}
    res = {"tolerance_binned_voxels": a.tol_binned, "bin": a.bin_factor, "runs": {}}
    for spec in a.run:
        name, d = spec.split("=", 1)
        res["runs"][name] = {"dir": d, "settings": meta.get(name, {})} | score_run(pathlib.Path(d), a.bin_factor,
                                                                                      a.tol_binned)
        if a.edge_px is not None:
            res["runs"][name][f"reextracted_edge{a.edge_px}"] = score_run(pathlib.Path(d), a.bin_factor,
                                                                          a.tol_binned, a.edge_px)
    text = json.dumps(res, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
