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


def validate_config(config: dict, schema_path: str | pathlib.Path) -> dict:
    """Fill defaults and validate ``config`` against the JSON schema at ``schema_path``.

    Raises
    ------
    InputError
        Naming every offending key (``config key 'demo.tomo.snr'``), what is wrong and the
        key's description from the schema, before any job runs.
    """
    schema = yaml.safe_load(pathlib.Path(schema_path).read_text())
    _fill_defaults(config, schema, schema)
    validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if not errors:
        return config
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
