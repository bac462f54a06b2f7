"""Command-line conventions shared by the services.

Every option of every service can be given as a flag or as an environment
variable (the flag wins); `--help` shows both and the default, so the README's
configuration table and the services cannot disagree for long.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose options also read an environment variable."""

    def __init__(self, *, env_prefix: str, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)
        self.env_prefix = env_prefix
        self.environment_variables: dict[str, str] = {}

    def add_env_option(
        self,
        flag: str,
        *,
        help: str,
        default: Any = None,
        type: Callable[[str], Any] = str,
        env: str | None = None,
        metavar: str | None = None,
        choices: list[str] | None = None,
    ) -> None:
        """Add `--flag VALUE`, defaulting to $PREFIX_FLAG, then to `default`."""
        name = env or self.env_prefix + flag.lstrip("-").upper().replace("-", "_")
        self.environment_variables[flag] = name
        raw = os.environ.get(name, "")
        try:
            value = type(raw) if raw else default
        except (ValueError, argparse.ArgumentTypeError) as exc:
            self.error(f"environment variable {name}={raw!r} is invalid: {exc}")
        if choices is not None and value not in choices:
            self.error(f"environment variable {name}={raw!r} is invalid: choose from {', '.join(choices)}")
        self.add_argument(
            flag,
            default=value,
            type=type,
            metavar=metavar,
            choices=choices,
            help=f"{help} [env: {name}; default: {default}]",
        )

    def add_env_switch(self, flag: str, *, help: str, env: str | None = None) -> None:
        """Add a boolean `--flag`, also on when $PREFIX_FLAG is 1/true/yes/on."""
        name = env or self.env_prefix + flag.lstrip("-").upper().replace("-", "_")
        self.environment_variables[flag] = name
        on = env_flag(name)
        self.add_argument(flag, action="store_true", default=on, help=f"{help} [env: {name}]")


def env_flag(name: str) -> bool:
    """True when an environment variable says yes (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def user_data_dir() -> Path:
    """Where the agent keeps its files by default ($XDG_DATA_HOME convention)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "printernizer-stats"


def user_runtime_dir() -> Path:
    """Where the agent's socket lives by default ($XDG_RUNTIME_DIR, else data dir)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "printernizer-stats" if runtime else user_data_dir() / "run"


def host_port(value: str) -> str:
    """Validate HOST:PORT (IPv6 hosts in brackets)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def host_port_or_empty(value: str) -> str:
    """HOST:PORT, or empty for "off"."""
    return host_port(value) if value else value


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def host_names(value: str) -> str:
    """Comma-separated DNS host names (ASCII; write international names as
    their xn-- form), or empty."""
    for name in (n.strip() for n in value.split(",") if n.strip()):
        if not _HOST_NAME.fullmatch(name):
            raise argparse.ArgumentTypeError(f"{name!r} is not a host name (letters, digits, '-' and '.')")
    return value


def positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {value!r}")
    return number
