"""emflow: EMAN2-style cryo-EM / cryo-ET processing kernels and I/O.

Importing the package defines functions only: no logging set-up, no files, no globals
that change behaviour. See ``docs/CONVENTIONS.md`` for array, rotation and unit conventions.

``emflow.__version__`` is worked out on first access (not at import), from the git tags of the
checkout the package is imported from (``git describe --tags``, as a PEP 440 version), else from
the installed metadata, else the static ``_FALLBACK_VERSION``.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess

from emflow.errors import EmflowError, InputError

__all__ = ["EmflowError", "InputError", "__version__"]

_FALLBACK_VERSION = "0.1.0"  # = [project] version in pyproject.toml; used outside a git checkout


def version_from_describe(describe: str, base: str = _FALLBACK_VERSION) -> str:
    """PEP 440 version from ``git describe --tags --long --dirty --always`` output.

    ``v1.2.0-0-gabc1234`` → ``1.2.0``; ``v1.2.0-3-gabc1234-dirty`` → ``1.2.0+3.gabc1234.dirty``;
    no tag (a bare hash ``abc1234``) → ``base+gabc1234``.
    """
    d = describe.strip()
    dirty = d.endswith("-dirty")
    if dirty:
        d = d[: -len("-dirty")]
    m = re.fullmatch(r"v?(?P<tag>\d+(?:\.\d+)*)-(?P<n>\d+)-g(?P<sha>[0-9a-f]+)", d)
    if m:
        local = ([] if m["n"] == "0" else [m["n"], "g" + m["sha"]]) + (["dirty"] if dirty else [])
        return m["tag"] + ("+" + ".".join(local) if local else "")
    if re.fullmatch(r"[0-9a-f]{4,40}", d):
        return f"{base}+g{d}" + (".dirty" if dirty else "")
    raise ValueError(f"unrecognised git describe output {describe!r}")


def _git_version() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")) or not os.path.exists(os.path.join(root, "pyproject.toml")):
        return None
    try:
        out = subprocess.run(["git", "-C", root, "describe", "--tags", "--long", "--dirty", "--always"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return version_from_describe(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def _version() -> str:
    v = _git_version()
    if v is None:
        try:
            from importlib.metadata import PackageNotFoundError, version

            v = version("emflow")
        except PackageNotFoundError:
            v = _FALLBACK_VERSION
    return v


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'emflow' has no attribute {name!r}")
