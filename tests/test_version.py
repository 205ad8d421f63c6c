"""emflow.__version__ comes from git tags (git describe), else installed metadata, else the static fallback."""

import re
import shutil
import subprocess

import pytest

import emflow

PEP440 = re.compile(r"\d+(\.\d+)*(\+[a-z0-9]+(\.[a-z0-9]+)*)?")


@pytest.mark.parametrize(("describe", "expected"), [
    ("v1.2.0-0-gabc1234", "1.2.0"),
    ("v1.2.0-0-gabc1234-dirty", "1.2.0+dirty"),
    ("1.2.0-3-gabc1234", "1.2.0+3.gabc1234"),
    ("v0.1.0-12-g0123abcd-dirty\n", "0.1.0+12.g0123abcd.dirty"),
    ("abc1234", "0.1.0+gabc1234"),
    ("abc1234-dirty", "0.1.0+gabc1234.dirty"),
])
def test_version_from_describe(describe, expected):
    assert emflow.version_from_describe(describe, base="0.1.0") == expected
    assert PEP440.fullmatch(expected)


def test_version_from_describe_refuses_garbage():
    with pytest.raises(ValueError):
        emflow.version_from_describe("release-candidate")


def test_version_matches_git_describe_in_a_checkout():
    v = emflow.__version__
    assert PEP440.fullmatch(v), v
    root = emflow.__file__.rsplit("/emflow/", 1)[0]
    if shutil.which("git") is None or emflow._git_version() is None:
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "-C", root, "describe", "--tags", "--long", "--dirty", "--always"],
                         capture_output=True, text=True, check=True).stdout
    assert v == emflow.version_from_describe(out)


def test_static_fallback_outside_git(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(emflow, "_git_version", lambda: None)
    monkeypatch.setattr(importlib.metadata, "version", missing)
    emflow._version.cache_clear()
    try:
        assert emflow.__version__ == emflow._FALLBACK_VERSION
    finally:
        emflow._version.cache_clear()


def test_fallback_matches_pyproject():
    import tomllib
    from pathlib import Path

    pyproject = Path(emflow.__file__).parent.parent / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("installed package, no pyproject.toml")
    assert tomllib.loads(pyproject.read_text())["project"]["version"] == emflow._FALLBACK_VERSION
