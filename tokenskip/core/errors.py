"""The one exception type for problems a user can fix.

Anything a user can fix (a missing file, a bad flag value, a malformed record) is raised as
`UsageError`; the stage scripts print it as a single line, never as a traceback.
"""


class UsageError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""


def first_line(exc: BaseException) -> str:
    """An exception in one line, for a UsageError that explains it: its message's first line, else its type."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
