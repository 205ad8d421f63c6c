"""emflow: EMAN2-style cryo-EM / cryo-ET processing kernels and I/O.

Importing the package defines functions only: no logging set-up, no files, no globals
that change behaviour. See ``docs/CONVENTIONS.md`` for array, rotation and unit conventions.
"""

from emflow.errors import EmflowError, InputError

__all__ = ["EmflowError", "InputError", "__version__"]
__version__ = "0.1.0"
