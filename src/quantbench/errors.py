"""User-facing errors.

Anything the user can fix (a bad path, an unknown name, a malformed file) raises
:class:`QuantbenchError` with ONE line naming the file/key/value and what was expected.
The CLI turns it into ``quantbench: error: <message>`` on stderr and exit code 2, with no
traceback. Programming errors stay ordinary exceptions so they are never hidden.
"""

from __future__ import annotations


class QuantbenchError(Exception):
    """An error caused by user input; the message is shown verbatim, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))
