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

import contextlib
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from emflow._numba import jit
from emflow.errors import InputError
from emflow.io._atomic import atomic_write
from emflow.io.eman_objects import (
    TRANSFORM_CLASS,
    ctf_from_string,
    ctf_to_string,
    is_ctf_dict,
    is_transform_dict,
    transform_from_dict,
)

_GROUP = "/MDF/images"
_PREFIX = "EMAN."
_RENDER_KEYS = ("stored_rendermin", "stored_rendermax", "stored_renderbits", "stored_truncated",
                "render_min", "render_max", "render_bits")
_TRANSFORM_FIELDS = [f"{r}{c}" for r in range(3) for c in range(4)]
_TRANSFORM_DTYPE = np.dtype([(name, "<f4") for name in _TRANSFORM_FIELDS])


# ----------------------------------------------------------------------------- attribute codec
# h5py's high-level ``attrs`` costs ~1 ms per attribute (dtype inference, type and dataspace
# creation, an existence check, locking); a stack of 40,000 subtilts with ~15 keys each spends
# minutes there. We call the low-level h5a/h5d/h5g API with type ids and dataspaces built once.
# The types are those ``attrs.create`` made from the same numpy dtypes, so files are unchanged.
def _htype(dtype) -> h5py.h5t.TypeID:
    return h5py.h5t.py_create(np.dtype(dtype), logical=True)


_T_I8, _T_I32, _T_F32, _T_F64 = (_htype(t) for t in ("<i1", "<i4", "<f4", "<f8"))
_T_XFORM = _htype(_TRANSFORM_DTYPE)
_TRUE, _FALSE = np.array([ord("T")], np.int8), np.array([ord("F")], np.int8)
_SCALAR_SPACE = h5py.h5s.create(h5py.h5s.SCALAR)
_SPACES: dict[tuple, h5py.h5s.SpaceID] = {}
_STRING_TYPES: dict[int, h5py.h5t.TypeID] = {}
_LCPL = h5py.h5p.create(h5py.h5p.LINK_CREATE)  # what h5py's create_group/create_dataset pass
_LCPL.set_create_intermediate_group(True)
_LCPL.set_char_encoding(h5py.h5t.CSET_ASCII)
_DCPL_PLAIN = h5py.h5p.create(h5py.h5p.DATASET_CREATE)  # h5py default: contiguous, no mtime
_DCPL_PLAIN.set_obj_track_times(False)


def _space(shape: tuple) -> h5py.h5s.SpaceID:
    space = _SPACES.get(shape)
    if space is None:
        space = _SPACES[shape] = h5py.h5s.create_simple(shape)
    return space


def _string_type(nbytes: int) -> h5py.h5t.TypeID:
    """EMAN's STRING: fixed-length C string, null-terminated, ASCII character set."""
    tid = _STRING_TYPES.get(nbytes)
    if tid is None:
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(nbytes)
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        _STRING_TYPES[nbytes] = tid
    return tid


def _encode_string(text: str):
    raw = text.encode("utf-8") + b"\x00"
    # HDF5 used to convert these from NULLPAD, which cuts at the first embedded null; keep that
    data = np.array(raw.split(b"\x00", 1)[0].ljust(len(raw), b"\x00"), dtype=f"S{len(raw)}")
    return _string_type(len(raw)), _SCALAR_SPACE, data


def _encode_array(arr: np.ndarray, tid, dtype):
    flat = np.ascontiguousarray(arr, dtype=dtype).ravel()
    return tid, _space(flat.shape), flat


def _encode_value(key: str, value):
    """``(type id, dataspace, contiguous numpy data)`` of one header value, EMAN2's encoding."""
    if isinstance(value, (bool, np.bool_)):
        return _T_I8, _space((1,)), (_TRUE if value else _FALSE)
    if isinstance(value, (int, np.integer)):
        if -(2**31) <= int(value) < 2**31:
            return _T_I32, _space((1,)), np.array([int(value)], dtype=np.int32)
        return _T_F64, _space((1,)), np.array([float(value)], dtype=np.float64)
    if isinstance(value, (float, np.floating)):
        return _T_F64, _space((1,)), np.array([float(value)], dtype=np.float64)
    if isinstance(value, str):
        return _encode_string(value)
    if is_transform_dict(value):
        matrix = value.get("matrix")
        if isinstance(matrix, list) and len(matrix) == 12:  # fast path: transform_to_dict's output
            m = np.array(matrix, dtype=np.float64)
        else:
            R, t = transform_from_dict(value, source=key)
            m = np.concatenate([R, t[:, None]], axis=1).ravel()
        if m.dtype != np.float64 or not np.isfinite(m).all():
            transform_from_dict(value, source=key)  # raises the InputError naming the problem
        return _T_XFORM, _space((1,)), m.astype(np.float32).view(_TRANSFORM_DTYPE)
    if is_ctf_dict(value):
        return _encode_string(ctf_to_string(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind in "iub" and arr.ndim <= 1:
            if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
                raise ValueError(f"header key {key!r}: integers do not fit in int32")
            return _encode_array(arr, _T_I32, np.int32)
        if arr.dtype.kind == "f" and arr.ndim <= 1:
            return _encode_array(arr, _T_F32, np.float32)
        if arr.size == 0:
            return _encode_array(np.zeros(0, np.float32), _T_F32, np.float32)
        raise TypeError(f"header key {key!r}: EMAN2 HDF headers hold only flat lists of numbers, "
                        f"got {arr.dtype} array of shape {arr.shape}")
    raise TypeError(f"header key {key!r}: cannot store a {type(value).__name__} in an EMAN2 HDF header")


class _HeaderEncoder:
    """Encodes header values, reusing the encoding when a key repeats the previous image's value
    (``apix_x``, ``file_threed``, CTF of a tilt, ...), which is most keys in an extraction."""

    def __init__(self):
        self._last: dict[str, tuple] = {}

    def write(self, gid, key: str, value) -> None:
        last = self._last.get(key)
        if (last is not None and type(last[0]) is type(value) and not isinstance(value, np.ndarray)
                and last[0] == value):
            bname, tid, space, data = last[1]
        else:
            tid, space, data = _encode_value(key, value)
            bname = (_PREFIX + key).encode("utf-8")
            if not isinstance(value, np.ndarray):
                self._last[key] = (value, (bname, tid, space, data))
        # groups are new, so no attribute with this name exists yet
        h5py.h5a.create(gid, bname, tid, space).write(data, mtype=tid)


def _decode_attr(arr: np.ndarray, dtype: np.dtype):
    if dtype.names is not None:
        if len(dtype.names) == 12:
            rec = arr.ravel()[0]
            return {"__class__": TRANSFORM_CLASS, "matrix": [float(rec[i]) for i in range(12)]}
        return None
    if dtype.kind in "SUO":
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
        values = [v == ord("T") for v in flat.tolist()]
    elif dtype.kind in "iub":
        values = [bool(v) for v in flat.tolist()] if dtype.kind == "b" else flat.tolist()
    elif dtype.kind == "f":
        values = flat.astype(np.float64).tolist()
    else:
        return None
    return values[0] if len(values) == 1 else values


# file type (H5Tencode bytes) -> (numpy dtype, memory type); h5py's ``attr.dtype`` costs ~30 µs
_READ_TYPES: dict[bytes, tuple[np.dtype, h5py.h5t.TypeID]] = {}


def _read_type(tid) -> tuple[np.dtype, h5py.h5t.TypeID]:
    key = tid.encode()
    cached = _READ_TYPES.get(key)
    if cached is None:
        dtype = tid.dtype
        cached = (dtype, h5py.h5t.py_create(dtype))
        if dtype.kind != "O":  # variable-length types: memory type depends on dtype metadata
            _READ_TYPES[key] = cached
    return cached


def _read_attr(attr) -> np.ndarray | None:
    dtype, mtype = _read_type(attr.get_type())
    try:  # the element count from the storage size is much cheaper than the dataspace's shape
        nbytes = attr.get_storage_size() if dtype.kind != "O" else 0
    except RuntimeError:  # HDF5 reports 0 bytes (empty or null dataspace) as an error
        nbytes = 0
    if nbytes and nbytes % dtype.itemsize == 0:
        shape = (nbytes // dtype.itemsize,)  # scalars read as 1-element arrays; decoding is the same
    else:
        shape = attr.shape
        if shape is None:  # null dataspace
            return None
    arr = np.empty(shape, dtype=dtype)
    attr.read(arr, mtype=mtype)
    return arr


def _read_header(gid) -> dict:
    """All ``EMAN.*`` attributes of one image group, in one pass by index (name order)."""
    header = {}
    prefix = _PREFIX.encode()
    for idx in range(h5py.h5a.get_num_attrs(gid)):
        try:
            attr = h5py.h5a.open(gid, index=idx)
            name = attr.name
            if not name.startswith(prefix):
                continue
            arr = _read_attr(attr)
            value = None if arr is None else _decode_attr(arr, arr.dtype)
        except (OSError, TypeError, ValueError, KeyError):
            continue  # EMAN2 also skips attributes it cannot read
        if value is not None:
            header[name[len(prefix):].decode("utf-8", "replace")] = value
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


def read_hdf_header(path: str | os.PathLike, index: int = 0) -> dict:
    """Header of image ``index`` of an EMAN2 HDF file without reading its data (keys without
    ``EMAN.``; e.g. ``apix_x``, absent when the file has no pixel size)."""
    with _open_read(path) as f:
        try:
            n = _image_count(f, path)
            j = index + n if index < 0 else index
            if not 0 <= j < n:
                raise InputError(f"image {index} requested but the file has {n} images", source=path)
            name = str(j).encode()
            group_id = f[_GROUP].id
            if name not in group_id:
                raise InputError(f"image {j} is missing from the file", source=path,
                                 fix="the file is incomplete; regenerate it")
            header = _read_header(h5py.h5g.open(group_id, name))
        except InputError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise InputError(f"damaged HDF5 file ({type(exc).__name__}: {exc})", source=path,
                             fix="the file is truncated or damaged; re-copy or regenerate it") from None
    for k in _RENDER_KEYS:
        header.pop(k, None)
    return header


def hdf_image_shape(path: str | os.PathLike, index: int = 0) -> tuple[int, ...]:
    """Array shape of image ``index`` (``(ny, nx)`` or ``(nz, ny, nx)``) from its dataspace, without
    reading the data (a tilt series' size before memory is planned)."""
    with _open_read(path) as f:
        try:
            n = _image_count(f, path)
            if not 0 <= index < n:
                raise InputError(f"image {index} requested but the file has {n} images", source=path)
            return tuple(int(s) for s in f[f"{_GROUP}/{index}/image"].shape)
        except InputError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise InputError(f"damaged HDF5 file ({type(exc).__name__}: {exc})", source=path,
                             fix="the file is truncated or damaged; re-copy or regenerate it") from None


def _decode_image(gid, header: dict, path, index: int, out: np.ndarray | None = None) -> np.ndarray:
    """The image of one group as float32; read straight into ``out`` when its shape matches."""
    try:
        dset = h5py.h5d.open(gid, b"image")
    except KeyError:
        raise InputError(f"image {index} has no data (no 'image' dataset)", source=path) from None
    dtype, shape = _read_type(dset.get_type())[0], dset.shape
    if dtype.kind not in "fiu" or shape is None:
        raise InputError(f"image {index} has unsupported data type", source=path)
    if out is not None and out.shape == shape:
        data = out
    else:
        data = np.empty(shape, np.float32)
    if dtype.kind == "f":  # HDF5 converts float64 / big-endian to native float32 while reading
        dset.read(h5py.h5s.ALL, h5py.h5s.ALL, data, mtype=_T_F32)
        return data
    raw = np.empty(shape, dtype)
    dset.read(h5py.h5s.ALL, h5py.h5s.ALL, raw)
    bits = header.get("stored_renderbits")
    if isinstance(bits, int) and bits > 0 and "stored_rendermin" in header and "stored_rendermax" in header:
        lo, hi = float(header["stored_rendermin"]), float(header["stored_rendermax"])
        rumax = float((1 << bits) - 1)
        data[...] = raw.astype(np.float32) / rumax * (hi - lo) + lo  # float32 arithmetic, as EMAN2
    else:
        data[...] = raw
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
            stack, headers, odd = None, [], []  # odd: (position, image) whose shape differs
            group_id = f[_GROUP].id
            for pos, i in enumerate(wanted):
                j = i + n if i < 0 else i
                if not 0 <= j < n:
                    raise InputError(f"image {i} requested but the file has {n} images", source=path)
                name = str(j).encode()
                if name not in group_id:
                    raise InputError(f"image {j} is missing from the file", source=path,
                                     fix="the file is incomplete; regenerate it")
                gid = h5py.h5g.open(group_id, name)
                header = _read_header(gid)
                image = _decode_image(gid, header, path, j, None if stack is None else stack[pos])
                if stack is None:  # the first image fixes the shape of the output
                    stack = np.empty((len(wanted),) + image.shape, np.float32)
                    stack[pos] = image
                elif image.shape != stack.shape[1:]:
                    odd.append(image.shape)
                for k in _RENDER_KEYS:
                    header.pop(k, None)
                headers.append(header)
        except InputError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise InputError(f"damaged HDF5 file ({type(exc).__name__}: {exc})", source=path,
                             fix="the file is truncated or damaged; re-copy or regenerate it") from None
    if stack is None:
        return np.zeros((0, 0, 0), dtype=np.float32), headers
    if odd:
        shapes = {stack.shape[1:], *odd}
        raise InputError(f"images have different shapes {sorted(shapes)}", source=path,
                         fix="read them one at a time with indices=[i]")
    return stack, headers


# ----------------------------------------------------------------------------- writing
def _quantise(img: np.ndarray, bits: int) -> tuple[np.ndarray, float, float, int]:
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        hi = lo + 1.0
    rumax = float((1 << bits) - 1)
    scaled = np.rint((img.astype(np.float64) - lo) / (hi - lo) * rumax)
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.clip(scaled, 0, rumax).astype(dtype), lo, hi, 0


def _compressed_dcpl(shape: tuple) -> h5py.h5p.PropDCID:
    """Chunks of at most 256² per section, deflate level 1 (as EMAN2 and our old h5py path)."""
    chunks = (min(shape[0], 256), min(shape[1], 256)) if len(shape) == 2 else \
        (1, min(shape[1], 256), min(shape[2], 256))
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(chunks)
    dcpl.set_deflate(1)
    dcpl.set_obj_track_times(False)
    return dcpl


def _as_image_list(images) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim in (3, 4):
        image_list = list(images)
    elif isinstance(images, np.ndarray):
        raise ValueError(f"images must be (n, ny, nx) or (n, nz, ny, nx), got shape {images.shape}")
    else:
        image_list = [np.asarray(im) for im in images]
    for im in image_list:
        if im.ndim not in (2, 3):
            raise ValueError(f"each image must be 2D or 3D, got shape {im.shape}")
    return image_list


@jit
def _block_stats(flat):  # pragma: no cover - numba
    """Per row of ``flat`` (n, m) float32: min, max, mean and population sigma in float64
    (two passes, like ``numpy.std``); one compiled pass replaces four numpy calls per image."""
    n, m = flat.shape
    out = np.empty((n, 4), np.float64)
    for i in range(n):
        lo = hi = flat[i, 0]
        total = 0.0
        for j in range(m):
            v = flat[i, j]
            lo = min(lo, v)
            hi = max(hi, v)
            total += v
        mean = total / m
        ss = 0.0
        for j in range(m):
            d = flat[i, j] - mean
            ss += d * d
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = lo, hi, mean, np.sqrt(ss / m)
    return out


def _with_stats(image_list: list[np.ndarray]):
    """Yield ``(k, float32 C-contiguous image, (min, max, mean, sigma))``; the statistics are
    computed for blocks of same-shape images at once (per-image numpy calls cost more than the
    arithmetic for small boxes)."""
    k = 0
    while k < len(image_list):
        shape = image_list[k].shape
        size = max(1, int(np.prod(shape)))
        stop = k + 1
        while stop < min(len(image_list), k + max(1, (1 << 21) // size)) and image_list[stop].shape == shape:
            stop += 1
        block = np.ascontiguousarray(np.stack(image_list[k:stop]), dtype=np.float32)
        flat = block.reshape(stop - k, -1)
        stats = _block_stats(flat).tolist() if flat.shape[1] else [[np.nan] * 4] * (stop - k)
        for j in range(stop - k):
            yield k + j, block[j], stats[j]
        k = stop


class HdfStackWriter:
    """Stream images into an EMAN2 HDF stack, chunk by chunk, atomically.

    Writes into a temporary file next to ``path`` (see :func:`emflow.io.atomic_write`) that
    replaces ``path`` when the ``with`` block ends without an exception; if it raises, the
    temporary file is removed and ``path`` is left as it was. Callers never need to hold all
    images in memory::

        with HdfStackWriter("particles/t__ptcl.hdf", apix=5.24) as out:
            for images, headers in chunks:
                out.append(images, headers)

    Parameters
    ----------
    path : str or os.PathLike
        Final file name.
    apix : float, optional
        Sets ``apix_x/y/z`` unless a header already has them.
    bits : int
        0: float32. 1..16: EMAN2's lossy integer compression with this many bits (uint8 /
        uint16 between each image's min and max, deflate level 1).
    append : bool
        Start from a copy of the existing ``path`` and add images after its last one.
    """

    def __init__(self, path: str | os.PathLike, apix: float | None = None, bits: int = 0,
                 append: bool = False):
        if not 0 <= int(bits) <= 16:
            raise ValueError(f"bits must be 0 (float) or 1..16, got {bits}")
        self.path = os.fspath(path)
        self.apix = None if apix is None else float(apix)
        self.bits = int(bits)
        self.append_to_existing = bool(append)
        self.count = 0
        self._file: Any = None
        self._stack: contextlib.ExitStack | None = None

    def __len__(self) -> int:
        return self.count

    def __enter__(self) -> HdfStackWriter:
        if self._stack is not None:
            raise RuntimeError("HdfStackWriter is already open")
        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_write(self.path))
            mode = "w"
            if self.append_to_existing and os.path.exists(self.path):
                self.count = hdf_count(self.path)
                shutil.copyfile(self.path, tmp)
                mode = "a"
            self._file = stack.enter_context(h5py.File(tmp, mode))
            self._images = self._file.require_group(_GROUP).id
        except BaseException:
            stack.__exit__(*sys.exc_info())
            raise
        self._stack = stack
        self._encoder = _HeaderEncoder()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        if stack is None:
            raise RuntimeError("HdfStackWriter is not open")
        try:
            if exc_type is None:
                self._file[_GROUP].attrs.create("imageid_max", np.array([self.count - 1], dtype=np.int32))
        except BaseException:
            self._images = self._file = None
            if not stack.__exit__(*sys.exc_info()):
                raise
            return False
        self._images = self._file = None
        return bool(stack.__exit__(exc_type, exc, tb))

    def append(self, images, headers: Sequence[Mapping] | None = None) -> range:
        """Add images (array ``(n, ny, nx)`` / ``(n, nz, ny, nx)`` or a list of 2D/3D arrays)
        with one header dict each (see :func:`write_hdf_stack`); returns their indices."""
        if self._stack is None:
            raise RuntimeError("use HdfStackWriter in a 'with' block before appending")
        image_list = _as_image_list(images)
        if headers is not None and len(headers) != len(image_list):
            raise ValueError(f"{len(headers)} headers for {len(image_list)} images")
        start = self.count
        for k, img, stats in _with_stats(image_list):
            self._write_one(start + k, img, stats, headers[k] if headers is not None else {})
            self.count += 1
        return range(start, self.count)

    def _write_one(self, index: int, img: np.ndarray, stats: tuple, header: Mapping) -> None:
        gid = h5py.h5g.create(self._images, str(index).encode(), lcpl=_LCPL)
        header = dict(header)
        shape_xyz = img.shape[::-1] + (1,) * (3 - img.ndim)
        header.update(nx=int(shape_xyz[0]), ny=int(shape_xyz[1]), nz=int(shape_xyz[2]))
        if self.apix is not None:
            for key in ("apix_x", "apix_y", "apix_z"):
                header.setdefault(key, self.apix)
        header.update(minimum=stats[0], maximum=stats[1], mean=stats[2], sigma=stats[3])
        encoder = self._encoder
        for key, value in header.items():
            if key not in _RENDER_KEYS:
                encoder.write(gid, key, value)
        if self.bits:
            q, lo, hi, trunc = _quantise(img, self.bits)
            dset = h5py.h5d.create(gid, b"image", _htype(q.dtype), _space(q.shape),
                                   dcpl=_compressed_dcpl(q.shape), lcpl=_LCPL)
            dset.write(h5py.h5s.ALL, h5py.h5s.ALL, q)
            for key, value in (("stored_rendermin", lo), ("stored_rendermax", hi),
                               ("stored_renderbits", self.bits), ("stored_truncated", int(trunc))):
                encoder.write(gid, key, value)
        else:
            dset = h5py.h5d.create(gid, b"image", _T_F32, _space(img.shape), dcpl=_DCPL_PLAIN, lcpl=_LCPL)
            dset.write(h5py.h5s.ALL, h5py.h5s.ALL, img, mtype=_T_F32)


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

    See Also
    --------
    HdfStackWriter : the same, streamed in chunks.
    """
    image_list = _as_image_list(images)
    if headers is not None and len(headers) != len(image_list):
        raise ValueError(f"{len(headers)} headers for {len(image_list)} images")
    with HdfStackWriter(path, apix=apix, bits=bits, append=append) as out:
        out.append(image_list, headers)


def concat_hdf_stacks(path: str | os.PathLike, sources: Sequence[str | os.PathLike], *,
                      shift_key: str | None = None, shifts: Sequence[int] | None = None) -> list[int]:
    """Join EMAN2 HDF stacks into one (atomically), copying each image group as stored.

    Data (float or compressed) and header attributes are copied byte for byte (``H5Ocopy``), so
    joining is exact and needs memory for one image group at a time.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    sources : sequence of paths
        Input stacks, in order.
    shift_key, shifts : optional
        Add ``shifts[j]`` to the integer list header ``shift_key`` of every image of ``sources[j]``
        (e.g. ``class_ptcl_idxs`` when the files they index are joined too).

    Returns
    -------
    list of int
        Index in the output of the first image of each source.
    """
    if shift_key is not None and (shifts is None or len(shifts) != len(sources)):
        raise ValueError("concat_hdf_stacks: give one shift per source with shift_key")
    starts, count = [], 0
    bname = (_PREFIX + shift_key).encode() if shift_key else None
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as out:
        images = out.require_group(_GROUP).id
        for j, src in enumerate(sources):
            starts.append(count)
            with _open_read(src) as f:
                n = _image_count(f, src) if _GROUP in f else 0
                sid = f[_GROUP].id if n else None
                for i in range(n):
                    name = str(count).encode()
                    h5py.h5o.copy(sid, str(i).encode(), images, name)
                    if bname is not None and shifts is not None and shifts[j]:
                        gid = h5py.h5g.open(images, name)
                        if h5py.h5a.exists(gid, bname):
                            arr = np.asarray(_read_attr(h5py.h5a.open(gid, bname))).ravel()
                            if arr.size == 0:
                                count += 1
                                continue
                            h5py.h5a.delete(gid, bname)
                            tid, space, data = _encode_array(arr.astype(np.int64) + int(shifts[j]),
                                                             _T_I32, np.int32)
                            h5py.h5a.create(gid, bname, tid, space).write(data, mtype=tid)
                    count += 1
        out[_GROUP].attrs.create("imageid_max", np.array([count - 1], dtype=np.int32))
    return starts
