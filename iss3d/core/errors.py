"""The one exception type for mistakes in what a user gave us (files, arguments, configs)."""


class UserError(Exception):
    """A problem with the user's input, not a bug.

    The command line prints ``str(error)`` on one line (no traceback) and exits non-zero.
    The message should name the file or argument and say what is wrong with it.
    """
