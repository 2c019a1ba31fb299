"""The fresh worker process: a new process that sees the caller's directory and environment of the moment."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from quantbench.fresh_process import run_in_fresh_process


def _state(name: str) -> tuple[int, str, str | None, bool]:
    return os.getpid(), os.getcwd(), os.environ.get(name), "torch" in __import__("sys").modules


def test_each_call_is_a_new_process_with_the_callers_directory_and_environment(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    first = run_in_fresh_process(_state, "QB_FRESH_TEST")  # the fork server may start here
    monkeypatch.chdir(tmp_path)  # changed after the server started: a fork server alone would not see it
    monkeypatch.setenv("QB_FRESH_TEST", "seen")
    second = run_in_fresh_process(_state, "QB_FRESH_TEST")
    assert len({os.getpid(), first[0], second[0]}) == 3
    assert first[2] is None and second[2] == "seen"
    assert Path(second[1]).resolve() == tmp_path.resolve()
    assert second[3]  # torch came with the worker (preloaded once), not imported per call
    monkeypatch.delenv("QB_FRESH_TEST")
    assert run_in_fresh_process(_state, "QB_FRESH_TEST")[2] is None  # removed variables are gone too


def test_an_exception_comes_back_and_a_dead_worker_is_reported() -> None:
    with pytest.raises(ZeroDivisionError):
        run_in_fresh_process(divmod, 1, 0)
    with pytest.raises(BrokenProcessPool):
        run_in_fresh_process(os._exit, 3)
