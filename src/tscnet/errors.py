"""Errors a user can fix. The CLI prints ``str(error)`` on one line and exits with status 2."""


class UserError(Exception):
    """Bad input (a path, a name, a value, a file): the message says what is wrong and what to do."""
