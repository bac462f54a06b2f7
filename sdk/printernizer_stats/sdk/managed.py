"""Managed mode: the host app starts and supervises its own stats agent.

For a single-process deployment (Printernizer's Docker image: one process, no
supervisor) the host runs the agent as a child process:

    from printernizer_stats.sdk import StatsClient
    from printernizer_stats.sdk.managed import ManagedAgent

    managed = ManagedAgent("/app/data", timezone=settings.timezone)
    managed.start()                       # returns at once, never raises
    stats = StatsClient(managed.socket_path)

The agent keeps its database under `data_dir` (`<data_dir>/printernizer-stats/
agent.db`), so the user's consent and the installation's identity survive
upgrades of the host, and serves on a socket in a directory only this user can
reach. A daemon thread supervises it: a crash is followed by a restart after a
short, growing delay; after `max_restarts` crashes within `restart_window`
seconds it gives up and says so once in the log (the host goes on; the SDK
then buffers and drops, as with any unreachable agent). The agent is stopped
when the host exits (atexit) and when the host gets SIGTERM; a host that is
killed outright takes the agent with it (Linux: the child's parent-death signal).

Nothing is started when DO_NOT_TRACK=1 or when the agent's package is not
installed; the log says why, once.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import ctypes.util
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

AGENT_MODULE = "printernizer_stats.agent"
# The agent's Python, when it lives in a virtual environment of its own (its
# pins need not match the host's): e.g. /opt/printernizer-stats/bin/python.
PYTHON_ENVIRONMENT = "STATS_AGENT_PYTHON"
# Printernizer's own time-zone setting (Docker: TIMEZONE), used when the host
# passes none; without it the agent takes the system's ($TZ, /etc/timezone).
HOST_TIMEZONE_ENVIRONMENT = "TIMEZONE"
# sockaddr_un.sun_path: 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 107
_PR_SET_PDEATHSIG = 1


def _do_not_track() -> bool:
    return os.environ.get("DO_NOT_TRACK", "").strip().lower() in {"1", "true", "yes", "on"}


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec function that has the child sent SIGTERM when the thread that
    started it ends (the host killed outright), or None where that is not possible."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    # Resolved here, before any fork: the child only calls it.
    args = (ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGTERM))

    def set_parent_death_signal() -> None:
        prctl(*args)

    return set_parent_death_signal


class ManagedAgent:
    """The stats agent as a supervised child process of the host.

    `data_dir`: where the host keeps its data (Printernizer: /app/data in Docker,
    /data/printernizer in the Home Assistant add-on); the agent's files go into
    `<data_dir>/printernizer-stats/`. `timezone`: the host's IANA time-zone
    setting (the country reported is derived from it); None: $TIMEZONE, else the
    system's. `socket_path`: None for `<data_dir>/printernizer-stats/run/agent.sock`
    (or a private temporary directory when that path is too long for a socket).
    `python`: the agent's interpreter (None: $STATS_AGENT_PYTHON, else this one).
    `options`: more command-line options for the agent (e.g. ["--server", "host:port"]).

    Every method returns promptly and never raises into the host.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        timezone: str | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        python: str | os.PathLike[str] | None = None,
        options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        max_restarts: int = 5,
        restart_window: float = 60.0,
        first_backoff: float = 0.1,
        max_backoff: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.agent_dir = self.data_dir / "printernizer-stats"
        self.db_path = self.agent_dir / "agent.db"
        self.timezone = timezone if timezone is not None else os.environ.get(HOST_TIMEZONE_ENVIRONMENT, "")
        self.socket_path = Path(socket_path) if socket_path else self._default_socket_path()
        self.python = str(python or os.environ.get(PYTHON_ENVIRONMENT) or sys.executable)
        self.options = list(options)
        self.env = dict(env) if env is not None else None
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.stop_timeout = stop_timeout
        # What happened, for the host's diagnostics and for tests.
        self.restarts = 0
        self.gave_up = False
        self.not_started_reason = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._previous_sigterm: Any = None
        self._sigterm_installed = False
        self._said_already_served = False

    # --- the host's API ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The agent's process id while it runs (None otherwise)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    @property
    def supervising(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def command(self) -> list[str]:
        """The agent's command line."""
        command = [
            self.python,
            "-m",
            AGENT_MODULE,
            "--socket",
            str(self.socket_path),
            "--db",
            str(self.db_path),
        ]
        if self.timezone:
            command += ["--timezone", self.timezone]
        return command + self.options

    def start(self) -> bool:
        """Start the agent and its supervision in the background; returns at
        once. False (and one line in the log) when nothing is started:
        DO_NOT_TRACK=1, the agent not installed, or already started."""
        try:
            if self._thread is not None:
                return False
            if _do_not_track():
                return self._not_starting("DO_NOT_TRACK is set: usage statistics are off")
            if self.python == sys.executable and not self._agent_installed_here():
                return self._not_starting(
                    f"the stats agent ({AGENT_MODULE}) is not installed: usage statistics are off"
                )
            self._stopping.clear()
            atexit.register(self.stop)
            self._install_sigterm_handler()
            self._thread = threading.Thread(
                target=self._supervise, name="printernizer-stats-agent", daemon=True
            )
            self._thread.start()
            return True
        except Exception:
            log.warning("could not start the stats agent", exc_info=True)
            return False

    def wait_until_serving(self, timeout: float = 30.0) -> bool:
        """Block up to `timeout` seconds until the agent answers on its socket
        (for scripts and tests; a host need not wait: the SDK buffers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._socket_answers():
                return True
            if self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.05)
        return False

    def stop(self, timeout: float | None = None) -> None:
        """Stop the agent (SIGTERM: it commits what it accepted) and its
        supervision; SIGKILL after `timeout` seconds. Safe to call more than once."""
        try:
            timeout = self.stop_timeout if timeout is None else timeout
            self._stopping.set()
            with self._lock:
                process = self._process
            if process is not None:
                _terminate(process, timeout)
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(timeout)
            atexit.unregister(self.stop)
            self._restore_sigterm_handler()
        except Exception:
            log.debug("stopping the stats agent failed", exc_info=True)

    # --- supervision ------------------------------------------------------------------

    def _supervise(self) -> None:
        try:
            if self.python != sys.executable and not self._agent_installed_there():
                self._not_starting(
                    f"the stats agent ({AGENT_MODULE}) is not installed for {self.python}: "
                    "usage statistics are off"
                )
                return
            self._prepare_directories()
            crashes: collections.deque[float] = collections.deque()
            while not self._stopping.is_set():
                if self._socket_answers():
                    # Another process of this host (a second worker) already runs one.
                    if not self._said_already_served:
                        log.info("a stats agent already serves on %s: not starting another", self.socket_path)
                        self._said_already_served = True
                    self._stopping.wait(1.0)
                    continue
                process = self._spawn()
                if process is None:
                    return
                returncode = process.wait()
                if self._stopping.is_set():
                    return
                now = time.monotonic()
                crashes.append(now)
                while crashes and crashes[0] < now - self.restart_window:
                    crashes.popleft()
                how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
                if len(crashes) > self.max_restarts:
                    self.gave_up = True
                    log.error(
                        "the stats agent stopped (%s) %d times within %.0f s: giving up; "
                        "usage statistics are off until the host restarts",
                        how,
                        len(crashes),
                        self.restart_window,
                    )
                    return
                delay = min(self.max_backoff, self.first_backoff * 2 ** (len(crashes) - 1))
                log.warning("the stats agent stopped (%s); restarting it in %.1f s", how, delay)
                if self._stopping.wait(delay):
                    return
                self.restarts += 1
        except Exception:
            log.warning("supervising the stats agent failed; usage statistics are off", exc_info=True)
        finally:
            with self._lock:
                self._process = None

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            try:
                process = subprocess.Popen(
                    self.command(),
                    env=self._child_environment(),
                    stdin=subprocess.DEVNULL,
                    # Its own session: a Ctrl-C meant for the host does not reach it;
                    # the host stops it (and its death signal covers a killed host).
                    start_new_session=True,
                    preexec_fn=_parent_death_signal(),
                    close_fds=True,
                )
            except OSError as exc:
                self.gave_up = True
                log.error("cannot start the stats agent (%s): usage statistics are off", exc)
                return None
            self._process = process
        if self._stopping.is_set():  # a SIGTERM arrived while it was being started
            _terminate(process, self.stop_timeout)
        return process

    def _child_environment(self) -> dict[str, str]:
        environment = dict(os.environ if self.env is None else self.env)
        if self.python != sys.executable:
            # The agent's own virtual environment: none of the host's packages.
            for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
                environment.pop(name, None)
        environment.setdefault("PYTHONUNBUFFERED", "1")
        return environment

    def _prepare_directories(self) -> None:
        self.agent_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created by the agent with 0750 if missing; it refuses a directory others can reach.
        self.socket_path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)

    def _default_socket_path(self) -> Path:
        path = (self.agent_dir / "run" / "agent.sock").absolute()
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            return path
        # A deep data directory: a private (0700) directory of this user's instead.
        return Path(tempfile.mkdtemp(prefix="printernizer-stats-")) / "agent.sock"

    def _socket_answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                return False
            return True

    # --- whether there is an agent to start ---------------------------------------------

    @staticmethod
    def _agent_installed_here() -> bool:
        try:
            return importlib.util.find_spec(AGENT_MODULE) is not None
        except (ImportError, ValueError):
            return False

    def _agent_installed_there(self) -> bool:
        probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({AGENT_MODULE!r}) is None)"
        try:
            return (
                subprocess.run(
                    [self.python, "-c", probe],
                    env=self._child_environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=60,
                    check=False,
                ).returncode
                == 0
            )
        except (OSError, subprocess.SubprocessError):
            return False

    def _not_starting(self, reason: str) -> bool:
        self.not_started_reason = reason
        log.info("not starting the stats agent: %s", reason)
        return False

    # --- the host's SIGTERM -------------------------------------------------------------

    def _install_sigterm_handler(self) -> None:
        """Stop the agent when the host gets SIGTERM, then do what the host's
        own handling says (its handler, or the default: end). Only from the
        main thread, and not when the host ignores SIGTERM."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is None or previous == signal.SIG_IGN:
            return
        self._previous_sigterm = previous
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._sigterm_installed = True

    def _restore_sigterm_handler(self) -> None:
        if not self._sigterm_installed or threading.current_thread() is not threading.main_thread():
            return
        with contextlib.suppress(ValueError, TypeError):
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
        self._sigterm_installed = False

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # No locks and no waiting here: tell the agent to stop and move on.
        self._stopping.set()
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(OSError):
                process.send_signal(signal.SIGTERM)
        previous = self._previous_sigterm
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(OSError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
