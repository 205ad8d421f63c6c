"""Shared helpers for the text-format readers: load a file as text, number its lines."""

from __future__ import annotations

import os

from emflow.errors import InputError


def read_bytes(path: str | os.PathLike, what: str) -> bytes:
    """Read a whole file, turning OS errors into :class:`InputError`.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.
    what : str
        Human name of the format ("STAR file"), used in messages.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{what} does not exist", source=path, fix="check the path") from None
    except IsADirectoryError:
        raise InputError(f"expected a {what} but this is a folder", source=path) from None
    except PermissionError:
        raise InputError(f"no permission to read this {what}", source=path,
                         fix="check file permissions") from None
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror or exc}", source=path) from None


def decode_text(data: bytes, path: str | os.PathLike, what: str) -> str:
    """Decode UTF-8 text (BOM tolerated); reject binary content with the first bad line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"not a text {what}: line {line} has bytes that are not UTF-8 text",
                         source=path, fix=f"make sure this is a {what} and not a binary file") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise InputError(f"not a text {what}: line {line} contains a NUL byte", source=path,
                         fix=f"make sure this is a {what} and not a binary file")
    return text


def read_text(path: str | os.PathLike, what: str) -> str:
    """Read a UTF-8 text file with :class:`InputError` for missing, binary or unreadable files."""
    return decode_text(read_bytes(path, what), path, what)


def read_numeric_rows(path: str | os.PathLike, what: str, ncols: int | None = None,
                      min_cols: int = 1, comments: str = "#", sep_comma: bool = False
                      ) -> tuple[list[list[float]], list[int]]:
    """Parse a whitespace (optionally comma) separated numeric table.

    Blank lines and lines starting with ``comments`` are skipped. Every row must have ``ncols``
    values (or at least ``min_cols`` when ``ncols`` is None, all rows the same count).

    Returns
    -------
    rows : list of list of float
    line_numbers : list of int
        1-based line number of each row, for follow-up error messages.
    """
    text = read_text(path, what)
    rows: list[list[float]] = []
    lines: list[int] = []
    first_count = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or (comments and line.startswith(comments)):
            continue
        tokens = line.replace(",", " ").split() if sep_comma else line.split()
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise InputError(f"line {lineno}: {bad!r} is not a number", source=path,
                             fix=f"a {what} holds only numbers") from None
        expected = ncols if ncols is not None else first_count
        if expected is not None and len(values) != expected:
            raise InputError(f"line {lineno} has {len(values)} values, expected {expected}",
                             source=path, fix=f"every line of a {what} needs {expected} numbers")
        if len(values) < min_cols:
            raise InputError(f"line {lineno} has {len(values)} values, expected at least {min_cols}",
                             source=path)
        first_count = len(values)
        rows.append(values)
        lines.append(lineno)
    if not rows:
        raise InputError(f"{what} is empty (no data lines)", source=path,
                         fix="check that the file was written completely")
    return rows, lines


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
