"""`longvid`: one console command, one subcommand per job (`python -m longvid` is the same).

Each subcommand lives in its own module under jobs/ and exposes `register(subparsers)`, which adds a parser
whose `func(args) -> int` runs the job. Adding a job means adding a module and one name below. Building the parser
imports no torch, Ray or pyarrow (`--help` answers at once): the job modules import their pipelines inside `run`.

Exit status: 0 done; 1 the job ran but did not complete (its summary says why); 2 a configuration or user mistake,
reported as one line naming the setting before any work starts; 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable

from longvid import __version__

# module name under jobs/ -> registered in this order in --help
COMMANDS = ["ingest", "demo", "encode", "plan", "train", "audit", "niah"]
LOG_LEVELS = ("debug", "info", "warning", "error")


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line too (argparse prints the whole usage first); subcommands inherit this."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="longvid",
        description="Build and audit training corpora for long-context video LLMs (VideoChat-Flash family) on Ray.",
        epilog="`longvid COMMAND --help` describes a command. Exit status: 0 done, 1 the job did not complete, "
               "2 a configuration mistake (one line naming the setting), 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"longvid {__version__}",
                        help="print the version and exit")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", type=str.lower,
                        help="least important messages shown: debug, info (default: progress lines), warning, error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"longvid.jobs.{name}").register(sub)
    _log_level_everywhere(parser)
    return parser


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of the subcommands of `parser` (one level)."""
    return [p for a in parser._actions if isinstance(a, argparse._SubParsersAction)  # noqa: SLF001
            for p in dict.fromkeys(a.choices.values())]


def _log_level_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--log-level` is also accepted after the subcommand (`longvid ingest --log-level debug ...`)."""
    for p in subparsers(parser):
        p.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower, default=argparse.SUPPRESS,
                       help="as `longvid --log-level`: debug, info (default), warning, error")
        _log_level_everywhere(p)


class _Stderr(logging.StreamHandler):
    """Writes to the sys.stderr of the moment (tests and embedding programs swap it), redacted (storage's
    RedactFilter: a message may name a user's path or URL)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(level: str) -> Callable[[], None]:
    """`--log-level`: LongVid's messages (every `longvid.*` logger, the jobs' progress lines among them) go to
    stderr as plain lines at and above `level` (other libraries' warnings reach stderr as Python prints them).
    Returns the function that undoes this, for callers of `main` in a longer-lived process."""
    log = logging.getLogger("longvid")
    saved = log.level
    handler = next((h for h in log.handlers if isinstance(h, _Stderr)), None)
    added = handler is None
    if added:
        from longvid.operators.storage import RedactFilter

        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(RedactFilter())
        log.addHandler(handler)
    log.setLevel(getattr(logging, level.upper()))

    def undo() -> None:
        log.setLevel(saved)
        if added:
            log.removeHandler(handler)

    return undo


def _one_line(e: BaseException) -> str:
    """The error line's text: one line, redacted (the one place a job's error message reaches the console)."""
    from longvid.operators.storage import redact

    return redact(" ".join(str(e).split())) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from longvid.operators.errors import ConfigError
    from longvid.operators.storage import StorageError

    undo_logging = setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"longvid {args.command}: configuration error: {_one_line(e)}", file=sys.stderr)
        return 2
    except StorageError as e:  # after the pre-flight checks: the storage failed during the job
        print(f"longvid {args.command}: storage error: {_one_line(e)}. Committed work is kept; re-run the same "
              "command to resume.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nlongvid {args.command}: interrupted. Committed work is kept; re-run the same command to resume.",
              file=sys.stderr)
        return 130
    finally:
        undo_logging()


if __name__ == "__main__":
    sys.exit(main())
