"""EMAN2-compatible HDF5 image stacks (``libEM/io/hdfio2.cpp`` layout) via h5py.

Layout: group ``/MDF/images`` with int attribute ``imageid_max`` (index of the last image); one
group ``/MDF/images/<n>`` per image holding the dataset ``image`` (``(ny, nx)`` or ``(nz, ny, nx)``)
and the header as attributes named ``EMAN.<key>``. Attribute types follow EMAN2: bool = 1-byte
``'T'``/``'F'``, int = int32, float = float32 (float64 for our scalars, which EMAN reads as
double), lists = 1D int32/float32 arrays, strings = null-terminated fixed-length C strings,
``Transform`` = a compound of 12 float32 fields ``"00".."23"`` (row-major 3x4), CTF = the
``EMAN2Ctf`` string ``"E..."``. EMAN2 stores scalars as 1-element arrays, so a 1-element list
reads back as a scalar (as in EMAN2).

Lossy "compressed" images (``write_compressed``) are uint8/uint16 datasets with attributes
``EMAN.stored_renderbits``, ``stored_rendermin``, ``stored_rendermax``; the stored value ``q``
decodes to ``q / (2**bits - 1) * (max - min) + min`` (``HdfIO2::read_data``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence

import h5py
import numpy as np

from emflow.errors import InputError
from emflow.io._atomic import atomic_write
from emflow.io.eman_objects import (
    TRANSFORM_CLASS, ctf_from_string, ctf_to_string, is_ctf_dict, is_transform_dict,
)

_GROUP = "/MDF/images"
_PREFIX = "EMAN."
_RENDER_KEYS = ("stored_rendermin", "stored_rendermax", "stored_renderbits", "stored_truncated",
                "render_min", "render_max", "render_bits")
_TRANSFORM_FIELDS = [f"{r}{c}" for r in range(3) for c in range(4)]
_TRANSFORM_DTYPE = np.dtype([(name, "<f4") for name in _TRANSFORM_FIELDS])


# ----------------------------------------------------------------------------- attribute codec
def _write_string_attr(group: h5py.Group, name: str, text: str) -> None:
    """Fixed-length, null-terminated C string with a scalar dataspace (EMAN's STRING)."""
    raw = text.encode("utf-8") + b"\x00"
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw))
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    bname = name.encode("utf-8")
    if h5py.h5a.exists(group.id, bname):
        h5py.h5a.delete(group.id, bname)
    attr = h5py.h5a.create(group.id, bname, tid, space)
    attr.write(np.array(raw, dtype=f"S{len(raw)}"))


def _encode_attr(group: h5py.Group, key: str, value) -> None:
    name = _PREFIX + key
    attrs = group.attrs
    if is_transform_dict(value):
        from emflow.io.eman_objects import transform_from_dict

        R, t = transform_from_dict(value, source=key)
        m = np.concatenate([R, t[:, None]], axis=1).ravel()
        attrs.create(name, np.array([tuple(m)], dtype=_TRANSFORM_DTYPE))
    elif is_ctf_dict(value):
        _write_string_attr(group, name, ctf_to_string(value))
    elif isinstance(value, (bool, np.bool_)):
        attrs.create(name, np.array([ord("T") if value else ord("F")], dtype=np.int8))
    elif isinstance(value, (int, np.integer)):
        if -(2**31) <= int(value) < 2**31:
            attrs.create(name, np.array([int(value)], dtype=np.int32))
        else:
            attrs.create(name, np.array([float(value)], dtype=np.float64))
    elif isinstance(value, (float, np.floating)):
        attrs.create(name, np.array([float(value)], dtype=np.float64))
    elif isinstance(value, str):
        _write_string_attr(group, name, value)
    elif isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind in "iub" and arr.ndim <= 1:
            if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
                raise ValueError(f"header key {key!r}: integers do not fit in int32")
            attrs.create(name, arr.astype(np.int32).ravel())
        elif arr.dtype.kind == "f" and arr.ndim <= 1:
            attrs.create(name, arr.astype(np.float32).ravel())
        elif arr.size == 0:
            attrs.create(name, np.zeros(0, dtype=np.float32))
        else:
            raise TypeError(f"header key {key!r}: EMAN2 HDF headers hold only flat lists of numbers, "
                            f"got {arr.dtype} array of shape {arr.shape}")
    else:
        raise TypeError(f"header key {key!r}: cannot store a {type(value).__name__} in an EMAN2 HDF header")


def _decode_attr(attr_value, dtype: np.dtype):
    if dtype.names is not None:
        if len(dtype.names) == 12:
            rec = np.asarray(attr_value).ravel()[0]
            return {"__class__": TRANSFORM_CLASS, "matrix": [float(rec[i]) for i in range(12)]}
        return None
    arr = np.asarray(attr_value)
    if dtype.kind in "SUO" or isinstance(attr_value, (str, bytes)):
        text = arr.ravel()[0] if arr.ndim else arr.item()
        if isinstance(text, bytes):
            text = text.split(b"\x00", 1)[0].decode("utf-8", "replace")
        text = str(text)
        if len(text) > 1 and text[0] == "E" and text[1].isdigit():
            try:
                return ctf_from_string(text)
            except InputError:
                return text
        return text
    flat = arr.ravel()
    if dtype.kind in "iu" and dtype.itemsize == 1:
        values = [bool(v == ord("T")) for v in flat]
    elif dtype.kind in "iu":
        values = [int(v) for v in flat]
    elif dtype.kind == "f":
        values = [float(v) for v in flat]
    elif dtype.kind == "b":
        values = [bool(v) for v in flat]
    else:
        return None
    return values[0] if len(values) == 1 else values


def _read_header(group: h5py.Group) -> dict:
    header = {}
    for name in group.attrs:
        if not name.startswith(_PREFIX):
            continue
        key = name[len(_PREFIX):]
        try:
            attr = group.attrs.get_id(name)
            value = _decode_attr(group.attrs[name], attr.dtype)
        except (OSError, TypeError, ValueError, KeyError):
            continue  # EMAN2 also skips attributes it cannot read
        if value is not None:
            header[key] = value
    return header


# ----------------------------------------------------------------------------- reading
def _open_read(path) -> h5py.File:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError("HDF file does not exist", source=path, fix="check the path")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable HDF5 file ({exc})", source=path,
                         fix="the file is truncated or damaged; re-copy or regenerate it") from None


def _image_count(f: h5py.File, path) -> int:
    if _GROUP not in f:
        raise InputError("HDF5 file has no EMAN2 image data (no /MDF/images group)", source=path,
                         fix="give an image file written by EMAN2 or emflow")
    group = f[_GROUP]
    if "imageid_max" in group.attrs:
        value = np.asarray(group.attrs["imageid_max"]).ravel()
        return int(value[0]) + 1 if value.size else 0
    return len([k for k in group.keys() if k.isdigit()])


def hdf_count(path: str | os.PathLike) -> int:
    """Number of images in an EMAN2 HDF file (``imageid_max + 1``)."""
    with _open_read(path) as f:
        try:
            return _image_count(f, path)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"damaged HDF5 file ({exc})", source=path, fix="re-copy or regenerate it") from None


def _decode_image(group: h5py.Group, header: dict, path, index: int) -> np.ndarray:
    if "image" not in group:
        raise InputError(f"image {index} has no data (no 'image' dataset)", source=path)
    data = group["image"][()]
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "fiu":
        raise InputError(f"image {index} has unsupported data type", source=path)
    bits = header.get("stored_renderbits")
    data = data.astype(np.float32)
    if isinstance(bits, int) and bits > 0 and "stored_rendermin" in header and "stored_rendermax" in header:
        lo, hi = float(header["stored_rendermin"]), float(header["stored_rendermax"])
        rumax = float((1 << bits) - 1)
        data = (data / rumax * (hi - lo) + lo).astype(np.float32)
    return data


def read_hdf_stack(path: str | os.PathLike, indices=None) -> tuple[np.ndarray, list[dict]]:
    """Read images and headers from an EMAN2 HDF file.

    Parameters
    ----------
    path : str or os.PathLike
    indices : sequence of int or int, optional
        Images to read (default: all). Negative indices count from the end.

    Returns
    -------
    images : ndarray, float32, (n, ny, nx) or (n, nz, ny, nx)
        Lossy-compressed (integer) images are decoded to float.
    headers : list of dict
        Per-image header without the ``EMAN.`` prefix; Transforms as
        ``{"__class__": "Transform", "matrix": [12 floats]}``, CTF as an EMAN2Ctf dict
        (percent amplitude contrast; convert with :func:`emflow.io.ctf_from_dict`).
    """
    with _open_read(path) as f:
        try:
            n = _image_count(f, path)
            if indices is None:
                wanted = list(range(n))
            else:
                wanted = [int(i) for i in np.atleast_1d(np.asarray(indices, dtype=np.int64))]
            images, headers = [], []
            for i in wanted:
                j = i + n if i < 0 else i
                if not 0 <= j < n:
                    raise InputError(f"image {i} requested but the file has {n} images", source=path)
                key = f"{_GROUP}/{j}"
                if key not in f:
                    raise InputError(f"image {j} is missing from the file", source=path,
                                     fix="the file is incomplete; regenerate it")
                group = f[key]
                header = _read_header(group)
                images.append(_decode_image(group, header, path, j))
                for k in _RENDER_KEYS:
                    header.pop(k, None)
                headers.append(header)
        except InputError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise InputError(f"damaged HDF5 file ({type(exc).__name__}: {exc})", source=path,
                             fix="the file is truncated or damaged; re-copy or regenerate it") from None
    if not images:
        return np.zeros((0, 0, 0), dtype=np.float32), headers
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise InputError(f"images have different shapes {sorted(shapes)}", source=path,
                         fix="read them one at a time with indices=[i]")
    return np.stack(images), headers


# ----------------------------------------------------------------------------- writing
def _quantise(img: np.ndarray, bits: int) -> tuple[np.ndarray, float, float, int]:
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        hi = lo + 1.0
    rumax = float((1 << bits) - 1)
    scaled = np.rint((img.astype(np.float64) - lo) / (hi - lo) * rumax)
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.clip(scaled, 0, rumax).astype(dtype), lo, hi, 0


def _write_images(f: h5py.File, start: int, images: Sequence[np.ndarray], headers, apix, bits) -> None:
    if _GROUP not in f:
        f.require_group(_GROUP)
    group = f[_GROUP]
    for k, img in enumerate(images):
        idx = start + k
        g = group.create_group(str(idx))
        img = np.asarray(img, dtype=np.float32)
        header = dict(headers[k]) if headers is not None else {}
        shape_xyz = img.shape[::-1] + (1,) * (3 - img.ndim)
        header.update(nx=int(shape_xyz[0]), ny=int(shape_xyz[1]), nz=int(shape_xyz[2]))
        if apix is not None:
            for axis in "xyz":
                header.setdefault(f"apix_{axis}", float(apix))
        header.update(minimum=float(img.min()), maximum=float(img.max()),
                      mean=float(img.mean(dtype=np.float64)), sigma=float(img.std(dtype=np.float64)))
        for key, value in header.items():
            if key in _RENDER_KEYS:
                continue
            _encode_attr(g, key, value)
        if bits:
            q, lo, hi, trunc = _quantise(img, bits)
            chunks = (min(img.shape[0], 256), min(img.shape[1], 256)) if img.ndim == 2 else \
                (1, min(img.shape[1], 256), min(img.shape[2], 256))
            g.create_dataset("image", data=q, chunks=chunks, compression="gzip", compression_opts=1)
            _encode_attr(g, "stored_rendermin", float(lo))
            _encode_attr(g, "stored_rendermax", float(hi))
            _encode_attr(g, "stored_renderbits", int(bits))
            _encode_attr(g, "stored_truncated", int(trunc))
        else:
            g.create_dataset("image", data=img)
    group.attrs.create("imageid_max", np.array([start + len(images) - 1], dtype=np.int32))


def write_hdf_stack(path: str | os.PathLike, images, headers: Sequence[Mapping] | None = None,
                    apix: float | None = None, append: bool = False, bits: int = 0) -> None:
    """Write images with headers as an EMAN2 HDF file (atomically).

    Parameters
    ----------
    path : str or os.PathLike
    images : array_like (n, ny, nx) or (n, nz, ny, nx), or a list of 2D/3D arrays
    headers : list of dict, optional
        One dict per image: ints, floats, bools, strings, flat lists of numbers, Transform dicts
        (:func:`emflow.io.transform_to_dict`) and EMAN2Ctf dicts (:func:`emflow.io.ctf_to_dict`).
        ``nx/ny/nz`` and the statistics ``minimum/maximum/mean/sigma`` are set from the data.
    apix : float, optional
        Sets ``apix_x/y/z`` unless a header already has them.
    append : bool
        Add the images after those already in ``path`` (the file is copied, extended and renamed,
        so a crash leaves the old file intact).
    bits : int
        0: float32. 1..16: EMAN2's lossy integer compression with this many bits (uint8 / uint16
        between the image min and max, deflate level 1).
    """
    if isinstance(images, np.ndarray) and images.ndim in (3, 4):
        image_list = list(images)
    elif isinstance(images, np.ndarray):
        raise ValueError(f"images must be (n, ny, nx) or (n, nz, ny, nx), got shape {images.shape}")
    else:
        image_list = [np.asarray(im) for im in images]
    for im in image_list:
        if im.ndim not in (2, 3):
            raise ValueError(f"each image must be 2D or 3D, got shape {im.shape}")
    if headers is not None and len(headers) != len(image_list):
        raise ValueError(f"{len(headers)} headers for {len(image_list)} images")
    if not 0 <= int(bits) <= 16:
        raise ValueError(f"bits must be 0 (float) or 1..16, got {bits}")
    path = os.fspath(path)
    with atomic_write(path) as tmp:
        start = 0
        if append and os.path.exists(path):
            start = hdf_count(path)
            shutil.copyfile(path, tmp)
            mode = "a"
        else:
            mode = "w"
        with h5py.File(tmp, mode) as f:
            _write_images(f, start, image_list, headers, apix, int(bits))
