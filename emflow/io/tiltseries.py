"""Tilt series in the two layouts users bring: an MRC stack or an EMAN2 HDF stack.

* MRC (``.mrc .mrcs .st .ali``): one 3D block ``(n, ny, nx)``, pixel size from the voxel size.
* EMAN2 HDF (``.hdf``): what ``e2import.py --import_tiltseries`` writes into ``tiltseries/``: one
  2D image per tilt, ``/MDF/images/<i>/image`` (often lossy-compressed to 8 bits,
  ``write_compressed``), the pixel size in the header key ``apix_x`` (EMAN2 ``programs/e2import.py``
  L477 ``img["apix_x"]=options.apix``, L485-486 ``img.write_image(newname,seq)`` /
  ``img.write_compressed(newname,seq,...)``). See :mod:`emflow.io.hdf` for the layout.

The file is recognised by its content (HDF5 signature), not its suffix, so an EMAN2 ``.hdf``
tilt series is never reported as a damaged MRC and an MRC named ``.hdf`` still reads.
"""

from __future__ import annotations

import os

import numpy as np

from emflow.errors import InputError
from emflow.io.hdf import hdf_count, hdf_image_shape, read_hdf_header, read_hdf_stack
from emflow.io.mrc import read_mrc, read_mrc_header

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FIX_APIX = ("set the pixel size in the file: MRC `python -c \"import mrcfile; m = mrcfile.open('FILE', 'r+'); "
             "m.voxel_size = APIX; m.close()\"`, EMAN2 HDF `e2proc2d.py FILE FILE --apix APIX`")


def is_hdf5(path: str | os.PathLike) -> bool:
    """True if the file starts with the HDF5 signature."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == _HDF5_SIGNATURE
    except OSError:
        return False


def _exists(path) -> None:
    if not os.path.isfile(path):
        raise InputError("tilt series file does not exist", source=path, fix="check the path in the config")


def _check(apix: float | None, path, expected: float | None, tol: float, override: float | None) -> float:
    # the one pixel-size contract (emflow.pixel_size): the header is the value, the config a check
    from emflow.pixel_size import check_pixel_size

    kind = "hdf" if is_hdf5(path) else "mrc"
    return check_pixel_size(apix, source=path, expected=expected, key="microscope.apix", tol=tol,
                            override=override, kind=kind)


def tilt_series_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(n, ny, nx)`` of a tilt series without reading its images."""
    _exists(path)
    if is_hdf5(path):
        n = hdf_count(path)
        if n == 0:
            raise InputError("the HDF tilt series holds no images", source=path)
        shape = hdf_image_shape(path, 0)
        if len(shape) != 2:
            raise InputError(f"HDF image 0 has shape {shape}: a tilt series needs one 2D image "
                             "per tilt", source=path, fix="give the tilt series, not a tomogram")
        return n, shape[0], shape[1]
    n, ny, nx = read_mrc_header(path)["shape"]
    return int(n), int(ny), int(nx)


def tilt_series_apix(path: str | os.PathLike, *, expected: float | None = None, tol: float = 0.01,
                     override: float | None = None) -> float:
    """Pixel size (Å) of a tilt series from its own header (MRC voxel size, HDF ``apix_x``)."""
    _exists(path)
    if is_hdf5(path):
        return _check(read_hdf_header(path, 0).get("apix_x"), path, expected, tol, override)
    return _check(float(read_mrc_header(path)["apix"]), path, expected, tol, override)


def read_tilt_series(path: str | os.PathLike, *, mmap: bool = True, expected: float | None = None,
                     tol: float = 0.01, override: float | None = None) -> tuple[np.ndarray, float]:
    """Read a tilt series (MRC stack or EMAN2 HDF).

    Parameters
    ----------
    path : str or os.PathLike
    mmap : bool
        Memory-map float32 MRC stacks (HDF and other MRC modes are read into memory).
    expected : float, optional
        The configured pixel size; a header differing by more than ``tol`` (relative) is an
        :class:`InputError` (so is a header without a pixel size).
    override : float, optional
        The user's explicit pixel size for this file (``input.apix_override``).

    Returns
    -------
    stack : ndarray float32 ``(n, ny, nx)`` (possibly a read-only memmap)
    apix : float
        Å per pixel, from the file's header.
    """
    _exists(path)
    if is_hdf5(path):
        images, headers = read_hdf_stack(path)
        if images.ndim != 3 or len(images) == 0:
            raise InputError(f"HDF tilt series has image shape {images.shape}: one 2D image per tilt needed",
                             source=path, fix="give the tilt series, not a tomogram")
        apix = _check(headers[0].get("apix_x"), path, expected, tol, override)
        return images, apix
    # one open: read_mrc applies the same pixel-size contract (emflow.pixel_size) as _check
    stack, apix = read_mrc(path, mmap=mmap, check_nan=not mmap, expect_apix=expected, apix_tol=tol,
                           apix_override=override)
    if stack.ndim == 2:
        stack = stack[None]
    return stack, float(apix)
