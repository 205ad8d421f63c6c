"""Crash-safe file writing: write to a temporary file next to the target, then rename.

A job killed mid-write (SLURM time limit, Ctrl-C, full disk) must never leave a half-written
file under the final name, because Snakemake would then treat it as a finished output.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator

# Files from mkstemp are 0600; give the final file the permissions a plain open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)

_DOUBLE_SUFFIXES = (".gz", ".bz2", ".xz")


def _format_suffix(name: str) -> str:
    """The extension(s) a format library looks at: ``.mrc``, ``.mrc.gz``, ``.star``."""
    path = pathlib.PurePath(name)
    suffixes = path.suffixes
    if not suffixes:
        return ""
    if suffixes[-1].lower() in _DOUBLE_SUFFIXES and len(suffixes) >= 2:
        return "".join(suffixes[-2:])
    return suffixes[-1]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Context manager yielding a temporary path that replaces ``path`` on success.

    The temporary file lives in the same directory as ``path`` (so ``os.replace`` is an atomic
    rename on the same file system) and keeps the extension of ``path`` (``.mrc``, ``.mrc.gz``,
    ``.hdf`` ...) so that libraries which choose a format from the name still recognise it.
    It already exists (empty) when the body starts; writers must overwrite it. If the body raises,
    the temporary file is removed and ``path`` is left untouched. Missing parent folders are
    created.

    Parameters
    ----------
    path : str or os.PathLike
        Final file name.
    suffix : str, optional
        Extension for the temporary file; default: that of ``path`` (two parts for ``.gz``).

    Yields
    ------
    str
        The temporary path to write to.
    """
    final = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(final))
    os.makedirs(folder, exist_ok=True)
    ext = _format_suffix(final) if suffix is None else suffix
    base = os.path.basename(final)
    stem = base[: len(base) - len(ext)] if ext and base.endswith(ext) else base
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
