"""Property tests: malformed input to every reader raises InputError and nothing else."""

from __future__ import annotations

import os
import pathlib
import struct
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emflow.errors import InputError
from emflow.io import (
    read_coords_txt,
    read_fsc_txt,
    read_hdf_stack,
    read_info_json,
    read_lst,
    read_mrc,
    read_mrc_header,
    read_star,
    read_tlt,
    read_xf,
    write_lst,
    write_mrc,
)

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_DIR = tempfile.mkdtemp(prefix="emflow_fuzz_")


def _only_input_error(reader, name: str, content: bytes, **kwargs) -> None:
    path = os.path.join(_DIR, name)
    with open(path, "wb") as f:
        f.write(content)
    try:
        reader(path, **kwargs)
    except InputError as exc:
        assert name in str(exc)  # every message names the file


# text that looks like the format often enough to reach the deeper parser branches
STAR_PIECES = st.sampled_from(["data_", "data_optics", "data_particles", "loop_", "_rlnX #1", "_rlnY #2",
                               "_rlnName", "1 2", "3", "a b c", "'q r'", '"x', "#c", "", " ", "1.5e3 x",
                               "_rlnKey value", "nan inf", "1_0 2"])
TEXT_LINES = st.lists(st.one_of(STAR_PIECES, st.text(max_size=30)), max_size=20).map("\n".join)
NUM_LINES = st.lists(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                                        st.sampled_from(["x", "", ",", "1e999", "-", "#"])),
                              max_size=7).map(" ".join), max_size=10).map("\n".join)


@SETTINGS
@given(st.binary(max_size=400))
def test_star_random_bytes(data):
    _only_input_error(read_star, "f.star", data)


@SETTINGS
@given(TEXT_LINES)
def test_star_structured_text(text):
    _only_input_error(read_star, "g.star", text.encode("utf-8", "surrogatepass"))


LSX_HEAD = "#LSX\n# comment\n"


@SETTINGS
@given(st.binary(max_size=300))
def test_lst_random_bytes(data):
    _only_input_error(read_lst, "f.lst", data)


@SETTINGS
@given(st.sampled_from(["#LSX\n", LSX_HEAD, LSX_HEAD + "# 30\n", "#LST\n", LSX_HEAD + "# 2\n",
                        "#LSX\n#keys: a;b\n# 20\n"]),
       st.lists(st.one_of(st.text(max_size=40), st.sampled_from(
           ["0\ta.hdf\t{}", "1\tb.hdf\t{\"x\":", "x\ty", "3\ta.hdf\t1;2", "2\ta.hdf\tTransform(",
            "4\ta.hdf\t1.0;Transform({'az':'q'})", "5\ta.hdf\t{'az':1e999}", "6\ta.hdf\t[[[[[[[[",
            "7\t\t{}", "8\ta.hdf\t" + "[" * 5000])), max_size=8))
def test_lst_structured_text(head, lines):
    _only_input_error(read_lst, "g.lst", (head + "\n".join(lines)).encode("utf-8", "surrogatepass"))


@SETTINGS
@given(st.binary(max_size=200), st.integers(0, 3))
def test_lst_corrupted_valid_file(noise, where):
    """A valid LSX with bytes overwritten or cut somewhere."""
    path = os.path.join(_DIR, "v.lst")
    write_lst(path, [(i, "particles/a.hdf", {"class": i % 2, "score": -0.5 * i}) for i in range(4)])
    raw = pathlib.Path(path).read_bytes()
    pos = len(raw) * where // 4
    _only_input_error(read_lst, "v.lst", raw[:pos] + noise + raw[pos + len(noise):])


@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.sampled_from(["tlt_params", "boxes_3d", "class_list",
                                                                "apix_unbin", "defocus", "name", "0"]),
                                               children, max_size=5)),
    max_leaves=20).map(lambda v: __import__("json").dumps(v).encode())))
def test_info_json_fuzz(data):
    _only_input_error(read_info_json, "t_info.json", data)


@SETTINGS
@given(st.one_of(st.binary(max_size=200), NUM_LINES.map(lambda s: s.encode())))
def test_tlt_xf_coords_fsc_fuzz(data):
    for reader, name in ((read_tlt, "a.tlt"), (read_xf, "a.xf"), (read_coords_txt, "a.txt"),
                         (read_fsc_txt, "fsc.txt")):
        _only_input_error(reader, name, data)


def _valid_mrc_bytes() -> bytes:
    path = os.path.join(_DIR, "base.mrc")
    write_mrc(path, np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), 2.0)
    return pathlib.Path(path).read_bytes()


_BASE_MRC = _valid_mrc_bytes()
# header words whose corruption matters most: nx ny nz mode, nxstart.., mx my mz, cella, mapc/r/s, nsymbt
_WORDS = [0, 1, 2, 3, 7, 8, 9, 10, 11, 12, 16, 17, 18, 23]


@SETTINGS
@given(st.binary(min_size=1024, max_size=1024), st.binary(max_size=600))
def test_mrc_random_header_and_data(header, data):
    for kwargs in ({}, {"mmap": True}):
        _only_input_error(read_mrc, "r.mrc", header + data, **kwargs)
    _only_input_error(read_mrc_header, "r.mrc", header + data)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(_WORDS),
                          st.one_of(st.integers(-2**31, 2**31 - 1), st.sampled_from([0, -1, 1, 2, 4, 6, 12, 101,
                                                                                      2**30, 3, 99999]))),
                min_size=1, max_size=4),
       st.booleans(), st.integers(0, len(_BASE_MRC)))
def test_mrc_corrupted_header_words(edits, also_cut, cut):
    raw = bytearray(_BASE_MRC)
    for word, value in edits:
        raw[4 * word:4 * word + 4] = struct.pack("<i", value)
    if also_cut:
        raw = raw[:cut]
    for kwargs in ({}, {"mmap": True}):
        _only_input_error(read_mrc, "c.mrc", bytes(raw), **kwargs)


@SETTINGS
@given(st.binary(max_size=300))
def test_hdf_random_bytes(data):
    _only_input_error(read_hdf_stack, "r.hdf", b"\x89HDF\r\n\x1a\n" + data)
