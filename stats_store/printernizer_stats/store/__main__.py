"""`python -m printernizer_stats.store rebuild-rollups`: recompute the weekly rollups from the reports.

The rollups are kept incrementally by the aggregation server; a full rebuild
gives the same figures (it is for after a fault, or a change of what they
count: a migration that changes them asks the next refresh for one itself).
It runs in one transaction while the servers keep running; on PostgreSQL
the aggregation server's refreshes skip meanwhile. --later only asks for it:
the aggregation server's next refresh rebuilds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading

from printernizer_stats.common.weeks import Week, parse_week
from sqlalchemy.exc import SQLAlchemyError

from .database import create_server_engine
from .rollup_store import Rollups


def _week(text: str) -> Week:
    try:
        return parse_week(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="printernizer_stats.store", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    rebuild = commands.add_parser("rebuild-rollups", help="recompute the weekly rollups from the reports")
    rebuild.add_argument("--database-url", required=True, help="SQLAlchemy database URL", metavar="URL")
    rebuild.add_argument(
        "--week", type=_week, action="append", help="only this week (repeatable; e.g. 2026-W48)"
    )
    rebuild.add_argument("--later", action="store_true", help="ask the next refresh for a full rebuild")
    return parser


async def _rebuild(url: str, weeks: list[Week] | None, later: bool) -> str:
    engine = create_server_engine(url)
    try:
        rollups = Rollups(engine)
        if later:
            await rollups.request_rebuild()
            return "the next refresh of the rollups rebuilds them"
        rebuilt = await rollups.rebuild(weeks)
        return f"rebuilt the rollups of {len(rebuilt)} week(s)"
    finally:
        await engine.dispose()
        await _sqlite_threads_ended()


async def _sqlite_threads_ended() -> None:
    """Wait for aiosqlite's connection threads to end while the loop still runs:
    after a failed connect, one answers its close later, and would meet a
    closed loop (a traceback on stderr) if the command returned first."""

    def join() -> None:
        for thread in threading.enumerate():
            if "_connection_worker_thread" in thread.name:
                thread.join(timeout=5)

    await asyncio.to_thread(join)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.later and args.week:
        print("--later rebuilds every week: give no --week", file=sys.stderr)
        return 2
    try:
        print(asyncio.run(_rebuild(args.database_url, args.week, args.later)))
    except SQLAlchemyError as exc:  # a URL it cannot read, a database it cannot reach: one line
        print(
            f"printernizer_stats.store: cannot use the database: {str(exc).splitlines()[0]}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
