"""Fourier resampling of a 3D map to a new pixel size and box (a user's template, mask or reference).

Conventions
-----------
* Arrays are ``[z, y, x]``; pixel sizes in Å/px; the box may differ per axis.
* The centre is voxel ``n // 2`` on every axis (emflow's convention, as :func:`emflow.fourier.ft`,
  :func:`emflow.fourier.crop` and :func:`emflow.fourier.fourier_crop`): input voxel ``n // 2`` lands
  on output voxel ``box // 2``, so a map centred in its box stays centred.
* Values keep their scale (density per voxel; the mean of a band-limited map is preserved), as
  :func:`emflow.fourier.fourier_crop`.

Method
------
Band-limited (trigonometric) interpolation, the exact generalisation of Fourier crop/pad to any
pixel-size ratio: along each axis the map is treated as the periodic band-limited function of its
DFT and evaluated at the output sample positions ``x_j = n//2 + (j − box//2) · apix_out/apix_in``
(input px). When the pixel size grows (down-sampling) only frequencies up to the new Nyquist
``0.5/apix_out`` Å⁻¹ are kept (an ideal low-pass, as a Fourier crop); when it shrinks nothing is
added beyond the input's Nyquist (as a Fourier pad). Output samples outside the input's extent are 0
(the map is zero outside its box ``[n//2 − n/2, n//2 + n/2)`` input px, the DFT's periodic cell about
the centre), so a larger output box is zero-padded. The interpolation is
separable: one ``(box, n)`` matrix per axis, applied with BLAS, so it costs ``O(n³·box)`` and no
FFT size constraints apply (the pixel-size ratio need not be rational with small terms). For an
integer ratio with ``box = n·apix_in/apix_out`` it equals :func:`emflow.fourier.fourier_crop`
(exactly when up-sampling; when down-sampling up to the frequency on the new Nyquist, which
fourier_crop aliases into one bin and this gives half weight on each side).
"""

from __future__ import annotations

import os

import numpy as np

from emflow.errors import InputError

__all__ = ["resample_matrix", "resample_map", "default_box", "read_user_map"]


def resample_matrix(n: int, box: int, ratio: float) -> np.ndarray:
    """Interpolation matrix ``(box, n)`` of one axis.

    Parameters
    ----------
    n : int
        Input samples along the axis.
    box : int
        Output samples.
    ratio : float
        ``apix_out / apix_in`` (> 1: down-sampling, a low-pass at the new Nyquist).

    Returns
    -------
    (box, n) float64 ``M`` with ``out[j] = Σ_i M[j, i] · in[i]``.
    """
    if n < 1 or box < 1 or not ratio > 0:
        raise ValueError(f"resample_matrix: n={n}, box={box}, ratio={ratio}")
    x = n // 2 + (np.arange(box) - box // 2) * float(ratio)  # output positions in input px
    d = x[:, None] - np.arange(n)[None, :]
    # frequencies k/n (cycles per input px) kept: |k/n| <= min(0.5, 0.5/ratio)
    kmax_f = n * min(0.5, 0.5 / float(ratio))
    kmax = int(np.floor(kmax_f + 1e-9))
    m = np.ones_like(d)
    for k in range(1, kmax + 1):
        # a frequency on the band edge (the input's Nyquist for even n, or the new Nyquist) is half
        # in the band: the real interpolant of a symmetric ±k pair with half weight
        w = 0.5 if abs(k - kmax_f) < 1e-9 else 1.0
        m += 2.0 * w * np.cos(2.0 * np.pi * k * d / n)
    m /= n
    # beyond the input's periodic cell [n//2 − n/2, n//2 + n/2) (the box about its centre): zero
    m[(x < n // 2 - n / 2 - 1e-9) | (x >= n // 2 + n / 2 - 1e-9), :] = 0.0
    return m


def default_box(shape, apix_in: float, apix_out: float) -> tuple[int, ...]:
    """Even box per axis nearest the input's extent at the new pixel size (at least 8)."""
    return tuple(max(8, 2 * int(round(n * apix_in / apix_out / 2))) for n in shape)


def resample_map(vol: np.ndarray, apix_in: float, apix_out: float, box=None) -> np.ndarray:
    """Resample a 3D map ``[z, y, x]`` from ``apix_in`` to ``apix_out`` Å/px into ``box``.

    Parameters
    ----------
    vol : (nz, ny, nx) array
    apix_in, apix_out : float
        Pixel sizes (Å/px) of the input and the output.
    box : int or (bz, by, bx), optional
        Output shape; default :func:`default_box` (the same extent in Å). A smaller box crops and a
        larger one zero-pads about the centre ``n//2 → box//2``.

    Returns
    -------
    (bz, by, bx) float32
    """
    vol = np.asarray(vol, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"resample_map needs a 3D map, got shape {vol.shape}")
    if not (apix_in > 0 and apix_out > 0):
        raise ValueError(f"pixel sizes must be > 0 (got {apix_in}, {apix_out})")
    if box is None:
        box = default_box(vol.shape, apix_in, apix_out)
    box = (int(box),) * 3 if np.isscalar(box) else tuple(int(b) for b in box)
    ratio = apix_out / apix_in
    if abs(ratio - 1.0) < 1e-5:  # same pixel size (to float32 header precision): exact centred crop/pad
        from emflow import fourier

        for axis in range(3):
            size = [vol.shape[i] if i != axis else box[axis] for i in range(3)]
            vol = fourier.crop(vol, size) if box[axis] < vol.shape[axis] else fourier.pad(vol, size)
        return np.ascontiguousarray(vol, dtype=np.float32)
    out = vol
    # shrinking axes first keeps the intermediate arrays small
    order = sorted(range(3), key=lambda a: box[a] / vol.shape[a])
    for axis in order:
        mat = resample_matrix(vol.shape[axis], box[axis], ratio).astype(np.float32)
        out = np.moveaxis(np.tensordot(mat, out, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def read_user_map(path: str | os.PathLike, key: str, override: float | None = None) -> tuple[np.ndarray, float]:
    """A user's 3D map (MRC or EMAN2 HDF, first image) and its pixel size from the file's own header
    (:func:`emflow.pixel_size.pixel_size`: a missing, zero or unset 1.0 Å voxel size is an InputError
    naming the file and how to set the header, unless ``override`` — the user's
    ``input.apix_override`` entry for this file — is given).

    Raises
    ------
    InputError
        Naming the file, the config ``key`` that points at it and the fix.
    """
    from emflow.pixel_size import pixel_size

    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"map file {path} does not exist", source=key, fix=f"correct {key} or set it to null")
    apix = pixel_size(path, key=key, override=override)
    if path.lower().endswith((".hdf", ".h5", ".hdf5")):
        from emflow.io import read_hdf_stack

        img, _ = read_hdf_stack(path, [0])
        vol = img[0]
    else:
        from emflow.io import read_mrc

        vol, _ = read_mrc(path, check_apix=False)  # the pixel size was checked above
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise InputError(f"{path} is not a 3D map (shape {vol.shape})", source=key,
                         fix="give a 3D map (one volume, not an image or a stack)")
    return np.asarray(vol, np.float32), float(apix)
