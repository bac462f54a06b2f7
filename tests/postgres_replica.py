"""Two private PostgreSQL servers in streaming replication, from the machine's PostgreSQL binaries: a
primary, and a hot standby made from it with `pg_basebackup -R`, each on a free port in a temporary
directory, stopped afterwards."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from printernizer_stats.demo.services import free_port

from .postgres_instance import PostgresInstance, postgres_instance, private_directory

PRIMARY_SETTINGS = ("wal_level = replica", "max_wal_senders = 4")
# The standby's pg_basebackup connects over TCP for replication.
REPLICATION_HBA = ("host replication postgres 127.0.0.1/32 trust",)


def scalar(url: str, query: str) -> object:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        row = connection.execute(query).fetchone()
    assert row is not None
    return row[0]


@dataclass
class Replication:
    primary: PostgresInstance
    standby: PostgresInstance

    def wait_for_replay(self, timeout: float = 30) -> None:
        """Until the standby has replayed everything the primary had written when this was called."""
        written = scalar(self.primary.url, "SELECT pg_current_wal_lsn()::text")
        query = f"SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn"
        deadline = time.monotonic() + timeout
        while not scalar(self.standby.url, query):
            assert time.monotonic() < deadline, f"the standby did not replay up to {written} in {timeout} s"
            time.sleep(0.05)


@contextlib.contextmanager
def streaming_replication() -> Iterator[Replication]:
    with postgres_instance(settings=PRIMARY_SETTINGS, hba=REPLICATION_HBA) as primary:
        base, as_postgres = private_directory()
        standby = PostgresInstance(base / "data", free_port(), primary.bin, as_postgres)
        try:
            subprocess.run(
                [
                    *as_postgres,
                    str(primary.bin / "pg_basebackup"),
                    *("--host", "127.0.0.1", "--port", str(primary.port), "--username", "postgres"),
                    *("--pgdata", str(standby.data)),
                    "--write-recovery-conf",  # -R: standby.signal, and primary_conninfo to stream from
                    "--wal-method=stream",
                    "--checkpoint=fast",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            standby.start()
            try:
                yield Replication(primary, standby)
            finally:
                standby.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
