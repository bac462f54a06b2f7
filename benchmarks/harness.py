"""What the benchmarks share: a real agent process, timing, and table printing."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from printernizer_stats.agent.process import agent_process
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get("STATS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    socket_path: Path
    db_path: Path

    def rss_kib(self) -> tuple[int, int]:
        """(current, peak) resident memory of the agent in KiB."""
        return rss_kib(self.process.pid)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident memory of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@contextlib.contextmanager
def running_agent(extra_env: dict[str, str] | None = None) -> Iterator[AgentProcess]:
    """A real `python -m printernizer_stats.agent` on a socket and database in a temp dir."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o700)
        socket_path, db_path = base / "run" / "agent.sock", base / "agent.db"
        options = ("--timezone", "Europe/Berlin", "--log-level", "WARNING")
        env = {**os.environ, **(extra_env or {})}
        with agent_process(socket_path, db_path, *options, env=env) as process:
            yield AgentProcess(process, socket_path, db_path)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


@contextlib.contextmanager
def database(engine: str, base: Path) -> Iterator[str]:
    """An empty database: a SQLite file under `base`, or a new PostgreSQL
    database ($STATS_BENCH_POSTGRES_URL's server) dropped afterwards."""
    if engine == "sqlite":
        yield f"sqlite:///{base / 'aggregation.db'}"
        return
    server = make_url(POSTGRES_URL)
    name = f"stats_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        server.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
    ) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(drivername="postgresql+psycopg", database=name).render_as_string(
                hide_password=False
            )
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
