"""Bundled reference maps for the embedded demo (provenance and sha256 in ``README.md``).

Only paths are resolved here; reading is done by :mod:`emflow.io` or ``mrcfile`` (which opens
the gzip'd files directly).
"""

from __future__ import annotations

import pathlib

from emflow.errors import InputError

DATA_DIR = pathlib.Path(__file__).resolve().parent

#: Short structure name -> (file name, symmetry of the structure in EMAN notation).
STRUCTURES: dict[str, tuple[str, str]] = {
    "ribosome70S": ("ribosome70S_4v5d_2p62A_box128.mrc.gz", "c1"),
    "proteasome20S": ("proteasome20S_3j9i_2p62A_box80.mrc.gz", "d7"),
}


def structure_path(name: str) -> pathlib.Path:
    """Path of the bundled map called ``name`` (a key of :data:`STRUCTURES`).

    Raises
    ------
    InputError
        If ``name`` is not a bundled structure.
    """
    if name not in STRUCTURES:
        raise InputError(
            f"unknown demo structure {name!r}",
            source="demo structure name",
            fix=f"use one of {sorted(STRUCTURES)}",
        )
    return DATA_DIR / STRUCTURES[name][0]


def structure_symmetry(name: str) -> str:
    """EMAN symmetry string (``"c1"``, ``"d7"``) of the bundled structure ``name``."""
    structure_path(name)
    return STRUCTURES[name][1]
