"""`longvid`: one console command, one subcommand per job.

Each subcommand lives in its own module under jobs/ and exposes `register(subparsers)`, which adds a parser
whose `func(args) -> int` runs the job. Adding a job means adding a module and one name below.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# module name under jobs/ -> registered in this order in --help
COMMANDS = ["ingest", "demo", "encode", "plan", "train", "audit", "niah"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longvid",
        description="Build and audit training corpora for long-context video LLMs (VideoChat-Flash family) on Ray.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"longvid.jobs.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from longvid.jobs.config import ConfigError
    from longvid.operators.storage import StorageError

    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"longvid {args.command}: configuration error: {e}", file=sys.stderr)
        return 2
    except StorageError as e:  # storage failed for good (a full disk, access denied...): one line, no traceback
        print(f"longvid {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nlongvid {args.command}: interrupted. Committed work is kept; re-run the same command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
