"""MRC/MRCS/IMOD (``.mrc .mrcs .map .rec .st .ali``, optionally ``.gz``) reading and writing.

Arrays are float32 ``[z, y, x]`` (``[y, x]`` for a single image), as ``mrcfile`` gives them.
Every problem a user can fix (truncated file, missing pixel size, NaN values, wrong pixel size:
the contract of :mod:`emflow.pixel_size`) becomes an :class:`~emflow.errors.InputError` that names the file
and says what to do.
"""

from __future__ import annotations

import gzip
import os
import warnings

import mrcfile
import numpy as np

from emflow.errors import InputError
from emflow.io._atomic import atomic_write

# MRC mode -> bytes per voxel (mode 101 is 4-bit, half a byte).
_MODE_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2, 101: 0.5}
_COMPLEX_MODES = (3, 4)


def _is_gz(path) -> bool:
    return os.fspath(path).lower().endswith(".gz")


def _open(path, header_only: bool = False):
    """Open with mrcfile in permissive mode after our own, cheaper and clearer, header checks."""
    path = os.fspath(path)
    _prevalidate(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mrcfile.open(path, mode="r", permissive=True, header_only=header_only)
    except (gzip.BadGzipFile, EOFError, OSError, ValueError, TypeError, OverflowError,
            MemoryError, IndexError, KeyError, AttributeError) as exc:
        # mrcfile raises many kinds of errors for damaged headers/data; translate them all.
        raise InputError(f"not a readable MRC file ({type(exc).__name__}: {exc})", source=path,
                         fix="check that this is an MRC file and re-copy it if it was damaged") from None


def _header_shape(header) -> tuple[int, int, int]:
    return int(header.nz), int(header.ny), int(header.nx)


def _voxel_sizes(header) -> tuple[float, float, float]:
    """Voxel size (x, y, z) in Å = cell length / sampling; 0 where the header leaves it unset."""
    out = []
    for cell, m in ((header.cella.x, header.mx), (header.cella.y, header.my), (header.cella.z, header.mz)):
        cell, m = float(cell), int(m)
        out.append(cell / m if m > 0 and np.isfinite(cell) else 0.0)
    return tuple(out)


def _validate_header(header, path) -> None:
    nz, ny, nx = _header_shape(header)
    if min(nx, ny, nz) <= 0:
        raise InputError(f"header has invalid dimensions nx={nx} ny={ny} nz={nz}", source=path,
                         fix="the file is damaged or not an MRC file; re-copy or regenerate it")
    mode = int(header.mode)
    if mode not in _MODE_BYTES:
        raise InputError(f"header has unknown MRC data mode {mode}", source=path,
                         fix="convert the file to 32-bit float MRC (mode 2), e.g. `newstack -mode 2`")
    if mode in _COMPLEX_MODES:
        raise InputError(f"MRC mode {mode} holds complex (Fourier) data, expected a real image/volume",
                         source=path, fix="give the real-space map instead")


def _truncation_error(header, path) -> InputError:
    nz, ny, nx = _header_shape(header)
    mode = int(header.mode)
    nbytes = int(np.ceil(nx * ny * nz * _MODE_BYTES.get(mode, 4)))
    dtype = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16", 101: "4-bit"}.get(mode, f"mode {mode}")
    if _is_gz(path):
        have = "the decompressed data is shorter"
    else:
        have_bytes = os.path.getsize(path) - 1024 - max(int(header.nsymbt), 0)
        have = f"file has {max(have_bytes, 0)} data bytes"
    return InputError(f"file is truncated: header says {nx}x{ny}x{nz} {dtype} = {nbytes} bytes, {have}",
                      source=path, fix="re-copy the file (the transfer or the program writing it was interrupted)")


def _prevalidate(path) -> None:
    """Check the raw 1024-byte header before mrcfile sees it.

    mrcfile allocates the extended header and the data block at the sizes the header states, so a
    damaged header (random bytes, nsymbt = 2 GB) would cost gigabytes and minutes before failing.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError("MRC file does not exist", source=path, fix="check the path")
    if os.path.isdir(path):
        raise InputError("expected an MRC file but this is a folder", source=path)
    gz = _is_gz(path)
    try:
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            raw = f.read(1024)
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read MRC header ({exc})", source=path,
                         fix="re-copy the file; a .gz file may be damaged") from None
    if len(raw) < 1024:
        raise InputError(f"file is too short for an MRC file ({len(raw)} bytes; the header alone is 1024)",
                         source=path, fix="re-copy the file")
    hdr = np.frombuffer(raw, dtype=mrcfile.dtypes.HEADER_DTYPE)[0]
    machst = bytes(hdr["machst"])
    if machst[:2] == b"\x11\x11":
        hdr = np.frombuffer(raw, dtype=mrcfile.dtypes.HEADER_DTYPE.newbyteorder(">"))[0]
    _validate_header(_RawHeader(hdr), path)
    nz, ny, nx = int(hdr["nz"]), int(hdr["ny"]), int(hdr["nx"])
    nsymbt = int(hdr["nsymbt"])
    if nsymbt < 0:
        raise InputError(f"header has a negative extended-header size ({nsymbt})", source=path,
                         fix="the file is damaged; re-copy or regenerate it")
    if not gz:
        nbytes = int(np.ceil(nx * ny * nz * _MODE_BYTES[int(hdr["mode"])]))
        have = os.path.getsize(path) - 1024 - nsymbt
        if have < nbytes:
            raise _truncation_error(_RawHeader(hdr), path)


class _RawHeader:
    """Attribute view (``h.nx``) of a raw header record, like mrcfile's header."""

    def __init__(self, rec):
        self._rec = rec

    def __getattr__(self, name):
        return self._rec[name]


def read_mrc_header(path: str | os.PathLike) -> dict:
    """Read an MRC header without loading the data.

    Returns
    -------
    dict
        ``shape`` (nz, ny, nx) as in the header, ``apix`` (x voxel size, Å), ``apix_xyz`` (3 floats),
        ``mode`` (int), ``dtype`` (numpy dtype name), ``origin_a`` (x, y, z Å), ``is_stack``
        (``ispg == 0`` with nz > 1, i.e. an image stack), ``ispg``, ``nsymbt`` (extended header
        bytes), ``exttyp``, ``dmin``, ``dmax``, ``dmean``, ``rms``, ``labels`` (list of str).
    """
    with _open(path, header_only=True) as m:
        h = m.header
        _validate_header(h, path)
        vs = _voxel_sizes(h)
        labels = []
        for i in range(min(int(h.nlabl), 10) if 0 <= int(h.nlabl) else 0):
            labels.append(bytes(h.label[i]).decode("ascii", "replace").rstrip("\x00 "))
        mode = int(h.mode)
        dtype_name = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16", 101: "uint8"}[mode]
        return {
            "shape": _header_shape(h),
            "apix": vs[0],
            "apix_xyz": vs,
            "mode": mode,
            "dtype": dtype_name,
            "origin_a": (float(h.origin.x), float(h.origin.y), float(h.origin.z)),
            "ispg": int(h.ispg),
            "is_stack": int(h.ispg) == 0 and int(h.nz) > 1,
            "nsymbt": int(h.nsymbt),
            "exttyp": bytes(h.exttyp).decode("ascii", "replace").rstrip("\x00 "),
            "dmin": float(h.dmin), "dmax": float(h.dmax), "dmean": float(h.dmean), "rms": float(h.rms),
            "labels": labels,
        }


def _check_apix(apix: float, path, expect_apix, apix_tol: float, apix_override=None,
                apix_key: str = "microscope.apix", check: bool = True) -> float:
    """The pixel-size contract of :mod:`emflow.pixel_size` on a header value: an unset header
    (0, or mrcfile's/IMOD's default 1.0) is an error unless ``apix_override`` is given.
    ``check=False`` returns the raw header value (files whose pixel size is not used)."""
    if not check:
        return float(apix)
    from emflow.pixel_size import check_pixel_size

    return check_pixel_size(apix, source=os.fspath(path), expected=expect_apix, key=apix_key, tol=apix_tol,
                            override=apix_override, kind="mrc", what="MRC header (voxel size)")


def check_finite(data: np.ndarray, path) -> None:
    """Raise :class:`InputError` if ``data`` contains NaN or Inf (cheap: one float64 sum)."""
    with np.errstate(invalid="ignore", over="ignore"):
        if np.isfinite(data.sum(dtype=np.float64)):
            return
    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    raise InputError(f"data contain {n_bad} NaN/Inf values", source=path,
                     fix="regenerate the map; NaN usually comes from dividing by zero "
                     "(e.g. normalising an empty box)")


def _read_mmap(path, expect_apix, apix_tol, apix_override, apix_key, check_apix) -> tuple[np.ndarray, float]:
    """Memory-map the data block with numpy (header validated by mrcfile first)."""
    with _open(path, header_only=True) as mrc:
        h = mrc.header
        _validate_header(h, path)
        apix = _check_apix(_voxel_sizes(mrc.header)[0], path, expect_apix, apix_tol, apix_override, apix_key,
                           check_apix)
        mode = int(h.mode)
        if mode == 101:
            raise InputError("4-bit MRC (mode 101) cannot be memory-mapped", source=path,
                             fix="read it with mmap=False or convert it with `newstack -mode 2`")
        dtype = mrcfile.utils.data_dtype_from_header(h)
        offset = 1024 + max(int(h.nsymbt), 0)
        shape = _header_shape(h)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if os.path.getsize(path) < offset + nbytes:
            raise _truncation_error(h, path)
    data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    if dtype == np.float32 and dtype.isnative:
        return data, apix
    return np.asarray(data, dtype=np.float32), apix


def read_mrc(path: str | os.PathLike, mmap: bool = False, expect_apix: float | None = None,
             apix_tol: float = 0.01, check_nan: bool | None = None, apix_override: float | None = None,
             apix_key: str = "microscope.apix", check_apix: bool = True) -> tuple[np.ndarray, float]:
    """Read an MRC image, stack or volume.

    Parameters
    ----------
    path : str or os.PathLike
        ``.mrc .mrcs .map .rec .st .ali`` (any name; ``.gz`` is decompressed).
    mmap : bool
        Memory-map the data instead of reading it (large tomograms). For float32 (mode 2) files the
        result is a **read-only** memmap-backed array; other modes are converted in memory.
        Ignored for ``.gz`` files.
    expect_apix : float, optional
        Expected pixel size (Å), a check: if the header differs by more than ``apix_tol``
        (relative), :class:`InputError` is raised. It never replaces the header's value.
    apix_tol : float
        Relative tolerance for ``expect_apix`` (0.01 = 1 %).
    apix_override : float, optional
        The user's explicit pixel size for this file (config ``input.apix_override``; see
        :func:`emflow.pixel_size.apix_override`): used instead of the header, logged.
    apix_key : str
        Config key of ``expect_apix``, named in messages.
    check_apix : bool
        False: return the header's voxel size as it is, unchecked (0 or 1.0 when unset), for files
        whose pixel size the caller does not use (masks on a known grid, re-reads of a file whose
        pixel size an earlier stage established).
    check_nan : bool, optional
        Reject NaN/Inf values. Default: True for in-memory reads, False with ``mmap`` (the check
        would read the whole file).

    Returns
    -------
    data : ndarray, float32, (nz, ny, nx) or (ny, nx) for a single image
    apix : float
        Pixel size in Å (x axis). A header without one (0, or the unset default 1.0) raises
        :class:`InputError` unless ``apix_override`` is given or ``expect_apix`` is 1.0 too
        (:mod:`emflow.pixel_size`).
    """
    if check_nan is None:
        check_nan = not mmap
    if mmap and not _is_gz(path):
        out, apix = _read_mmap(path, expect_apix, apix_tol, apix_override, apix_key, check_apix)
    else:
        with _open(path) as mrc:
            _validate_header(mrc.header, path)
            if mrc.data is None:
                raise _truncation_error(mrc.header, path)
            apix = _check_apix(_voxel_sizes(mrc.header)[0], path, expect_apix, apix_tol, apix_override,
                               apix_key, check_apix)
            out = np.array(mrc.data, dtype=np.float32, copy=True)
    if out.ndim == 3 and out.shape[0] == 1:
        out = out[0]
    if check_nan:
        check_finite(out, path)
    return out, apix


def write_mrc(path: str | os.PathLike, data, apix: float, origin_a=None) -> None:
    """Write float32 data as MRC (mode 2) with voxel size, origin and header statistics.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; a ``.gz`` name writes gzip-compressed MRC, a ``.mrcs`` name with 3D data
        marks the file as an image stack (``ispg = 0``). Written atomically.
    data : array_like, (ny, nx) or (nz, ny, nx)
        Converted to float32.
    apix : float
        Pixel size in Å (> 0).
    origin_a : sequence of 3 float, optional
        Header origin (x, y, z) in Å.
    """
    arr = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
    if arr.ndim not in (2, 3):
        raise ValueError(f"data must be 2D or 3D, got shape {arr.shape}")
    if not (np.isfinite(apix) and apix > 0):
        raise ValueError(f"apix must be a positive number, got {apix}")
    path = os.fspath(path)
    with atomic_write(path) as tmp:
        compression = "gzip" if _is_gz(path) else None
        with warnings.catch_warnings(), mrcfile.new(tmp, overwrite=True, compression=compression) as m:
            warnings.simplefilter("ignore")  # NaN statistics: the readers report NaN data clearly
            m.set_data(arr)
            if arr.ndim == 3 and path.lower().removesuffix(".gz").endswith(".mrcs"):
                m.set_image_stack()
            m.voxel_size = float(apix)
            if origin_a is not None:
                ox, oy, oz = (float(v) for v in origin_a)
                m.header.origin.x, m.header.origin.y, m.header.origin.z = ox, oy, oz
            m.update_header_stats()
            # mrcfile's default label carries the creation time; a fixed label keeps reruns with
            # the same inputs and seed byte-identical (tests/workflow/test_determinism.py)
            m.header.label[0] = b"emflow".ljust(80)
            m.header.nlabl = 1
