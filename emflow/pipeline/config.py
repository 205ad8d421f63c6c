"""Plain-Python helpers behind ``rules/common.smk`` (kept here so they are unit-tested).

Nothing in this module imports snakemake: it validates the config against
``config/schema.yaml`` with messages that name the key, and resolves the tomogram table
(demo, explicit table, or an existing EMAN2 project folder) into file paths.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import yaml

from emflow.errors import InputError
from emflow.io.info import read_info_json

DEMO_ROOT = "results/demo"
TILT_SERIES_SUFFIXES = (".mrc", ".mrcs", ".st", ".ali", ".hdf")


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _fill_defaults(config: dict, schema: Mapping, root: Mapping) -> None:
    """Insert schema defaults for keys missing from ``config`` (recursively, in place)."""
    for key, sub in schema.get("properties", {}).items():
        if "$ref" in sub:
            sub = {**_resolve_ref(root, sub["$ref"]), **{k: v for k, v in sub.items() if k != "$ref"}}
        if key not in config and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
        if isinstance(config.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(config[key], sub, root)


def _resolve_ref(root: Mapping, ref: str) -> Mapping:
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def validate_config(config: dict, schema_path: str | pathlib.Path, base_dir: str | pathlib.Path | None = None,
                    check_files: bool = True) -> dict:
    """Fill defaults and validate ``config`` against the JSON schema at ``schema_path``, then check
    the files it names (before any job runs).

    Parameters
    ----------
    config : dict
        Filled with schema defaults in place.
    schema_path : path
        ``config/schema.yaml``.
    base_dir : path, optional
        Directory that relative input paths are relative to (default: the working directory,
        which is Snakemake's).
    check_files : bool
        Also run :func:`check_paths` (every input path exists, output paths stay under
        ``results/``), :func:`check_table_files` (tilt counts and pixel sizes of a
        ``source: table`` input) and :func:`check_pixel_sizes` (user maps and particle stacks).

    Raises
    ------
    InputError
        Naming every offending key (``config key 'demo.tomo.snr'``), what is wrong and the
        key's description from the schema; or the key and path of a missing input file.
    """
    schema = yaml.safe_load(pathlib.Path(schema_path).read_text())
    _fill_defaults(config, schema, schema)
    validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            if err.validator == "additionalProperties":
                extra = re.findall(r"'([^']+)' was unexpected", err.message)
                allowed = sorted(err.schema.get("properties", {}))
                where = _key_path(err)
                for name in extra or [err.message]:
                    full = f"{where}.{name}" if where != "<top level>" else name
                    lines.append(f"config key '{full}' is not a known key (allowed here: {', '.join(allowed)})")
                continue
            desc = err.schema.get("description", "") if isinstance(err.schema, dict) else ""
            lines.append(f"config key '{_key_path(err)}': {err.message}" + (f" ({desc})" if desc else ""))
        raise InputError(
            "invalid configuration:\n  " + "\n  ".join(lines),
            source=str(schema_path).replace("schema.yaml", "config.yaml"),
            fix="correct the key(s) above; config/schema.yaml lists every key with its type and range",
        )
    if check_files:
        check_paths(config, base_dir)
        check_table_files(config, base_dir)
        check_pixel_sizes(config, base_dir)
    return config


# ----------------------------------------------------------------------------- paths
RESULTS = "results"
MAP_SUFFIXES = (".mrc", ".map", ".mrcs", ".hdf", ".h5", ".rec", ".ccp4", ".mrc.gz", ".map.gz")
# the row fields of input.tomograms that name files (TomogramEntry)
TABLE_FILE_FIELDS = ("tilt_series", "tlt", "xf", "info_json", "picks", "defocus_file", "tilt_com",
                     "tilt_series_star", "tomogram")


def _is_generated(path: str) -> bool:
    """Paths under ``results/`` are made by the workflow (the demo's inputs among them)."""
    norm = pathlib.PurePosixPath(str(path).replace("\\", "/"))
    return not norm.is_absolute() and norm.parts[:1] == (RESULTS,)


def _looks_like_path(value: str) -> bool:
    """For keys that take a keyword or a path (``spa.startingmodel``): a path has a folder or a map suffix."""
    return "/" in value or value.lower().endswith(MAP_SUFFIXES)


def input_paths(config: Mapping) -> list[tuple[str, str, str]]:
    """Every user input path the config names, as ``(config key, path, "file"|"dir")``.

    ``input.*`` paths are listed for the source that uses them (``input.spa_*`` whenever set:
    a demo run may take user SPA data); section keys (templates, masks, references, starting
    model) whenever set. Keys another stage adds later are picked up when present
    (``tempmatch.template``, ``tempmatch.template_mask``).
    """
    out: list[tuple[str, str, str]] = []
    inp = config.get("input", {})
    source = inp.get("source", "demo")
    if source == "table":
        for i, row in enumerate(inp.get("tomograms") or []):
            for field in TABLE_FILE_FIELDS:
                if row.get(field):
                    out.append((f"input.tomograms[{i}].{field}", str(row[field]), "file"))
    elif source == "eman2_project" and inp.get("eman2_project"):
        out.append(("input.eman2_project", str(inp["eman2_project"]), "dir"))
    elif source == "relion5":
        for key in ("relion_tomograms_star", "relion_particles_star"):
            if inp.get(key):
                out.append((f"input.{key}", str(inp[key]), "file"))
    for key in ("spa_particles", "spa_star"):
        if inp.get(key):
            out.append((f"input.{key}", str(inp[key]), "file"))
    for p in (inp.get("apix_override") or {}):
        out.append((f"input.apix_override['{p}']", str(p), "file"))
    for section, key in (("tempmatch", "template"), ("tempmatch", "template_mask"), ("picks", "mask"),
                         ("spt_refine", "ref"), ("spa", "usefilt"), ("spa", "m3dsetsf")):
        value = (config.get(section) or {}).get(key)
        if isinstance(value, str) and value:
            out.append((f"{section}.{key}", value, "file"))
    start = (config.get("spa") or {}).get("startingmodel")
    if isinstance(start, str) and _looks_like_path(start):
        out.append(("spa.startingmodel", start, "file"))
    return out


def _output_path_errors(config: Mapping) -> list[tuple[str, str]]:
    errors = []
    spt = (config.get("spt_refine") or {}).get("path")
    if isinstance(spt, str):
        p = pathlib.PurePosixPath(spt)
        if p.is_absolute() or ".." in p.parts or p.parts[:1] != (RESULTS,) or len(p.parts) < 2:
            errors.append(("spt_refine.path", (f"'{spt}' is not a folder under results/ (every output stays in "
                                               "results/; absolute paths and '..' are refused)")))
    spa = (config.get("spa") or {}).get("path")
    if isinstance(spa, str) and (spa in (".", "..") or "/" in spa or "\\" in spa):
        errors.append(("spa.path", (f"'{spa}' is not a folder name (the run goes to results/spa/<path>; "
                                    "'.', '..' and '/' are refused)")))
    return errors


def check_paths(config: Mapping, base_dir: str | pathlib.Path | None = None) -> None:
    """Every input path in the config exists; every output path stays under ``results/``.

    Raises
    ------
    InputError
        One message listing every missing path with its config key, and every output path that
        leaves ``results/``.
    """
    base = pathlib.Path(base_dir) if base_dir is not None else pathlib.Path.cwd()
    problems = _output_path_errors(config)
    for key, path, kind in input_paths(config):
        if _is_generated(path):
            continue
        full = pathlib.Path(path).expanduser()
        full = full if full.is_absolute() else base / full
        if kind == "dir" and not full.is_dir():
            problems.append((key, f"folder '{path}' does not exist" + (" (it is a file)" if full.exists() else "")))
        elif kind == "file" and not full.is_file():
            problems.append((key, f"file '{path}' does not exist" + (" (it is a folder)" if full.is_dir() else "")))
    if not problems:
        return
    fix = (f"correct the path(s) in the config; relative paths are relative to the working directory "
           f"({base}); outputs go under results/")
    if len(problems) == 1:
        (key, what), = problems
        raise InputError(what, source=f"config key '{key}'", fix=fix)
    lines = "".join(f"\n  config key '{k}': {w}" for k, w in problems)
    raise InputError(f"{len(problems)} bad paths:{lines}", source="config", fix=fix)


def check_pixel_sizes(config: Mapping, base_dir: str | pathlib.Path | None = None) -> None:
    """Every user map and particle stack the config names has a pixel size of its own (or an
    ``input.apix_override`` entry), checked against its config value where there is one:
    ``input.spa_particles`` (+ ``input.spa_star``) against ``spa.apix``; ``spt_refine.ref``,
    ``tempmatch.template``, ``tempmatch.template_mask`` and a ``spa.startingmodel`` path for presence
    (they are resampled by their own pixel size). Tilt series and tomograms of a table input:
    :func:`check_table_files`. Paths under ``results/`` (made by the workflow) are skipped.
    """
    from emflow.pixel_size import apix_override, particles_pixel_size, pixel_size

    base = pathlib.Path(base_dir) if base_dir is not None else pathlib.Path.cwd()

    def resolve(p: str) -> str:
        q = pathlib.Path(p).expanduser()
        return str(q if q.is_absolute() else base / q)

    inp = config.get("input", {})
    stack = inp.get("spa_particles")
    if stack and not _is_generated(stack):
        star = inp.get("spa_star")
        star = resolve(star) if star and not _is_generated(star) else None
        particles_pixel_size(resolve(stack), star, expected=(config.get("spa") or {}).get("apix"), key="spa.apix",
                             override=apix_override(config, stack))
    maps = [("spt_refine", "ref"), ("tempmatch", "template"), ("tempmatch", "template_mask")]
    for section, key in maps:
        path = (config.get(section) or {}).get(key)
        if isinstance(path, str) and path and not _is_generated(path):
            pixel_size(resolve(path), key=f"{section}.{key}", override=apix_override(config, path))
    start = (config.get("spa") or {}).get("startingmodel")
    if isinstance(start, str) and _looks_like_path(start) and not _is_generated(start):
        pixel_size(resolve(start), key="spa.startingmodel", override=apix_override(config, start))


def _image_count(path: str) -> int:
    """Images in a tilt series (MRC: nz; EMAN2 HDF: images, or nz of a single 3D image)."""
    from emflow.io import hdf_count, read_hdf_header, read_mrc_header

    if path.lower().endswith((".hdf", ".h5")):
        n = hdf_count(path)
        return int(read_hdf_header(path, 0).get("nz", 1)) if n == 1 else n
    return int(read_mrc_header(path)["shape"][0])


def check_table_files(config: Mapping, base_dir: str | pathlib.Path | None = None) -> None:
    """``source: table``: each tilt series' pixel size (:func:`emflow.pixel_size.pixel_size` against
    ``microscope.apix``, ``input.apix_override`` honoured) and its image count against its ``.tlt``.

    Cheap (headers and text files only); the import job checks the same for every source.
    """
    inp = config.get("input", {})
    if inp.get("source") != "table":
        return
    from emflow.io import read_tlt
    from emflow.pixel_size import apix_override, pixel_size

    base = pathlib.Path(base_dir) if base_dir is not None else pathlib.Path.cwd()

    def resolve(p: str) -> str:
        q = pathlib.Path(p).expanduser()
        return str(q if q.is_absolute() else base / q)

    apix = config["microscope"]["apix"]
    for i, row in enumerate(inp.get("tomograms") or []):
        ts, tlt = row.get("tilt_series"), row.get("tlt")
        tomo, tomo_bin = row.get("tomogram"), row.get("tomogram_bin")
        if tomo and not _is_generated(tomo):
            pixel_size(resolve(tomo), expected=None if tomo_bin is None else apix * tomo_bin,
                       key=f"microscope.apix × input.tomograms[{i}].tomogram_bin", override=apix_override(config, tomo))
        if not ts or _is_generated(ts):
            continue
        pixel_size(resolve(ts), expected=apix, key="microscope.apix", override=apix_override(config, ts))
        if tlt and not _is_generated(tlt):
            n_img, n_tlt = _image_count(resolve(ts)), len(read_tlt(resolve(tlt)))
            if n_img != n_tlt:
                raise InputError(
                    f"{n_tlt} tilt angles but the tilt series {ts} has {n_img} images",
                    source=tlt, fix=f"give one tilt angle per image of {ts}, in image order "
                    f"(tomogram {row.get('name')!r}, config key input.tomograms)")


@dataclasses.dataclass(frozen=True)
class TomogramEntry:
    """Input files of one tomogram (paths relative to the working directory)."""

    name: str
    tilt_series: str
    tlt: str | None
    info_json: str | None = None
    xf: str | None = None
    picks: str | None = None
    defocus_um: float | None = None
    defocus_file: str | None = None  # IMOD ctfplotter .defocus
    tilt_com: str | None = None  # IMOD tilt.com (THICKNESS, tilt geometry)
    tilt_series_star: str | None = None  # RELION 5 per-tilt-series STAR
    tomogram: str | None = None  # tomogram reconstructed elsewhere (MRC)
    tomogram_bin: int | None = None  # its binning relative to the tilt series
    thickness_unbin_px: int | None = None  # thickness of the tomogram the picks were made in (RELION rlnTomoSizeZ)
    picks_label: str | None = None  # the class to read from a picks file with several (EMAN2 class_list name)
    allow_empty_picks: bool = False  # a picks file without particles is accepted (else an InputError)
    tomo_hand: float | None = None  # RELION rlnTomoHand (source relion5; kept in the info json)

    def as_dict(self) -> dict:
        """Plain dict of the fields (for Snakemake params)."""
        return dataclasses.asdict(self)

    def user_files(self) -> list[str]:
        """The optional input files that exist for this tomogram (not the tilt series)."""
        files = (self.tlt, self.xf, self.info_json, self.picks, self.defocus_file, self.tilt_com,
                 self.tilt_series_star, self.tomogram)
        return [f for f in dict.fromkeys(files) if f]


def demo_names(config: Mapping) -> list[str]:
    """Names of the simulated tomograms: ``demo_01``, ``demo_02``, ..."""
    return [f"demo_{i + 1:02d}" for i in range(int(config["demo"]["tomo"]["n_tomograms"]))]


def demo_entry(name: str) -> TomogramEntry:
    """Where the demo simulator writes tomogram ``name`` (an EMAN2-project-like layout)."""
    return TomogramEntry(
        name=name,
        tilt_series=f"{DEMO_ROOT}/tiltseries/{name}.mrc",
        tlt=f"{DEMO_ROOT}/tiltseries/{name}.tlt",
        info_json=f"{DEMO_ROOT}/info/{name}_info.json",
        picks=f"{DEMO_ROOT}/info/{name}_info.json",
    )


def eman2_project_entries(project: str | pathlib.Path) -> list[TomogramEntry]:
    """Tomograms of an EMAN2 project folder: ``tiltseries/<name>.*`` + ``info/<name>_info.json``.

    The tilt angles come from ``tlt_params`` in the info json (EMAN2 writes no .tlt), so
    ``tlt`` is ``None`` and the info json is required. Tilt series may be EMAN2 HDF (what
    ``e2import.py`` writes) or MRC; the picks are the json's ``boxes_3d`` (every class, names and
    box sizes kept, coordinates from the tomogram centre), when it has any. ``tomograms/`` is not
    needed (emflow reconstructs from the tilt series).
    """
    root = pathlib.Path(project)
    if not (root / "tiltseries").is_dir():
        raise InputError(
            "no tiltseries/ folder", source=root, fix="point input.eman2_project at the EMAN2 project folder"
        )
    entries = []
    for ts in sorted((root / "tiltseries").iterdir()):
        if ts.suffix not in TILT_SERIES_SUFFIXES:
            continue
        name = ts.stem.split("__")[0]
        info = root / "info" / f"{name}_info.json"
        if not info.is_file():
            raise InputError(
                f"tilt series {ts.name} has no info/{name}_info.json",
                source=root,
                fix="run e2tomogram.py (it writes tlt_params) or use input.source: table with a .tlt file",
            )
        has_boxes = bool(read_info_json(info).get("boxes_3d"))  # no boxes yet: picks come from template matching
        entries.append(TomogramEntry(name=name, tilt_series=str(ts), tlt=None, info_json=str(info),
                                     picks=str(info) if has_boxes else None))
    if not entries:
        raise InputError("no tilt series found in tiltseries/", source=root, fix="check the project folder")
    return entries


def relion5_entries(config: Mapping) -> list[TomogramEntry]:
    """Tomograms of a RELION 4/5 project: one per row of ``input.relion_tomograms_star``.

    The tilt series is the row's ``rlnTomoTiltSeriesName`` (or the one stack its per-tilt
    ``rlnMicrographName`` entries index); geometry, CTF and exposure come from its per-tilt-series
    STAR; picks from ``input.relion_particles_star`` (rows of this ``rlnTomoName``); the tomogram
    thickness for the picks' bounds from ``rlnTomoSizeZ``. The optics of tomograms.star must agree
    with ``microscope`` (pixel size within 1 %).
    """
    from emflow.io.relion_tomo import read_relion_tomograms

    inp = config["input"]
    key = "config key 'input.relion_tomograms_star'"
    if not inp.get("relion_tomograms_star"):
        raise InputError("is null but input.source is relion5", source=key,
                         fix="give RELION's tomograms.star (e.g. Tomograms/job009/tomograms.star)")
    star = inp["relion_tomograms_star"]
    tomos = read_relion_tomograms(star)
    mic = config["microscope"]
    entries = []
    for name, t in tomos.items():
        if t.tilt_series is None:
            raise InputError(f"tomogram {name}: its tilt images are separate files (rlnMicrographName), not one stack",
                             source=t.tilt_series_star,
                             fix="stack them in tilt-series order (IMOD `newstack`) and add rlnTomoTiltSeriesName "
                                 "(the stack) to tomograms.star, or use input.source: table")
        for what, val, cfg, k in (("rlnTomoTiltSeriesPixelSize", t.apix, mic["apix"], "microscope.apix"),
                                  ("rlnVoltage", t.voltage_kv, mic["voltage_kv"], "microscope.voltage_kv"),
                                  ("rlnSphericalAberration", t.cs_mm, mic["cs_mm"], "microscope.cs_mm")):
            if abs(val - cfg) > 0.01 * max(abs(cfg), 1e-6):
                raise InputError(f"tomogram {name}: {what} = {val:g} but {k} = {cfg:g}", source=star,
                                 fix=f"set {k}: {val:g} (the tilt series' own value)")
        entries.append(TomogramEntry(
            name=name, tilt_series=t.tilt_series, tlt=None, tilt_series_star=t.tilt_series_star,
            picks=inp.get("relion_particles_star"),
            thickness_unbin_px=None if t.size_xyz is None else int(t.size_xyz[2]), tomo_hand=t.hand))
    return entries


def tomogram_table(config: Mapping) -> dict[str, TomogramEntry]:
    """Resolve ``config['input']`` into ``{name: TomogramEntry}`` (insertion-ordered)."""
    source = config["input"]["source"]
    if source == "demo":
        entries = [demo_entry(n) for n in demo_names(config)]
    elif source == "eman2_project":
        if not config["input"]["eman2_project"]:
            raise InputError("is null but input.source is eman2_project", source="config key 'input.eman2_project'",
                             fix="give the path of the EMAN2 project folder")
        entries = eman2_project_entries(config["input"]["eman2_project"])
    elif source == "relion5":
        entries = relion5_entries(config)
    else:
        rows = config["input"]["tomograms"]
        if not rows and config["workflows"]["subtomogram"]:  # an SPA-only run needs no tomograms
            raise InputError("is empty but input.source is table", source="config key 'input.tomograms'",
                             fix="list at least one tomogram with name, tilt_series and tlt")
        fields = [f.name for f in dataclasses.fields(TomogramEntry)]
        entries = [TomogramEntry(**{k: row.get(k) for k in fields}) for row in rows]
    table: dict[str, TomogramEntry] = {}
    for e in entries:
        if "__" in e.name:
            raise InputError(f"tomogram name '{e.name}' contains '__'", source="config key 'input.tomograms'",
                             fix="EMAN2 reserves '__' to separate the name from a suffix; rename it")
        if e.name in table:
            raise InputError(f"tomogram name '{e.name}' appears twice", source="config key 'input.tomograms'",
                             fix="give every tomogram a unique name")
        table[e.name] = e
    return table


def load_config(path: str | pathlib.Path, schema_path: str | pathlib.Path) -> dict:
    """Read and validate a config file outside Snakemake (tests, notebooks)."""
    config = yaml.safe_load(pathlib.Path(path).read_text()) or {}
    return validate_config(config, schema_path)
