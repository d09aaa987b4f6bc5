"""The one error type users see: bad input, told in one line with the fix."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (file, column, row, option). The message is one line that names the culprit
    and says how to fix it; the CLI prints it and exits with status 2, without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
