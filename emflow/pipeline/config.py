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

    def as_dict(self) -> dict:
        """Plain dict of the fields (for Snakemake params)."""
        return dataclasses.asdict(self)

    def user_files(self) -> list[str]:
        """The optional input files that exist for this tomogram (not the tilt series)."""
        files = (self.tlt, self.xf, self.info_json, self.picks, self.defocus_file, self.tilt_com,
                 self.tilt_series_star)
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
    ``tlt`` is ``None`` and the info json is required.
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
        entries.append(TomogramEntry(name=name, tilt_series=str(ts), tlt=None, info_json=str(info), picks=str(info)))
    if not entries:
        raise InputError("no tilt series found in tiltseries/", source=root, fix="check the project folder")
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
