"""Errors a user can fix. The CLI prints ``str(error)`` on one line and exits with status 2.

Anything else that reaches the CLI is a bug (in tscnet or in a library it calls): it keeps its
traceback and the exit status is 1. Each subclass below is also the built-in exception a Python
caller expects, so ``except ValueError`` still catches a bad policy string, ``except TypeError`` a
refused block type. Raise them where the value comes from the caller: a name, a policy string, an
option, a path, a config value, a model. Checks that only a bug in tscnet can fail (an internal
invariant) raise the plain built-in, so that the CLI reports them as bugs.
"""

from __future__ import annotations

__all__ = ["UserError", "InvalidValue", "InvalidType", "NotFound", "UnknownName"]


class UserError(Exception):
    """Bad input (a path, a name, a value, a file): the message says what is wrong and what to do."""


class InvalidValue(UserError, ValueError):
    """A value the caller chose is out of range or of the wrong form (a policy string, an option,
    a config value, a model the operation refuses)."""


class InvalidType(UserError, TypeError):
    """An object of a type the operation refuses (a residual block or norm layer without an adapter,
    a policy given as neither a string nor a mapping)."""


class NotFound(UserError, FileNotFoundError):
    """A path the caller named does not exist."""


class UnknownName(UserError, KeyError):
    """A name the caller looked up is not registered."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its key (quoted); the message here is a sentence.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()
