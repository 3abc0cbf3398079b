"""User-facing data errors.

Everything a user can fix (a missing folder, a corrupt or hostile file, an unknown name) raises a
:class:`DataError` whose ``str()`` is one line saying what is wrong and what to do; the CLI prints
it and exits with status 2. Subclasses keep the built-in exception a caller would expect.
"""

from __future__ import annotations

from ..errors import UserError

__all__ = ["DataError", "DataNotFoundError", "DataFormatError", "UnsafeDataError", "UnknownDatasetError"]


class DataError(UserError):
    """A problem with the user's data or data options, explained in one line."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Expected files are missing; the message names what was expected where and how to get it."""


class DataFormatError(DataError, ValueError):
    """A file exists but is not in the expected format (bad magic number, wrong shape, ...)."""


class UnsafeDataError(DataFormatError):
    """A file or archive asks for something a data file never needs (code execution, links, ``..``)."""


class UnknownDatasetError(DataError, ValueError):
    """The dataset name is not registered."""
