"""The command line: every flag has help; one concept has one flag on every verb that has it."""

from __future__ import annotations

import argparse

from quantbench.cli import build_parser
from quantbench.cli.experiment_verbs import EXPERIMENT_VERBS


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_of_every_verb_has_help_text():
    for verb, sub in _subparsers().items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), (verb, action.option_strings or action.dest)


def test_the_same_concept_has_the_same_flag_on_every_experiment_verb():
    subs = _subparsers()
    shared = {"--model", "--checkpoint", "--hyper", "--input-shape", "--threads", "--store", "--no-store", "--out",
              "--json", "--seed", "--config", "--set", "--no-progress"}
    for verb in EXPERIMENT_VERBS:
        flags = {opt for a in subs[verb]._actions for opt in a.option_strings}
        assert shared <= flags, (verb, shared - flags)
    # the retired spellings of one concept are gone
    for verb, sub in subs.items():
        flags = {opt for a in sub._actions for opt in a.option_strings}
        assert not flags & {"--scheme", "--algo", "--schemes", "--input-size", "--resize", "--plan", "--min-time",
                            "--runs-dir"}, verb


def test_help_of_one_concept_is_the_same_text_everywhere():
    subs = _subparsers()
    texts: dict[str, set[str]] = {}
    for verb in EXPERIMENT_VERBS:
        for a in subs[verb]._actions:
            for opt in a.option_strings:
                if opt in ("--threads", "--store", "--hyper", "--input-shape", "--model", "--normalize"):
                    texts.setdefault(opt, set()).add(a.help)
    assert all(len(v) == 1 for v in texts.values()), texts


def test_an_unexpected_error_is_one_line_exit_1_and_its_traceback_needs_debug(monkeypatch, capsys):
    import dataclasses

    import pytest

    from quantbench.cli import main
    from quantbench.experiments.layer import KINDS

    def broken(cfg, ctx):
        raise RuntimeError("something inside broke\nsecond line")

    kind = KINDS.get("eval")
    monkeypatch.setitem(KINDS._items, "eval", dataclasses.replace(kind, handler=broken))
    assert main(["eval", "--no-store"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "eval: RuntimeError: something inside broke" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        main(["eval", "--no-store", "--debug"])
