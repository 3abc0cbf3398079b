"""Format versions of the files tscnet writes, and the check that refuses a file from a newer tscnet.

Every JSON record tscnet writes (``steps.json``, ``model_card.json``, ``diverged.json``,
``platform.json``, a study's ``cell.json`` and ``summary.json``, ``tscnet report``'s and ``tscnet
stability``'s ``summary.json`` / ``stability.json``) and every ``checkpoint.pt`` carries
``"format_version": FORMAT_VERSION``. A reader accepts its own version and older ones (a file
without the key was written before versions existed: version 1) and refuses a newer one in one
line, instead of misreading it. Raise the version when a file's meaning changes, not when a key
is added that old readers can ignore.
"""

from __future__ import annotations

from typing import Any

from .errors import UserError

FORMAT_KEY = "format_version"  #: the key of the version in every JSON record and checkpoint
FORMAT_VERSION = 1  #: the version this tscnet writes (and the newest it reads)


def stamped(record: dict) -> dict:
    """``record`` with the format version as its first key."""
    return {FORMAT_KEY: FORMAT_VERSION, **{k: v for k, v in record.items() if k != FORMAT_KEY}}


def check_format(record: Any, where: object) -> None:
    """Refuse a record written by a newer tscnet (a higher ``format_version``), naming the file.

    Raises:
        UserError: the version is newer than :data:`FORMAT_VERSION`, or not a positive integer.
    """
    if not isinstance(record, dict) or FORMAT_KEY not in record:
        return  # no version: written before versions existed (1)
    version = record[FORMAT_KEY]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{where} has format_version {version!r}, not a positive integer: the file is damaged")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{where} was written by a newer tscnet (file format {version}; this tscnet reads "
            f"format {FORMAT_VERSION} and older): upgrade tscnet (pip install -U tscnet) to read it"
        )
