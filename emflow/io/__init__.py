"""File I/O at the edges of emflow: MRC, EMAN2 HDF/.lst/info JSON, RELION STAR, IMOD, FSC text.

Every writer goes through :func:`atomic_write`; every reader turns malformed input into
:class:`emflow.errors.InputError` naming the file (and line, where there is one).
"""

from emflow.io._atomic import atomic_write
from emflow.io.eman_objects import (
    ctf_from_dict,
    ctf_from_string,
    ctf_to_dict,
    ctf_to_string,
    is_ctf_dict,
    is_transform_dict,
    transform_from_dict,
    transform_to_dict,
)
from emflow.io.fsc_txt import read_fsc_txt, write_fsc_curve, write_fsc_txt
from emflow.io.hdf import HdfStackWriter, hdf_count, read_hdf_header, read_hdf_stack, write_hdf_stack
from emflow.io.imod import read_coords_txt, read_tlt, read_xf, write_tlt, write_xf
from emflow.io.info import add_boxes, boxes_from_info, read_info_json, tlt_params, validate_info, write_info_json
from emflow.io.lst import LstEntry, read_lst, write_lst
from emflow.io.mrc import check_finite, read_mrc, read_mrc_header, write_mrc
from emflow.io.star import read_star, write_particles_star, write_star

__all__ = [
    "atomic_write",
    "read_mrc", "write_mrc", "read_mrc_header", "check_finite",
    "read_hdf_stack", "read_hdf_header", "write_hdf_stack", "hdf_count", "HdfStackWriter",
    "read_lst", "write_lst", "LstEntry",
    "transform_to_dict", "transform_from_dict", "is_transform_dict",
    "ctf_to_dict", "ctf_from_dict", "ctf_to_string", "ctf_from_string", "is_ctf_dict",
    "read_info_json", "write_info_json", "validate_info", "boxes_from_info", "add_boxes", "tlt_params",
    "read_star", "write_star", "write_particles_star",
    "read_tlt", "write_tlt", "read_xf", "write_xf", "read_coords_txt",
    "read_fsc_txt", "write_fsc_curve", "write_fsc_txt",
]
