"""Error types raised by emflow for problems a user can fix.

Every message names the offending file or config key and says what to do about it.
Kernels raise ``ValueError`` for programming errors (wrong shapes); readers, validators and
workflow scripts raise :class:`InputError` for bad user input.
"""

from __future__ import annotations

import os


class EmflowError(Exception):
    """Base class of all errors emflow raises on purpose."""


class InputError(EmflowError, ValueError):
    """Bad user input: a file or config value that cannot be used as given.

    Parameters
    ----------
    what : str
        What is wrong, e.g. ``"voxel size is 0"``.
    source : str or os.PathLike, optional
        The file or config key at fault; it is quoted at the start of the message.
    fix : str, optional
        What the user should do, appended as ``"Fix: ..."``.
    """

    def __init__(self, what: str, source: str | os.PathLike | None = None, fix: str | None = None):
        self.what = what
        self.source = None if source is None else os.fspath(source)
        self.fix = fix
        msg = what if self.source is None else f"{self.source}: {what}"
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)
