"""EMAN2 ``.lst`` particle lists (fast "LSX" format, spec §6.1), plus the legacy ``#LST`` form.

LSX layout (``EMAN2.LSXFile``)::

    #LSX
    # This file is in fast LST format. All lines after the next line have exactly ...
    # <L>
    <idx>\\t<path>\\t<compact JSON, sorted keys>   (padded with spaces to L-1 characters, then "\\n")

so record ``n`` starts at byte ``header_len + n * L``. Lengths here are counted in bytes (UTF-8),
which equals EMAN2's character count for the ASCII content these files hold.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from emflow.errors import InputError
from emflow.io._atomic import atomic_write
from emflow.io._text import decode_text, read_bytes
from emflow.io.eman_objects import json_default, transform_from_dict, transform_to_dict

LSX_COMMENT = ("# This file is in fast LST format. All lines after the next line have exactly the number "
               "of characters shown on the next line. This MUST be preserved if editing.")


class LstEntry(NamedTuple):
    """One ``.lst`` record: image ``index`` in the image file ``path``; ``meta`` overrides its header."""

    index: int
    path: str
    meta: dict


def _record(index, path: str, meta) -> bytes:
    if isinstance(index, bool) or not isinstance(index, (int,)) and not hasattr(index, "__index__"):
        raise TypeError(f"lst index must be an int, got {type(index).__name__}")
    index = int(index)
    path = os.fspath(path)
    if any(c in path for c in "\t\n\r") or not path:
        raise ValueError(f"lst image path must be non-empty without tabs/newlines: {path!r}")
    if meta is None:
        line = f"{index}\t{path}"
    else:
        if not isinstance(meta, Mapping):
            raise TypeError(f"lst metadata must be a dict, got {type(meta).__name__}")
        js = json.dumps(dict(meta), sort_keys=True, separators=(",", ":"), default=json_default)
        line = f"{index}\t{path}\t{js}"
    return line.encode("utf-8")


def write_lst(path: str | os.PathLike, entries: Iterable, comment: str | None = None) -> None:
    """Write an LSX ``.lst`` file (atomically).

    Parameters
    ----------
    path : str or os.PathLike
    entries : iterable of (index, image_path, meta) or :class:`LstEntry`
        ``meta`` is a JSON-compatible dict (numpy scalars/arrays allowed; Transforms as
        :func:`transform_to_dict` dicts) or None for a two-field record.
    comment : str, optional
        Replaces EMAN2's standard second header line (must start with ``#``).

    Notes
    -----
    The record length L is the longest record + 1 (for ``"\\n"``); shorter records are padded with
    spaces. An empty list gets EMAN2's initial ``# 20``.
    """
    records = [_record(*e) for e in entries]
    reclen = max((len(r) for r in records), default=19) + 1
    comment = LSX_COMMENT if comment is None else comment
    if not comment.startswith("#") or "\n" in comment:
        raise ValueError("comment must be one line starting with '#'")
    head = f"#LSX\n{comment}\n# {reclen}\n".encode("utf-8")
    body = b"".join(r.ljust(reclen - 1, b" ") + b"\n" for r in records)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(head + body)


def _decode_meta(text: str, filekeys, path, lineno) -> dict:
    text = text.strip()
    if len(text) < 2:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    else:
        if isinstance(value, dict):
            return value
        return {"__default__": value}
    # legacy forms (EMAN2 LSXFile.read)
    where = f"{os.fspath(path)} line {lineno}"
    if filekeys is not None:
        vals = text.split(";")
        if len(vals) != len(filekeys):
            raise InputError(f"line {lineno}: {len(vals)} ';'-separated values for {len(filekeys)} #keys",
                             source=path)
        return {k: _literal(v) for k, v in zip(filekeys, vals)}
    if ";Transform" in text:
        score_text, xf_text = text.split(";", 1)
        try:
            score = float(score_text)
        except ValueError:
            raise InputError(f"line {lineno}: score {score_text!r} is not a number", source=path) from None
        R, t = transform_from_dict(xf_text, source=where)
        return {"score_align": score, "xform.projection": transform_to_dict(R, t)}
    if text.startswith("Transform"):
        R, t = transform_from_dict(text, source=where)
        return {"xform.projection": transform_to_dict(R, t)}
    value = _literal(text)
    if isinstance(value, dict):
        score = value.pop("score", 0.0)
        try:
            R, t = transform_from_dict(value, source=where)
        except InputError:
            return {"lst_comment": text}
        return {"xform.projection": transform_to_dict(R, t), "score": score}
    return {"lst_comment": text}


def _literal(text: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return text.strip()


def _parse_record(line: str, filekeys, path, lineno) -> LstEntry:
    fields = line.strip().split("\t")
    if len(fields) < 2 or not fields[1]:
        raise InputError(f"line {lineno}: expected '<index><TAB><image path>[<TAB><metadata>]'",
                         source=path, fix="regenerate the list with emflow or e2proclst.py")
    try:
        index = int(fields[0])
    except ValueError:
        raise InputError(f"line {lineno}: image index {fields[0][:30]!r} is not an integer",
                         source=path) from None
    meta_text = "\t".join(fields[2:])
    return LstEntry(index, fields[1], _decode_meta(meta_text, filekeys, path, lineno))


def read_lst(path: str | os.PathLike) -> list[LstEntry]:
    """Read an EMAN2 ``.lst`` file (LSX fixed-length, or legacy ``#LST``).

    Returns
    -------
    list of LstEntry
        ``(index, path, meta)``; ``meta`` is the decoded JSON dict (Transforms stay as
        ``{"__class__": "Transform", "matrix": [...]}`` dicts; decode with
        :func:`transform_from_dict`). Legacy ``#keys:`` and ``score;Transform(...)`` comments are
        translated as EMAN2 does.

    Raises
    ------
    InputError
        Missing/empty file, unknown first line, bad record length, malformed record (with line number).
    """
    raw = read_bytes(path, "EMAN2 .lst file")
    if not raw:
        raise InputError("empty .lst file", source=path, fix="regenerate the particle list")
    text = decode_text(raw, path, ".lst file")
    if "\r" in text:
        raise InputError(".lst file has Windows (CRLF) line endings", source=path,
                         fix="convert it with `dos2unix`; EMAN2 requires Unix newlines")
    first_end = raw.find(b"\n")
    first = raw[: first_end if first_end >= 0 else len(raw)].decode("utf-8", "replace").strip()
    if first == "#LST":
        return _read_legacy(text, path)
    if first != "#LSX":
        raise InputError(f"first line is {first[:30]!r}, expected '#LSX' or '#LST'", source=path,
                         fix="this is not an EMAN2 particle list")
    return _read_lsx(raw, path)


def _read_lsx(raw: bytes, path) -> list[LstEntry]:
    lines = raw.split(b"\n")
    if len(lines) < 3:
        raise InputError("LSX header is incomplete (needs 3 lines)", source=path,
                         fix="the file was truncated; regenerate it")
    comment = lines[1].decode("utf-8").strip()
    reclen_text = lines[2].decode("utf-8").strip() if len(lines) > 2 else ""
    try:
        if not reclen_text.startswith("#"):
            raise ValueError
        reclen = int(reclen_text[1:])
        if reclen < 2:
            raise ValueError
    except ValueError:
        raise InputError(f"line 3 should be '# <record length>', got {reclen_text[:30]!r}", source=path,
                         fix="the header was edited; regenerate the list") from None
    filekeys = comment[7:].split(";") if comment.startswith("#keys: ") else None
    start = sum(len(x) + 1 for x in lines[:3])
    body = raw[start:]
    if len(body) % reclen:
        # find the first record whose length is wrong, for the message
        pos, lineno = 0, 4
        for rec in body.split(b"\n"):
            if len(rec) + 1 != reclen:
                break
            pos += reclen
            lineno += 1
        raise InputError(f"line {lineno} is {len(rec) + 1} bytes long but the header (line 3) says every "
                         f"record is {reclen}", source=path,
                         fix="the file was edited by hand or truncated; rewrite it with e2proclst.py or emflow")
    entries = []
    for n in range(len(body) // reclen):
        rec = body[n * reclen:(n + 1) * reclen]
        lineno = n + 4
        if rec[-1:] != b"\n" or b"\n" in rec[:-1]:
            raise InputError(f"line {lineno} does not have the record length {reclen} given on line 3",
                             source=path, fix="rewrite the file with e2proclst.py or emflow")
        entries.append(_parse_record(rec.decode("utf-8"), filekeys, path, lineno))
    return entries


def _read_legacy(text: str, path) -> list[LstEntry]:
    entries = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if lineno == 1 or not line.strip() or line.lstrip().startswith("#"):
            continue
        entries.append(_parse_record(line, None, path, lineno))
    return entries
