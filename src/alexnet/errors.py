"""The one exception type that means "the user asked for something we cannot do".

Every command catches it at the top (cli.main), prints its message on one line and exits with status 2.
Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a one-line message saying what is wrong and what to do."""

    def __init__(self, message: str) -> None:
        # the message often quotes what the user gave (a key, a file name, a label): control characters in it
        # (a newline in a YAML key) are written escaped, so the message stays one line whatever it quotes
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))
