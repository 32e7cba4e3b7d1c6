"""Errors a user can meet. The CLI prints them as one line and exits non-zero, never a traceback.

Any package may import this module and `squirrel.interrupt`; of the rest of `squirrel`, only entry points
(learn, bench, demo) import `squirrel.config`.
"""


class UserError(Exception):
    """A mistake or a missing piece on the user's side; the message says what to do."""

    exit_code = 2
