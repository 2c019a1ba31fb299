"""``quantbench <verb>``: parse -> config -> ONE experiment-layer call -> print.

``main(argv)`` is callable in-process (tests do). User errors print one line on stderr and return
exit code 2, without a traceback; any other error prints one line naming the verb and exits 1
(``--debug`` shows the traceback). With ``--json`` the last stdout line is one JSON value.

Verbs that run an experiment (:data:`~quantbench.cli.experiment_verbs.EXPERIMENT_VERBS`) get their
flags from the kind's config (:mod:`quantbench.cli.flags`), so a concept has the same flag and
help on every verb. The other verbs (listing, results, reports, bundles, exports, sweeps) are in
:mod:`quantbench.cli.tool_verbs`.

Example:
    >>> main(["models", "resnet2*", "--no-count", "--json"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from quantbench import __version__
from quantbench.errors import QuantbenchError

__all__ = ["build_parser", "main"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2 (argparse's own code, kept)."""

    def error(self, message: str) -> NoReturn:
        raise QuantbenchError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every verb with its flags."""
    from quantbench.cli import experiment_verbs, tool_verbs

    parser = Parser(prog="quantbench", description="What does quantization do to my CNN, on my hardware?")
    parser.add_argument("--version", action="version", version=f"quantbench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    experiment_verbs.add_verbs(sub)
    tool_verbs.add_verbs(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is: a stored run is then marked ``interrupted``, not left running."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 failed, 2 bad input, 130 interrupted, 143 terminated)."""
    args_list = list(argv) if argv is not None else sys.argv[1:]
    debug = "--debug" in args_list
    args_list = [a for a in args_list if a != "--debug"]  # accepted anywhere on the line
    verb = next((a for a in args_list if not a.startswith("-")), "quantbench")
    try:
        if argv is None:  # the real command line (tests call main(argv) and keep their own handlers)
            signal.signal(signal.SIGTERM, _on_sigterm)
        parser = build_parser()
        args = parser.parse_args(args_list)
        return int(args.func(args) or 0)
    except QuantbenchError as exc:
        print(f"quantbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("quantbench: " + ("terminated" if isinstance(exc, Terminated) else "interrupted"), file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # `quantbench results | head -1`: the reader left; nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback with --debug
        if debug:
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"quantbench: error: {verb}: {type(exc).__name__}: {first} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
