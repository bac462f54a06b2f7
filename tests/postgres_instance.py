"""A PostgreSQL server of the test's own, from the machine's PostgreSQL
binaries, in a temporary directory: a test may restart or stop it without
touching the shared server the other tests use."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from printernizer_stats.demo.services import free_port


@dataclass
class PostgresInstance:
    data: Path
    port: int
    bin: Path
    as_postgres: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *arguments: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        command = [*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options]
        # The server's output goes to its log file: a pipe would be held open by it.
        log = self.data.parent / "server.log"
        subprocess.run(
            [*command, "-l", str(log), "-w", *arguments],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self) -> None:
        self.ctl("start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.ctl("stop", "-m", "immediate")

    @property
    def log(self) -> str:
        """What the server wrote to its log file so far."""
        return (self.data.parent / "server.log").read_text(errors="replace")

    def restart(self) -> None:
        """A fast restart: sessions end, the server starts again (as after an upgrade)."""
        self.ctl("restart", "-m", "fast")


def postgres_binaries() -> Path:
    """The newest installed PostgreSQL's programs (initdb, pg_ctl, pg_basebackup); the test is skipped
    without them, and fails where CI promised PostgreSQL."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not binaries:
        if "STATS_TEST_POSTGRES_URL" in os.environ:
            pytest.fail("PostgreSQL's binaries are missing (/usr/lib/postgresql/*/bin)")
        pytest.skip("PostgreSQL's binaries are not installed; .ci/run installs them")
    return binaries[-1].parent


def private_directory() -> tuple[Path, list[str]]:
    """A temporary directory for one server's files, and the command prefix that runs a program as the
    account the server runs as: PostgreSQL refuses to run as root, so under root that is `postgres`."""
    base = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        base.chmod(0o755)
        os.chown(base, account.pw_uid, account.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    return base, as_postgres


@contextlib.contextmanager
def postgres_instance(settings: Sequence[str] = (), hba: Sequence[str] = ()) -> Iterator[PostgresInstance]:
    """A new cluster, started; `settings` are added to its postgresql.conf and `hba` to its pg_hba.conf."""
    bin_dir = postgres_binaries()
    base, as_postgres = private_directory()
    data = base / "data"
    subprocess.run(
        [
            *as_postgres,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # A setting's last line counts, a connection's first matching pg_hba line: each goes where it wins.
    conf = data / "postgresql.conf"
    conf.write_text(conf.read_text() + "".join(f"{line}\n" for line in settings))
    rules = data / "pg_hba.conf"
    rules.write_text("".join(f"{line}\n" for line in hba) + rules.read_text())
    instance = PostgresInstance(data, free_port(), bin_dir, as_postgres)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(base, ignore_errors=True)
