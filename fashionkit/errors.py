"""The one exception type for expected user mistakes.

The CLI prints a UserError as a single ``error: ...`` line and exits with status 2, without a traceback.
Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: the message names the problem and what to do about it."""
