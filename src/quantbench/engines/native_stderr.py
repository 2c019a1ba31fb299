"""Native libraries' stderr (file descriptor 2), held for one block and filtered on the way back.

Why at the descriptor: TensorFlow Lite's runtime and TensorFlow inside litert-torch log from C++
("INFO: Created TensorFlow Lite XNNPACK delegate", "All log messages before absl::InitializeLog() ...",
oneDNN notices). Python's ``redirect_stderr`` does not reach C++, and ``TF_CPP_MIN_LOG_LEVEL`` does not
reach absl, so these lines repeated through every ``bench`` run (one fresh process per engine and variant).

Example:
    >>> import os
    >>> with held_stderr(lambda text, failed: ""):
    ...     _ = os.write(2, b"noise from C++\\n")
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

__all__ = ["held_stderr"]


@contextlib.contextmanager
def held_stderr(passed_on: Callable[[str, bool], str]) -> Iterator[None]:
    """Descriptor 2 into a temporary file for one block; afterwards ``passed_on(text, failed)`` is written back.

    Args:
        passed_on: Given what the block wrote and whether it raised, returns the text to show (e.g. all of it
            when the block failed, so a converter's last words are never lost).
    """
    fd = 2  # what C++ writes to, whatever Python's sys.stderr is
    try:
        os.fstat(fd)
    except OSError:  # no descriptor 2 at all (a detached process)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), fd)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            text = passed_on(held.read().decode("utf-8", "replace"), failed)
            if text:
                sys.stderr.write(text)
