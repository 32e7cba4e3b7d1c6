"""Errors a user can meet. The CLI prints them as one line and exits non-zero, never a traceback.

Core packages may import this module (and only this one) from `squirrel`.
"""


class UserError(Exception):
    """A mistake or a missing piece on the user's side; the message says what to do."""

    exit_code = 2
