"""The LiteRT converter's native stderr is held during conversion and replayed only when it fails."""

from __future__ import annotations

import os

import pytest

from quantbench.engines.litert_export import _quiet


def test_native_stderr_is_held_and_replayed_only_on_failure(capfd: pytest.CaptureFixture[str]) -> None:
    with _quiet():
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\n")  # what TensorFlow's C++ prints
        print("converter progress")
    assert capfd.readouterr() == ("", "")
    with pytest.raises(RuntimeError, match="conversion broke"), _quiet():
        os.write(2, b"F0000 the converter's last words\n")
        raise RuntimeError("conversion broke")
    assert "the converter's last words" in capfd.readouterr().err
    os.write(2, b"after\n")  # the descriptor is restored
    assert capfd.readouterr().err == "after\n"
