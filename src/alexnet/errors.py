"""The one exception type that means "the user asked for something we cannot do".

Every command catches it at the top (cli.main), prints its message on one line and exits with status 2.
Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a one-line message saying what is wrong and what to do."""
