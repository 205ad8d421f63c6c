"""Geometry: EMAN/RELION rotation conventions, symmetry groups, orientation generators.

See ``docs/CONVENTIONS.md`` (rotations act on column vectors ``(x, y, z)``; EMAN Euler
``R = Rz(phi)·Rx(alt)·Rz(az)``) and the module docstrings of :mod:`.euler`, :mod:`.symmetry` and
:mod:`.orientations` for the exact conventions.
"""

from emflow.geometry.euler import (
    angle_between,
    direction_to_alt_az,
    eman_to_matrix,
    eman_to_relion,
    matrix_to_eman,
    matrix_to_quat,
    matrix_to_relion,
    mean_rotation,
    quat_to_matrix,
    random_rotations,
    relion_to_eman,
    relion_to_matrix,
    rot_x,
    rot_y,
    rot_z,
    rotvec_to_matrix,
    tilt_matrix,
    view_direction,
)
from emflow.geometry.orientations import (
    GENERATORS,
    orientations,
    orientations_from_string,
    parse_orientgen,
)
from emflow.geometry.symmetry import (
    ACCEPTED_FORMS,
    Symmetry,
    get_symmetry,
    symmetry_angle_between,
)

__all__ = [
    "ACCEPTED_FORMS",
    "GENERATORS",
    "Symmetry",
    "angle_between",
    "mean_rotation",
    "direction_to_alt_az",
    "eman_to_matrix",
    "eman_to_relion",
    "get_symmetry",
    "matrix_to_eman",
    "matrix_to_quat",
    "matrix_to_relion",
    "orientations",
    "orientations_from_string",
    "parse_orientgen",
    "quat_to_matrix",
    "random_rotations",
    "relion_to_eman",
    "relion_to_matrix",
    "rot_x",
    "rot_y",
    "rot_z",
    "symmetry_angle_between",
    "tilt_matrix",
    "rotvec_to_matrix",
    "view_direction",
]
