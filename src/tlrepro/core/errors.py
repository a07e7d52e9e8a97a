"""Errors meant for people: the CLI prints them as one clear line, without a traceback."""


class UserError(Exception):
    """Something the user can fix: a missing file, a bad parameter, absent credentials.

    The message names the file or parameter and says what to do.
    """
